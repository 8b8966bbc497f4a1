"""sentence-transformers CrossEncoder rerankers (hub id, local path or pkg: path)."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from ragopt.stages.models import Located, ModelPool, Precision, load_model, position_limit, torch_dtype
from ragopt.stages.params import StrictModel
from ragopt.stages.rerankers._base import PairScorer, RerankerEntry, RerankerSpec, register


class _Settings(StrictModel):
    model: str
    max_length: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    dtype: Precision = "auto"
    trust_remote_code: bool = False


class CrossEncoderSpec(RerankerSpec, _Settings):
    """A sentence-transformers CrossEncoder."""

    type: Literal["cross_encoder"] = "cross_encoder"


class CrossEncoderConfig(RerankerEntry, _Settings):
    """A sentence-transformers CrossEncoder reranker."""

    type: Literal["cross_encoder"]


class CrossEncoderScorer(PairScorer):
    """CrossEncoder.predict's ranking: the model's activation over all of its labels, and with
    more than one label the probability of the last one (predict(apply_softmax=True)[:, -1], the
    'relevant' class of two-label rerankers). A plain sequence-classification model without a
    prompt or processing settings is scored by classify_pairs in batches of similar length (the
    same inputs and logits, faster); any other CrossEncoder through predict itself. Halves the
    batch on out-of-memory."""

    libraries = ("torch", "transformers", "sentence-transformers")

    def __init__(self, spec: CrossEncoderSpec, located: Located, device: str, pool: ModelPool, key: str) -> None:
        from sentence_transformers import CrossEncoder

        super().__init__(spec, located, device, pool, key)
        self.model: Any = load_model("cross_encoder", located, lambda path: CrossEncoder(
            path, device=device, max_length=spec.max_length, trust_remote_code=spec.trust_remote_code))
        self.model.to(torch_dtype(spec.dtype, device))

    @staticmethod
    def precision(spec: CrossEncoderSpec, device: str) -> str:
        return str(torch_dtype(spec.dtype, device))

    def _plain_classifier(self) -> bool:
        """Whether predict would tokenize the pairs exactly as pair_features does."""
        modules = list(self.model)
        return (len(modules) == 1 and type(modules[0]).__name__ == "Transformer"
                and getattr(modules[0], "transformer_task", "sequence-classification") == "sequence-classification"
                and not getattr(modules[0], "processing_kwargs", None)
                and not (getattr(self.model, "default_prompt_name", None) or getattr(self.model, "prompt", None)))

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        import torch

        labels = self.model.num_labels

        def run(batch_size: int) -> np.ndarray:
            if not self._plain_classifier():
                scores = self.model.predict(list(pairs), batch_size=batch_size, apply_softmax=labels > 1,
                                            convert_to_tensor=True, show_progress_bar=False)
                return (scores if labels == 1 else scores[:, -1]).float().cpu().numpy()
            from ragopt.stages.rerankers._pairs import classify_pairs

            limit = self.spec.max_length or self.model.max_seq_length or self.model.tokenizer.model_max_length
            max_length = min(limit, position_limit(self.model.model.config) or limit)
            logits = classify_pairs(self.model.model, self.model.tokenizer, pairs, batch_size, max_length, self.device)
            scores = self.model.activation_fn(logits)
            scores = scores[:, 0] if labels == 1 else torch.softmax(scores, dim=1)[:, -1]
            return scores.float().cpu().numpy()

        return self.pool.batched(self.key, self.spec.batch_size, run)


register(CrossEncoderConfig, CrossEncoderSpec, CrossEncoderScorer)
