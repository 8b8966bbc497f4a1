"""sentence-transformers CrossEncoder rerankers (hub id, local path or pkg: path)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ragopt.models import load_model
from ragopt.spec import CrossEncoderSpec


class CrossEncoderScorer:
    """Scores pairs in batches of similar length, so little of each batch is padding
    (CrossEncoder.predict keeps the input order)."""

    def __init__(self, spec: CrossEncoderSpec, device: str, progress: bool = False) -> None:
        from sentence_transformers import CrossEncoder

        self.spec, self.progress = spec, progress
        self.model: Any = load_model("cross_encoder", spec.model, lambda path: CrossEncoder(
            path, device=device, max_length=spec.max_length, trust_remote_code=spec.trust_remote_code))

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        order = np.argsort([len(q) + len(p) for q, p in pairs], kind="stable")
        scores = self.model.predict([pairs[i] for i in order], batch_size=self.spec.batch_size, convert_to_numpy=True,
                                    show_progress_bar=self.progress and len(pairs) > 4 * self.spec.batch_size)
        out = np.empty(len(pairs), dtype=np.float32)
        out[order] = np.asarray(scores, dtype=np.float32).reshape(len(pairs), -1)[:, -1]
        return out
