"""Reranking: reorder the first `depth` candidates of a ranking by a pair scorer, with every
(model, query, passage) score cached so candidate lists shared by several retrievers or
depths are scored once."""

from __future__ import annotations

import hashlib
from typing import Callable, Protocol, Sequence

import numpy as np

from ragopt.cache import ScoreTable
from ragopt.retrievers._base import Ranking


class PairScorer(Protocol):
    """A model that scores (query, passage) pairs, higher is more relevant. FlagEmbedding's
    rerankers plug in here the same way as sentence-transformers' CrossEncoder."""

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """64-bit content hashes of texts, the halves of a pair's cache key."""
    return np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts],
                    dtype=np.uint64)


def rerank(ranking: Ranking, depth: int, query_texts: Sequence[str], query_hashes: np.ndarray,
           doc_texts: Sequence[str], doc_hashes: np.ndarray, load_scorer: Callable[[], PairScorer],
           table: ScoreTable) -> Ranking:
    """Reorder ranks [0, depth) by the scorer; ranks from depth on keep the retriever's order. The
    scorer is loaded only when some pair is not in the score table yet."""
    head = ranking.ids[:, :depth]
    valid = head >= 0
    rows, cols = np.nonzero(valid)
    docs = head[rows, cols]
    with np.errstate(over="ignore"):
        keys = query_hashes[rows] * np.uint64(0x9E3779B97F4A7C15) ^ doc_hashes[docs]
    scores, found = table.lookup(keys)
    if not found.all():
        todo = np.flatnonzero(~found)
        unique_keys, first = np.unique(keys[todo], return_index=True)
        pick = todo[first]
        fresh = load_scorer().score([(query_texts[rows[i]], doc_texts[docs[i]]) for i in pick])
        table.add(unique_keys, fresh)
        scores, _ = table.lookup(keys)
    grid = np.full(head.shape, -np.inf, dtype=np.float32)
    grid[rows, cols] = scores
    order = np.lexsort((np.broadcast_to(np.arange(head.shape[1]), head.shape), -grid), axis=1)
    new_ids = np.concatenate([np.take_along_axis(head, order, axis=1), ranking.ids[:, depth:]], axis=1)
    new_scores = np.concatenate([np.take_along_axis(grid, order, axis=1), ranking.scores[:, depth:]], axis=1)
    return Ranking(new_ids, new_scores)
