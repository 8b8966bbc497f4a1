"""BGE-M3 through FlagEmbedding: one encoding pass gives three retrievers. The dense vector
ranks by inner product, the sparse lexical weights by the sum of products of shared tokens'
weights, and the ColBERT token vectors by late interaction (each query token's best match in the
passage, averaged over query tokens), exactly as BGEM3FlagModel's own scoring functions. Dense
and ColBERT retrieve every passage; sparse retrieves the passages sharing a weighted token."""

from __future__ import annotations

from typing import Any, Callable, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from ragopt.stages.cache import cache_key, entry_key
from ragopt.data.qa import Queries
from ragopt.stages.labels import model_label
from ragopt.stages.models import device_type, half_on_gpu, load_model
from ragopt.stages.params import Chooser, StrictModel, choices
from ragopt.provenance import versions
from ragopt.stages.ranking import Ranking, blockwise
from ragopt.stages.retrievers._base import Context, Retriever, RetrieverEntry, RetrieverSpec, register

BGEM3Mode = Literal["dense", "sparse", "colbert"]


class _BGEM3Settings(StrictModel):
    model: str = "BAAI/bge-m3"
    max_length: int = Field(8192, ge=1)
    query_max_length: int = Field(512, ge=1)
    batch_size: int = Field(32, ge=1)
    use_fp16: bool | None = None
    trust_remote_code: bool = False


class BGEM3Spec(RetrieverSpec, _BGEM3Settings):
    """BGE-M3 through FlagEmbedding's BGEM3FlagModel: one encoding pass yields the dense vector,
    the sparse lexical weights and the ColBERT token vectors; `mode` picks which one ranks."""

    type: Literal["bge_m3"] = "bge_m3"
    mode: BGEM3Mode = "dense"

    def describe(self) -> str:
        return f"bge_m3[{model_label(self.model)},{self.mode}]"

    def kind(self) -> str:
        return f"bge_m3:{self.mode}"

    def index_key(self) -> str:
        """Everything but the mode: all modes share one encoding pass."""
        return self.model_copy(update={"mode": "dense"}).key()


class BGEM3Config(RetrieverEntry, _BGEM3Settings):
    """BGE-M3 through FlagEmbedding; `mode` (dense, sparse, colbert) is searchable, and entries
    of the same model share one encoding pass, so a hybrid of two modes encodes once."""

    type: Literal["bge_m3"]
    mode: choices(BGEM3Mode) = ["dense"]

    def suggest(self, choose: Chooser, resolve: Callable[[str], RetrieverSpec]) -> BGEM3Spec:
        return self._spec(choose(f"{self.name}.mode", self.mode))

    def warm_up_specs(self) -> list[RetrieverSpec]:
        return [self._spec(self.mode[0])]

    def _spec(self, mode: str) -> BGEM3Spec:
        return BGEM3Spec(**self.model_dump(exclude={"name", "type", "mode"}), mode=mode)


def load_bge_m3(located: Any, spec: BGEM3Spec, device: str) -> Any:
    from FlagEmbedding import BGEM3FlagModel

    return load_model("bge_m3", located, lambda path: BGEM3FlagModel(
        path, use_fp16=half_on_gpu(spec.use_fp16, device), devices=[device], trust_remote_code=spec.trust_remote_code,
        query_max_length=spec.query_max_length, passage_max_length=spec.max_length))


