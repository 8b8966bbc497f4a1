"""FlagEmbedding's FlagLLMReranker: a decoder (bge-reranker-v2-gemma) asked whether the passage
answers the query, scored by the logit of 'Yes'."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from ragopt.stages.models import Located, ModelPool, half_on_gpu, load_model
from ragopt.stages.rerankers import flag_reranker
from ragopt.stages.rerankers._base import PairScorer, RerankerEntry, RerankerSpec, by_length, register


class _Settings(flag_reranker._Settings):
    batch_size: int = Field(16, ge=1)


class FlagLLMRerankerSpec(RerankerSpec, _Settings):
    """FlagEmbedding's FlagLLMReranker (bge-reranker-v2-gemma)."""

    type: Literal["flag_llm_reranker"] = "flag_llm_reranker"


class FlagLLMRerankerConfig(RerankerEntry, _Settings):
    """A FlagEmbedding FlagLLMReranker."""

    type: Literal["flag_llm_reranker"]


class FlagLLMScorer(PairScorer):
    """FlagLLMReranker.compute_score, longest pairs first; halves the batch on out-of-memory."""

    libraries = ("torch", "transformers", "FlagEmbedding")

    def __init__(self, spec: FlagLLMRerankerSpec, located: Located, device: str, pool: ModelPool, key: str) -> None:
        from FlagEmbedding import FlagLLMReranker

        super().__init__(spec, located, device, pool, key)
        self.model: Any = load_model(spec.type, located, lambda path: FlagLLMReranker(
            path, use_fp16=half_on_gpu(spec.use_fp16, device), devices=[device],
            trust_remote_code=spec.trust_remote_code, max_length=spec.max_length))

    precision = staticmethod(flag_reranker.FlagScorer.precision)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        order = by_length(pairs)
        ordered = [pairs[i] for i in order]

        def run(batch_size: int) -> np.ndarray:
            scores = self.model.compute_score(ordered, batch_size=batch_size, max_length=self.spec.max_length)
            return np.asarray(scores, dtype=np.float32).reshape(len(pairs))

        out = np.empty(len(pairs), dtype=np.float32)
        out[order] = self.pool.batched(self.key, self.spec.batch_size, run)
        return out


register(FlagLLMRerankerConfig, FlagLLMRerankerSpec, FlagLLMScorer)
