"""BGE-M3 through FlagEmbedding: one encoding pass gives three retrievers. The dense vector
ranks by inner product, the sparse lexical weights by the sum of products of shared tokens'
weights, and the ColBERT token vectors by late interaction (each query token's best match in the
passage, averaged over query tokens), exactly as BGEM3FlagModel's own scoring functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ragopt.cache import Cache, cache_key
from ragopt.data import Corpus, Queries
from ragopt.models import ModelPool, attention_kernels, half_on_gpu, load_model, model_fingerprint
from ragopt.retrievers._base import Ranking, RunningTopK, top_k
from ragopt.retrievers.dense import exact_search
from ragopt.spec import BGEM3Spec

TOKEN_CHUNK = 262_144
"""Passage token vectors per ColBERT scoring block: bounds the (query tokens x passage tokens) matrix."""


def load_bge_m3(spec: BGEM3Spec, device: str) -> Any:
    from FlagEmbedding import BGEM3FlagModel

    return load_model("bge_m3", spec.model, lambda path: BGEM3FlagModel(
        path, use_fp16=half_on_gpu(spec.use_fp16, device), devices=[device], trust_remote_code=spec.trust_remote_code,
        query_max_length=spec.query_max_length, passage_max_length=spec.max_length))


class BGEM3Retriever:
    """Encodes the corpus once into all three outputs and searches whichever a spec's mode names."""

    THEORETICAL_MIN = {"dense": -1.0, "sparse": 0.0, "colbert": -1.0}

    def __init__(self, spec: BGEM3Spec, corpus: Corpus, cache: Cache, pool: ModelPool, device: str,
                 progress: bool = False) -> None:
        self.spec, self.cache, self.pool, self.device, self.progress = spec, cache, pool, device, progress
        self._weights = model_fingerprint(spec.model)
        self.corpus_outputs = self.encode(corpus.contents, corpus.key, "passage")

    def theoretical_min(self, spec: BGEM3Spec) -> float:
        return self.THEORETICAL_MIN[spec.mode]

    def encode(self, texts: list[str], texts_key: str, role: str) -> dict[str, np.ndarray]:
        """Dense vectors, sparse weights (CSR parts) and ColBERT vectors (flat, with offsets)."""
        max_length = self.spec.query_max_length if role == "query" else self.spec.max_length
        key = cache_key("bge_m3", self._weights, max_length,
                        half_on_gpu(self.spec.use_fp16, self.device), texts_key)
        model_key = cache_key("bge_m3", self.spec.encoder_key(), self.device)

        def run(batch_size: int) -> dict[str, Any]:
            model = self.pool.get(model_key, lambda: load_bge_m3(self.spec, self.device))
            encode = model.encode_queries if role == "query" else model.encode_corpus
            with attention_kernels(self.device):
                return encode(texts, batch_size=batch_size, max_length=max_length, return_dense=True,
                              return_sparse=True, return_colbert_vecs=True)

        def compute() -> dict[str, np.ndarray]:
            out = self.pool.batched(model_key, self.spec.batch_size, run)
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

        return self.cache.arrays("bge_m3", key, compute)

    def search(self, spec: BGEM3Spec, queries: Queries, depth: int) -> Ranking:
        q = self.encode(queries.texts, queries.key, "query")
        d = self.corpus_outputs
        if spec.mode == "dense":
            return exact_search(q["dense"], d["dense"], depth, self.device)
        if spec.mode == "sparse":
            return sparse_search(q, d, depth)
        return colbert_search(q["colbert"], q["colbert_offsets"], d["colbert"], d["colbert_offsets"], depth,
                              self.device)


def _csr(arrays: dict[str, np.ndarray], width: int) -> sp.csr_matrix:
    offsets = arrays["sparse_offsets"]
    return sp.csr_matrix((arrays["sparse_weights"], arrays["sparse_ids"], offsets), shape=(len(offsets) - 1, width))


def sparse_search(queries: dict[str, np.ndarray], corpus: dict[str, np.ndarray], depth: int) -> Ranking:
    """Lexical matching: for each query and passage, the sum over shared tokens of the product of
    their weights."""
    width = int(max(queries["sparse_ids"].max(initial=0), corpus["sparse_ids"].max(initial=0))) + 1
    scores = (_csr(queries, width) @ _csr(corpus, width).T).toarray().astype(np.float32)
    return top_k(scores, depth)


def colbert_search(q_vectors: np.ndarray, q_offsets: np.ndarray, d_vectors: np.ndarray, d_offsets: np.ndarray,
                   depth: int, device: str) -> Ranking:
    """Late interaction over the whole corpus in blocks of passages, with a running top-k."""
    dtype = torch.float32 if device.startswith("cpu") else torch.float16
    n_queries, n_docs = len(q_offsets) - 1, len(d_offsets) - 1
    q_lengths = torch.from_numpy(np.diff(q_offsets)).to(device)
    q = torch.from_numpy(q_vectors).to(device, dtype)
    q_owner = torch.repeat_interleave(torch.arange(n_queries, device=device), q_lengths)
    best = RunningTopK(n_queries, depth, device)
    first = 0
    while first < n_docs:
        last = max(first + 1, int(np.searchsorted(d_offsets, d_offsets[first] + TOKEN_CHUNK, side="right")) - 1)
        last = min(last, n_docs)
        block = torch.from_numpy(d_vectors[d_offsets[first]:d_offsets[last]]).to(device, dtype)
        owner = torch.from_numpy(np.repeat(np.arange(last - first), np.diff(d_offsets[first:last + 1]))).to(device)
        similarity = (q @ block.T).float()
        best_match = torch.full((len(q), last - first), -torch.inf, device=device).scatter_reduce_(
            1, owner.expand(len(q), -1), similarity, "amax")
        block_scores = torch.zeros((n_queries, last - first), device=device).index_add_(0, q_owner, best_match)
        best.add(block_scores / q_lengths.clamp(min=1)[:, None], first)
        first = last
    return best.ranking()