class BGEM3Retriever(Retriever):
    """Encodes the corpus once into all three outputs and searches whichever a spec's mode names."""

    THEORETICAL_MIN = {"dense": -1.0, "sparse": 0.0, "colbert": -1.0}

    def __init__(self, spec: BGEM3Spec, context: Context) -> None:
        super().__init__(spec, context)
        self.spec = spec
        self.corpus_outputs = self.encode(context.corpus.contents, context.corpus.key, "passage")

    def theoretical_min(self, spec: BGEM3Spec) -> float:
        return self.THEORETICAL_MIN[spec.mode]

    def encode(self, texts: list[str], texts_key: str, role: str) -> dict[str, np.ndarray]:
        """Dense vectors, sparse weights (CSR parts) and ColBERT vectors (flat, with offsets)."""
        spec, context = self.spec, self.context
        located = context.locate(spec.model)
        max_length = spec.query_max_length if role == "query" else spec.max_length
        half = half_on_gpu(spec.use_fp16, context.device)
        key = entry_key("bge_m3", located.identity, max_length, half, device_type(context.device), texts_key,
                        versions("torch", "transformers", "FlagEmbedding"))
        model_key = cache_key("bge_m3", located.identity, spec.index_key(), context.device)

        def run(batch_size: int) -> dict[str, Any]:
            from ragopt.stages.models import attention_kernels

            model = context.pool.get(model_key, lambda: load_bge_m3(located, spec, context.device))
            encode = model.encode_queries if role == "query" else model.encode_corpus
            with attention_kernels(context.device):
                return encode(texts, batch_size=batch_size, max_length=max_length, return_dense=True,
                              return_sparse=True, return_colbert_vecs=True)

        def compute() -> dict[str, np.ndarray]:
            out = context.pool.batched(model_key, spec.batch_size, run)
            weights = out["lexical_weights"]
            colbert = [np.asarray(v, dtype=np.float16) for v in out["colbert_vecs"]]
            return {
                "dense": np.asarray(out["dense_vecs"], dtype=np.float32).reshape(len(texts), -1),
                "sparse_ids": np.array([int(t) for w in weights for t in w], dtype=np.int64),
                "sparse_weights": np.array([float(v) for w in weights for v in w.values()], dtype=np.float32),
                "sparse_offsets": np.cumsum([0] + [len(w) for w in weights]).astype(np.int64),
                "colbert": np.concatenate(colbert) if colbert else np.zeros((0, 0), np.float16),
                "colbert_offsets": np.cumsum([0] + [len(v) for v in colbert]).astype(np.int64),
            }

        return context.cache.arrays("bge_m3", key, compute)

    def search(self, spec: BGEM3Spec, queries: Queries, depth: int) -> Ranking:
        q = self.encode(queries.texts, queries.key, "query")
        d = self.corpus_outputs
        if spec.mode == "sparse":
            return sparse_search(q, d, depth)
        from ragopt.stages.retrievers._scan import colbert_search, exact_search

        if spec.mode == "dense":
            return exact_search(q["dense"], d["dense"], depth, self.context.device)
        return colbert_search(q["colbert"], q["colbert_offsets"], d["colbert"], d["colbert_offsets"], depth,
                              self.context.device)


def _csr(arrays: dict[str, np.ndarray], width: int) -> sp.csr_matrix:
    offsets = arrays["sparse_offsets"]
    return sp.csr_matrix((arrays["sparse_weights"], arrays["sparse_ids"], offsets), shape=(len(offsets) - 1, width))


def sparse_search(queries: dict[str, np.ndarray], corpus: dict[str, np.ndarray], depth: int) -> Ranking:
    """Lexical matching: for each query and passage, the sum over shared tokens of the product of
    their weights; a passage sharing no weighted token with the query is not retrieved."""
    width = int(max(queries["sparse_ids"].max(initial=0), corpus["sparse_ids"].max(initial=0))) + 1
    q, d = _csr(queries, width), _csr(corpus, width)
    presence = sp.csr_matrix((np.ones_like(d.data), d.indices, d.indptr), shape=d.shape)

    def scores(rows: slice) -> np.ndarray:
        block = (q[rows] @ d.T).toarray().astype(np.float32)
        block[(abs(q[rows]) @ presence.T).toarray() == 0] = -np.inf
        return block

    return blockwise(q.shape[0], d.shape[0], scores, depth)


register(BGEM3Config, BGEM3Spec, BGEM3Retriever)
