"""FlagEmbedding's FlagReranker: an XLM-R cross-encoder with one relevance logit
(bge-reranker-v2-m3, dragonkue/bge-reranker-v2-m3-ko)."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from ragopt.stages.models import Located, ModelError, ModelPool, half_on_gpu, load_model
from ragopt.stages.params import StrictModel
from ragopt.stages.rerankers._base import PairScorer, RerankerEntry, RerankerSpec, register


class _Settings(StrictModel):
    model: str
    max_length: int = Field(512, ge=2)
    batch_size: int = Field(32, ge=1)
    use_fp16: bool | None = None
    trust_remote_code: bool = False


class FlagRerankerSpec(RerankerSpec, _Settings):
    """FlagEmbedding's FlagReranker (bge-reranker-v2-m3 and its Korean fine-tunes)."""

    type: Literal["flag_reranker"] = "flag_reranker"


class FlagRerankerConfig(RerankerEntry, _Settings):
    """A FlagEmbedding FlagReranker."""

    type: Literal["flag_reranker"]


class FlagScorer(PairScorer):
    """FlagReranker.compute_score's scores (raw logits), computed by classify_pairs from the model
    and tokenizer FlagReranker loads, with its truncation (query to 3/4 of max_length tokens, then
    the passage, on token ids). Halves the batch on out-of-memory."""

    libraries = ("torch", "transformers", "FlagEmbedding")

    def __init__(self, spec: FlagRerankerSpec, located: Located, device: str, pool: ModelPool, key: str) -> None:
        import torch
        from FlagEmbedding import FlagReranker

        super().__init__(spec, located, device, pool, key)
        half = half_on_gpu(spec.use_fp16, device)
        self.model: Any = load_model(spec.type, located, lambda path: FlagReranker(
            path, use_fp16=half, devices=[device], trust_remote_code=spec.trust_remote_code,
            max_length=spec.max_length))
        if self.model.model.config.num_labels != 1:
            raise ModelError(f"flag_reranker model {spec.model!r} has {self.model.model.config.num_labels} output "
                             "labels; FlagReranker scores one. Use type: cross_encoder for a multi-label classifier.")
        self.model.model.to(device, torch.float16 if half else torch.float32).eval()

    @staticmethod
    def precision(spec: FlagRerankerSpec, device: str) -> str:
        return "float16" if half_on_gpu(spec.use_fp16, device) else "float32"

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        from ragopt.stages.rerankers._pairs import classify_pairs

        max_length = self.spec.max_length
        return self.pool.batched(self.key, self.spec.batch_size, lambda batch_size: classify_pairs(
            self.model.model, self.model.tokenizer, pairs, batch_size, max_length, self.device,
            query_max_length=max_length * 3 // 4)[:, 0].cpu().numpy())


register(FlagRerankerConfig, FlagRerankerSpec, FlagScorer)
