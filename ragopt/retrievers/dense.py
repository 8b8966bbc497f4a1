"""Dense retrieval with sentence-transformers: embeddings cached on disk per (model, settings,
texts); exact search by chunked matrix products with a running top-k on the device, or a FAISS
HNSW index on the CPU for corpora above `exact_search_max` passages."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ragopt.cache import Cache, cache_key
from ragopt.data import Corpus, Queries
from ragopt.models import ModelPool, attention_kernels, load_model, model_fingerprint, torch_dtype
from ragopt.retrievers import packed
from ragopt.retrievers._base import Ranking, RunningTopK, padded
from ragopt.spec import DenseSpec

CORPUS_CHUNK = 65_536
HNSW_NEIGHBOURS = 32


def load_sentence_transformer(name: str, spec: DenseSpec, device: str) -> Any:
    """Load a bi-encoder by hub id, local path or pkg: path, in the spec's precision; remote code
    only if the config allows it."""
    from sentence_transformers import SentenceTransformer

    model = load_model("dense", name, lambda path: SentenceTransformer(
        path, device=device, trust_remote_code=spec.trust_remote_code))
    model.to(torch_dtype(spec.dtype, device))
    if spec.max_length is not None:
        model.max_seq_length = spec.max_length
    return model


class DenseRetriever:
    """Embeds the corpus once and answers any query set by cosine (normalize) or dot product."""

    def __init__(self, spec: DenseSpec, corpus: Corpus, cache: Cache, pool: ModelPool, device: str,
                 progress: bool = False, exact_search_max: int = 1_000_000) -> None:
        self.spec, self.cache, self.pool, self.device, self.progress = spec, cache, pool, device, progress
        self._weights = {name: model_fingerprint(name) for name in (spec.model, spec.query_model) if name}
        self.corpus_vectors = self.embed(corpus.contents, corpus.key, "passage")
        self.index = hnsw_index(self.corpus_vectors) if len(corpus) > exact_search_max else None

    def theoretical_min(self, spec: DenseSpec) -> float | None:
        return -1.0 if spec.normalize else None

    def embed(self, texts: list[str], texts_key: str, role: str) -> np.ndarray:
        """Embeddings of texts as queries or passages, with that role's model, prefix or prompt."""
        name = self.spec.query_model if role == "query" and self.spec.query_model else self.spec.model
        prefix = self.spec.query_prefix if role == "query" else self.spec.passage_prefix
        prompt_name = self.spec.query_prompt_name if role == "query" else self.spec.passage_prompt_name
        settings = {"prefix": prefix, "prompt_name": prompt_name, "max_length": self.spec.max_length,
                    "normalize": self.spec.normalize, "trust_remote_code": self.spec.trust_remote_code,
                    "dtype": str(torch_dtype(self.spec.dtype, self.device))}
        key = cache_key("embeddings", self._weights[name], settings, texts_key)
        model_key = cache_key("dense", name, self.spec.model_dump(exclude={"model", "query_model"}), self.device)

        def encode(batch_size: int) -> np.ndarray:
            model = self.pool.get(model_key, lambda: load_sentence_transformer(name, self.spec, self.device))
            inputs = [prefix + t for t in texts]
            if packed.packable(model, prompt_name):
                return packed.encode(model, inputs, prompt_name, batch_size, self.spec.normalize,
                                     self.progress and len(texts) > batch_size).cpu().numpy()
            with attention_kernels(self.device):
                return model.encode(inputs, prompt_name=prompt_name, batch_size=batch_size,
                                    normalize_embeddings=self.spec.normalize, convert_to_tensor=True,
                                    show_progress_bar=self.progress and len(texts) > batch_size).float().cpu().numpy()

        return self.cache.arrays("embeddings", key, lambda: {
            "vectors": self.pool.batched(model_key, self.spec.batch_size, encode)})["vectors"]

    def search(self, spec: DenseSpec, queries: Queries, depth: int) -> Ranking:
        query_vectors = self.embed(queries.texts, queries.key, "query")
        if self.index is not None:
            return hnsw_search(self.index, query_vectors, depth)
        return exact_search(query_vectors, self.corpus_vectors, depth, self.device)


def exact_search(queries: np.ndarray, corpus: np.ndarray, depth: int, device: str) -> Ranking:
    """Top-`depth` inner products, scanning the corpus in chunks and keeping a running top-k."""
    q = torch.from_numpy(queries).to(device)
    best = RunningTopK(len(queries), depth, device)
    for start in range(0, len(corpus), CORPUS_CHUNK):
        best.add(q @ torch.from_numpy(corpus[start:start + CORPUS_CHUNK]).to(device).T, start)
    return best.ranking()


def hnsw_index(vectors: np.ndarray) -> Any:
    """A FAISS HNSW graph over inner products, for corpora too large to scan per query set."""
    try:
        import faiss
    except ImportError:
        raise ImportError("corpora above exact_search_max need FAISS: pip install faiss-cpu") from None
    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def hnsw_search(index: Any, queries: np.ndarray, depth: int) -> Ranking:
    """Approximate top-`depth`, searching with a candidate list of at least 4 x depth."""
    index.hnsw.efSearch = max(128, 4 * depth)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
    return padded(ids, np.where(ids >= 0, scores, -np.inf), depth)
