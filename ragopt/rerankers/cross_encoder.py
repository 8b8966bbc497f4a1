"""sentence-transformers CrossEncoder rerankers (hub id, local path or pkg: path)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ragopt.models import ModelPool, load_model, torch_dtype
from ragopt.rerankers._base import classify_pairs
from ragopt.spec import CrossEncoderSpec


class CrossEncoderScorer:
    """CrossEncoder.predict's scores (logits through the model's activation), computed by
    classify_pairs in batches of similar length, halving the batch on out-of-memory."""

    def __init__(self, spec: CrossEncoderSpec, device: str, pool: ModelPool, key: str) -> None:
        from sentence_transformers import CrossEncoder

        self.spec, self.pool, self.key = spec, pool, key
        self.model: Any = load_model("cross_encoder", spec.model, lambda path: CrossEncoder(
            path, device=device, max_length=spec.max_length, trust_remote_code=spec.trust_remote_code))
        self.model.to(torch_dtype(spec.dtype, device))
        self.device = device

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        max_length = self.spec.max_length or self.model.max_length or self.model.tokenizer.model_max_length

        def run(batch_size: int) -> np.ndarray:
            logits = classify_pairs(self.model.model, self.model.tokenizer, pairs, batch_size, max_length,
                                    self.device)
            return self.model.activation_fn(logits).cpu().numpy()

        return self.pool.batched(self.key, self.spec.batch_size, run)
