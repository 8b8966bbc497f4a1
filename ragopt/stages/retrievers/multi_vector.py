"""Late-interaction (multi-vector, ColBERT-style) retrieval with sentence-transformers'
MultiVectorEncoder, which loads PyLate checkpoints (KURE-v2, GTE-ModernColBERT, ...) and
Stanford ColBERT ones as those libraries encode them: prefix tokens, [MASK] query expansion,
the punctuation skiplist, normalized token vectors. A passage's score is MaxSim, the sum over
the query's token vectors of the best match among the passage's (MeanMaxSim, over the query's
token count, for models saved with it), computed exactly over the whole corpus by the blocked
device scan BGE-M3's ColBERT mode uses. Every passage is retrieved."""

from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np
from pydantic import Field

from ragopt.stages.cache import cache_key, entry_key
from ragopt.data.qa import Queries
from ragopt.stages.labels import model_label
from ragopt.stages.models import Located, Precision, device_type, load_model, torch_dtype
from ragopt.stages.params import Chooser, StrictModel
from ragopt.provenance import versions
from ragopt.stages.ranking import Ranking
from ragopt.stages.retrievers._base import Context, Retriever, RetrieverEntry, RetrieverSpec, register


class _MultiVectorSettings(StrictModel):
    """A sentence-transformers MultiVectorEncoder (or a PyLate / Stanford ColBERT checkpoint);
    `max_length` caps a passage's tokens (the model's document_length when unset)."""

    model: str
    max_length: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    dtype: Precision = "auto"
    trust_remote_code: bool = False


class MultiVectorSpec(RetrieverSpec, _MultiVectorSettings):
    __doc__ = _MultiVectorSettings.__doc__

    type: Literal["multi_vector"] = "multi_vector"

    def describe(self) -> str:
        return f"multi_vector[{model_label(self.model)}]"


class MultiVectorConfig(RetrieverEntry, _MultiVectorSettings):
    """A multi-vector retriever; nothing inside it is searched (list several to compare models)."""

    type: Literal["multi_vector"]

    def suggest(self, choose: Chooser, resolve: Callable[[str], RetrieverSpec]) -> MultiVectorSpec:
        return MultiVectorSpec(**self.model_dump(exclude={"name", "type"}))

    def warm_up_specs(self) -> list[RetrieverSpec]:
        return [MultiVectorSpec(**self.model_dump(exclude={"name", "type"}))]


def load_multi_vector(located: Located, spec: MultiVectorSpec, device: str) -> Any:
    """Load a multi-vector encoder from its local folder, in the spec's precision."""
    from sentence_transformers import MultiVectorEncoder

    model = load_model("multi_vector", located, lambda path: MultiVectorEncoder(
        path, device=device, trust_remote_code=spec.trust_remote_code))
    model.to(torch_dtype(spec.dtype, device))
    if spec.max_length is not None:
        model[0].document_length = spec.max_length
    return model


class MultiVectorRetriever(Retriever):
    """Encodes the corpus's token vectors once and scans them for any query set."""

    def __init__(self, spec: MultiVectorSpec, context: Context) -> None:
        super().__init__(spec, context)
        self.spec = spec
        self.corpus_vectors = self.encode(context.corpus.contents, context.corpus.key, "document")

    def theoretical_min(self, spec: MultiVectorSpec) -> float | None:
        """-1 for MeanMaxSim (normalized vectors); MaxSim's floor grows with the query's length."""
        return -1.0 if bool(self.corpus_vectors["mean"]) else None

    def encode(self, texts: list[str], texts_key: str, task: str) -> dict[str, np.ndarray]:
        """Every text's token vectors end to end (float32, or float16 from a half-precision model),
        their offsets, and whether the model scores by MeanMaxSim."""
        import torch

        spec, context = self.spec, self.context
        located = context.locate(spec.model)
        dtype = torch_dtype(spec.dtype, context.device)
        settings = {"task": task, "max_length": spec.max_length, "trust_remote_code": spec.trust_remote_code,
                    "dtype": str(dtype), "device": device_type(context.device)}
        key = entry_key("multi_vector", located.identity, settings, texts_key,
                        versions("torch", "transformers", "sentence-transformers"))
        model_key = cache_key("multi_vector", located.identity, spec.model_dump(), context.device)
        stored = np.float32 if dtype == torch.float32 else np.float16

        def run(batch_size: int) -> dict[str, np.ndarray]:
            from ragopt.stages.models import attention_kernels

            model = context.pool.get(model_key, lambda: load_multi_vector(located, spec, context.device))
            encode = model.encode_query if task == "query" else model.encode_document
            with attention_kernels(context.device):
                vectors = encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                 show_progress_bar=context.progress and len(texts) > batch_size)
            width = model.get_embedding_dimension() or 0
            return {
                "vectors": np.concatenate(vectors).astype(stored) if vectors else np.zeros((0, width), stored),
                "offsets": np.cumsum([0] + [len(v) for v in vectors]).astype(np.int64),
                "mean": np.array(model.similarity_fn_name == "meanmaxsim"),
            }

        return context.cache.arrays("multi_vector", key, lambda: context.pool.batched(model_key, spec.batch_size, run))

    def search(self, spec: MultiVectorSpec, queries: Queries, depth: int) -> Ranking:
        from ragopt.stages.retrievers._scan import colbert_search

        q, d = self.encode(queries.texts, queries.key, "query"), self.corpus_vectors
        return colbert_search(q["vectors"], q["offsets"], d["vectors"], d["offsets"], depth, self.context.device,
                              mean=bool(d["mean"]))


register(MultiVectorConfig, MultiVectorSpec, MultiVectorRetriever)
