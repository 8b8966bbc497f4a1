"""Dense retrieval with sentence-transformers: embeddings cached on disk per (model, settings,
texts), exact search by matrix products with a running top-k on the device."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ragopt.cache import Cache, cache_key
from ragopt.data import Corpus, Queries
from ragopt.models import ModelPool, load_model, model_fingerprint
from ragopt.retrievers._base import Ranking, padded
from ragopt.spec import DenseSpec

CORPUS_CHUNK = 65_536


def load_sentence_transformer(spec: DenseSpec, device: str) -> Any:
    """Load a bi-encoder by hub id, local path or pkg: path; remote code only if the config allows."""
    from sentence_transformers import SentenceTransformer

    model = load_model("dense", spec.model, lambda path: SentenceTransformer(
        path, device=device, trust_remote_code=spec.trust_remote_code))
    if spec.max_length is not None:
        model.max_seq_length = spec.max_length
    return model


class DenseRetriever:
    """Embeds the corpus once and answers any query set by cosine (normalize) or dot product."""

    def __init__(self, spec: DenseSpec, corpus: Corpus, cache: Cache, pool: ModelPool, device: str,
                 progress: bool = False) -> None:
        self.spec, self.cache, self.pool, self.device, self.progress = spec, cache, pool, device, progress
        self.theoretical_min = -1.0 if spec.normalize else None
        self._weights = model_fingerprint(spec.model)
        self.corpus_vectors = self.embed(corpus.contents, corpus.key, "passage")

    def _model(self) -> Any:
        return self.pool.get(cache_key("dense", self.spec.model_dump(), self.device),
                             lambda: load_sentence_transformer(self.spec, self.device))

    def embed(self, texts: list[str], texts_key: str, role: str) -> np.ndarray:
        """Embeddings of texts as queries or passages, with that role's prefix or prompt."""
        prefix = self.spec.query_prefix if role == "query" else self.spec.passage_prefix
        prompt_name = self.spec.query_prompt_name if role == "query" else self.spec.passage_prompt_name
        settings = {"prefix": prefix, "prompt_name": prompt_name, "max_length": self.spec.max_length,
                    "normalize": self.spec.normalize, "trust_remote_code": self.spec.trust_remote_code}
        key = cache_key("embeddings", self._weights, settings, texts_key)

        def compute() -> dict[str, np.ndarray]:
            vectors = self._model().encode(
                [prefix + t for t in texts], prompt_name=prompt_name, batch_size=self.spec.batch_size,
                normalize_embeddings=self.spec.normalize, convert_to_numpy=True,
                show_progress_bar=self.progress and len(texts) > self.spec.batch_size)
            return {"vectors": np.asarray(vectors, dtype=np.float32)}

        return self.cache.arrays("embeddings", key, compute)["vectors"]

    def search(self, spec: DenseSpec, queries: Queries, depth: int) -> Ranking:
        query_vectors = self.embed(queries.texts, queries.key, "query")
        return exact_search(query_vectors, self.corpus_vectors, depth, self.device)


def exact_search(queries: np.ndarray, corpus: np.ndarray, depth: int, device: str) -> Ranking:
    """Top-`depth` inner products, scanning the corpus in chunks and keeping a running top-k."""
    q = torch.from_numpy(queries).to(device)
    best_scores = torch.full((len(queries), 0), -torch.inf, device=device)
    best_ids = torch.zeros((len(queries), 0), dtype=torch.long, device=device)
    for start in range(0, len(corpus), CORPUS_CHUNK):
        block = torch.from_numpy(corpus[start:start + CORPUS_CHUNK]).to(device)
        scores = torch.cat([best_scores, q @ block.T], dim=1)
        ids = torch.cat([best_ids, torch.arange(start, start + len(block), device=device).expand(len(q), -1)], dim=1)
        take = min(depth, scores.shape[1])
        best_scores, pos = torch.topk(scores, take, dim=1)
        best_ids = torch.gather(ids, 1, pos)
    return padded(best_ids.cpu().numpy(), best_scores.cpu().numpy(), depth)
