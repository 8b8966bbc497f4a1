"""What every retriever returns: a Ranking, one row of corpus rows and scores per query, holding
only the passages the retriever retrieved, with statistics of every score it gave. Plain numpy.

Ties are broken by corpus row everywhere. A Corpus keeps its passages sorted by doc id, so the
row is a key that does not depend on the order of rows in the corpus file, and a shallow ranking
is always a prefix of a deeper one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SCORE_BLOCK = 1 << 25
"""Scores are computed in blocks of queries holding at most this many (query, passage) scores
(128 MiB of float32)."""
CANDIDATE_SLICES = 4
"""top_k's threshold comes from this many column slices per rank asked for."""


@dataclass(frozen=True)
class ScoreStats:
    """Per query, over every passage a retriever retrieved (all of them, not only the ranks it
    returned): how many, and their lowest, highest, mean and standard deviation (population).
    NaN where a query retrieved nothing. Fusion normalizes with these, so a passage's normalized
    score does not depend on how deep the retriever was asked to go."""

    count: np.ndarray
    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray) -> "ScoreStats":
        """Statistics of the finite entries of each row of a (queries x passages) score matrix,
        in float64, a row at a time through reused buffers (no temporary the size of the
        matrix) and by arithmetic on a 0/1 weight rather than masked writes, which cost ten
        times as much on rows where retrieved and unretrieved passages alternate."""
        n_queries, n_docs = scores.shape
        count = np.zeros(n_queries, dtype=np.int64)
        low, high, mean, std = (np.full(n_queries, np.nan) for _ in range(4))
        values, weight, above = np.empty(n_docs), np.empty(n_docs), np.empty(n_docs)
        finite = np.empty(n_docs, dtype=bool)
        for q, row in enumerate(scores):
            np.isfinite(row, out=finite)
            count[q] = n = np.count_nonzero(finite)
            if not n:
                continue
            if n < n_docs and (np.isnan(row).any() or np.isposinf(row).any()):
                row = np.where(finite, row, -np.inf)  # every entry left out is now -inf
            high[q] = row.max()
            np.copyto(weight, finite)
            np.maximum(row, np.finfo(row.dtype).min, out=values)
            values *= weight  # 0 where not finite
            np.subtract(1.0, weight, out=above)
            above *= np.finfo(np.float64).max
            above += values  # the largest float where not finite
            low[q] = above.min()
            mean[q] = values.sum() / n
            values -= mean[q]
            values *= weight
            std[q] = np.sqrt(np.square(values, out=values).sum() / n)
        return cls(count, low, high, mean, std)

    @classmethod
    def concat(cls, parts: list["ScoreStats"]) -> "ScoreStats":
        """The statistics of consecutive blocks of queries, stacked."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("count", "min", "max", "mean", "std")))

    def rows(self, rows: np.ndarray) -> "ScoreStats":
        return ScoreStats(self.count[rows], self.min[rows], self.max[rows], self.mean[rows], self.std[rows])


@dataclass(frozen=True)
class Ranking:
    """ids[q, r] is the corpus row at rank r for query q, -1 once nothing more was retrieved;
    scores[q, r] is its score (-inf there). A retriever's or a hybrid's rows are sorted best
    first, ties by corpus row; a reranked row holds the reranker's scores best first (ties in
    the retriever's order) for its first `depth` ranks, then the retriever's own ranks and scores.
    `stats` describes every score the retriever gave (None for fused or reranked rankings)."""

    ids: np.ndarray
    scores: np.ndarray
    stats: ScoreStats | None = None

    @property
    def depth(self) -> int:
        return self.ids.shape[1]

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.scores.nbytes

    def head(self, depth: int) -> "Ranking":
        """The first `depth` ranks; a smaller k is a slice, never a new retrieval."""
        return Ranking(self.ids[:, :depth], self.scores[:, :depth], self.stats)

    @classmethod
    def concat(cls, parts: list["Ranking"]) -> "Ranking":
        """The rankings of consecutive blocks of queries, stacked."""
        stats = None if any(p.stats is None for p in parts) else ScoreStats.concat([p.stats for p in parts])
        return cls(np.concatenate([p.ids for p in parts]), np.concatenate([p.scores for p in parts]), stats)

    def rows(self, rows: np.ndarray) -> "Ranking":
        """The rankings of some queries only."""
        return Ranking(self.ids[rows], self.scores[rows], None if self.stats is None else self.stats.rows(rows))


def top_k(scores: np.ndarray, depth: int) -> Ranking:
    """The `depth` best finite entries of each row of a (queries x passages) score matrix, best
    first, ties by corpus row over the whole row (so a shallower ranking is always a prefix of a
    deeper one). A passage the retriever did not retrieve has score -inf (NaN counts as -inf) and
    is never returned; rows with fewer retrieved passages are padded with -1 / -inf."""
    if np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)
    n_queries, n_docs = scores.shape
    take = min(depth, n_docs)
    if take == 0:
        return padded(np.zeros((n_queries, 0), np.int64), np.zeros((n_queries, 0), np.float32), depth)
    rows, cols = _candidates(scores, take)
    values = scores[rows, cols]
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    kept = rank < take
    ids = np.full((n_queries, take), -1, dtype=np.int64)
    best = np.full((n_queries, take), -np.inf, dtype=np.float32)
    ids[rows[kept], rank[kept]] = cols[kept]
    best[rows[kept], rank[kept]] = values[kept]
    return padded(ids, best, depth)


def _candidates(scores: np.ndarray, take: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every finite entry at or above a threshold no higher than its row's
    take-th best: the take-th largest of the maxima of CANDIDATE_SLICES * take column slices
    (take distinct entries reach it). Finding it reads each score once, and usually only a few
    times `take` entries a row pass: top_k costs an eighth of a partition of every row with a
    running count of its ties."""
    n_docs = scores.shape[1]
    slices = min(n_docs, CANDIDATE_SLICES * take)
    maxima = np.maximum.reduceat(scores, np.arange(slices) * n_docs // slices, axis=1)
    threshold = np.partition(maxima, slices - take, axis=1)[:, slices - take]
    threshold = np.maximum(threshold, np.finfo(scores.dtype).min)  # -inf: every finite entry passes
    return np.nonzero(scores >= threshold[:, None])


def blockwise(n_queries: int, n_docs: int, scores: Callable[[slice], np.ndarray], depth: int) -> Ranking:
    """A ranking of `depth` passages for each of n_queries queries whose dense score rows
    `scores(rows)` (-inf: not retrieved) are computed a block of queries at a time, so no more
    than SCORE_BLOCK scores are in memory at once; statistics cover every score."""
    block = max(1, SCORE_BLOCK // max(1, n_docs))
    parts = []
    for start in range(0, max(1, n_queries), block):
        rows = scores(slice(start, start + block))
        head = top_k(rows, depth)
        parts.append(Ranking(head.ids, head.scores, ScoreStats.of(rows)))
    return Ranking.concat(parts)


def padded(ids: np.ndarray, scores: np.ndarray, depth: int, stats: ScoreStats | None = None) -> Ranking:
    """A Ranking of exactly `depth` columns, filling missing ranks with -1 / -inf."""
    missing = depth - ids.shape[1]
    if missing > 0:
        ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
    return Ranking(ids.astype(np.int64), scores.astype(np.float32), stats)
