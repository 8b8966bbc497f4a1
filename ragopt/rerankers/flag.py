"""FlagEmbedding rerankers: FlagReranker (an XLM-R cross-encoder such as bge-reranker-v2-m3,
dragonkue/bge-reranker-v2-m3-ko, Dongjin-kr/ko-reranker) and FlagLLMReranker (a decoder such as
bge-reranker-v2-gemma, scored by the logit of 'Yes')."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ragopt.models import ModelPool, half_on_gpu, load_model
from ragopt.rerankers._base import by_length, classify_pairs
from ragopt.spec import FlagLLMRerankerSpec, FlagRerankerSpec


class FlagScorer:
    """FlagReranker.compute_score's scores (raw logits) computed by classify_pairs from the
    loaded model and tokenizer, with FlagReranker's truncation (query to 3/4 of max_length
    tokens, on token ids); FlagLLMReranker through its own compute_score, longest pairs first.
    Both halve the batch on out-of-memory."""

    def __init__(self, spec: FlagRerankerSpec | FlagLLMRerankerSpec, device: str, pool: ModelPool, key: str) -> None:
        from FlagEmbedding import FlagLLMReranker, FlagReranker

        self.spec, self.pool, self.key = spec, pool, key
        model_class = FlagLLMReranker if isinstance(spec, FlagLLMRerankerSpec) else FlagReranker
        self.model: Any = load_model(spec.type, spec.model, lambda path: model_class(
            path, use_fp16=half_on_gpu(spec.use_fp16, device), devices=[device],
            trust_remote_code=spec.trust_remote_code, max_length=spec.max_length or 512))
        self.device = device
        if isinstance(spec, FlagRerankerSpec):
            half = half_on_gpu(spec.use_fp16, device)
            self.model.model.to(device, torch.float16 if half else torch.float32).eval()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        max_length = self.spec.max_length or 512
        if isinstance(self.spec, FlagRerankerSpec):
            return self.pool.batched(self.key, self.spec.batch_size, lambda batch_size: classify_pairs(
                self.model.model, self.model.tokenizer, pairs, batch_size, max_length, self.device,
                query_max_length=max_length * 3 // 4).cpu().numpy())
        order = by_length(pairs)
        ordered = [pairs[i] for i in order]

        def run(batch_size: int) -> np.ndarray:
            scores = self.model.compute_score(ordered, batch_size=batch_size, max_length=max_length)
            return np.asarray(scores, dtype=np.float32).reshape(len(pairs))

        out = np.empty(len(pairs), dtype=np.float32)
        out[order] = self.pool.batched(self.key, self.spec.batch_size, run)
        return out
