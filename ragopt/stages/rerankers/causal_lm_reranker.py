"""Causal language models that judge relevance with a next-token 'yes' or 'no' (Qwen3-Reranker
and other rerankers packaged for sentence-transformers' CrossEncoder): the model's chat template
lays out the instruction, the query and the passage, and the score is the probability of 'yes'
against 'no' at the last position, sigmoid(logit(yes) - logit(no))."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from ragopt.errors import ModelError
from ragopt.stages.models import Located, ModelPool
from ragopt.stages.rerankers import cross_encoder
from ragopt.stages.rerankers._base import RerankerEntry, RerankerSpec, register


class _Settings(cross_encoder._Settings):
    """`instruction`: what the query asks of a passage, set in the model's chat template
    (Qwen3-Reranker's <Instruct>: line); None keeps the template's own default."""

    instruction: str | None = None
    batch_size: int = Field(16, ge=1)


class CausalLMRerankerSpec(RerankerSpec, _Settings):
    """A causal-LM reranker (Qwen3-Reranker) through sentence-transformers' CrossEncoder."""

    type: Literal["causal_lm_reranker"] = "causal_lm_reranker"


class CausalLMRerankerConfig(RerankerEntry, _Settings):
    """A causal-LM reranker (Qwen3-Reranker) through sentence-transformers' CrossEncoder."""

    type: Literal["causal_lm_reranker"]


class CausalLMScorer(cross_encoder.CrossEncoderScorer):
    """CrossEncoder.predict with the instruction as its prompt (the chat template's system role):
    the CrossEncoder a causal LM loads as, a LogitScore head over 'yes' and 'no' and the sigmoid
    over it. Halves the batch on out-of-memory."""

    def __init__(self, spec: CausalLMRerankerSpec, located: Located, device: str, pool: ModelPool, key: str) -> None:
        from sentence_transformers.cross_encoder.modules import LogitScore

        super().__init__(spec, located, device, pool, key)
        if not any(isinstance(module, LogitScore) for module in self.model):
            raise ModelError(f"causal_lm_reranker model {spec.model!r} is not a causal language model that answers "
                             "yes or no (it loads as a sequence classifier); use type: cross_encoder for it.")
        problem = self.model[0].input_formatter.pair_roles_failure()
        if problem is not None:
            raise ModelError(f"causal_lm_reranker model {spec.model!r} has no chat template that lays out a query and "
                             f"a passage ({problem}). Qwen3-Reranker ships one since its sentence-transformers "
                             f"release: download the current revision (hf download {spec.model}), or give a model "
                             "packaged for sentence-transformers' CrossEncoder.")

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        return self.pool.batched(self.key, self.spec.batch_size, lambda batch_size: self.model.predict(
            list(pairs), prompt=self.spec.instruction, batch_size=batch_size, convert_to_tensor=True,
            show_progress_bar=False).float().cpu().numpy().reshape(len(pairs)))


register(CausalLMRerankerConfig, CausalLMRerankerSpec, CausalLMScorer)
