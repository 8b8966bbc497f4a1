"""Hybrid fusion of rankings, pure numpy: reciprocal rank fusion and convex combination, one
small function per method and per normalization.

Convex combination normalizes each retriever's scores per query with statistics of *every*
passage that retriever retrieved (Ranking.stats: all passages for a dense retriever, the
matching ones for a lexical one), not only of the candidates handed to the hybrid, so a
passage's normalized score, and the fused order of the passages present in every list, do not
change when the hybrid's candidate depth does:

  min_max  (s - min) / (max - min)
  tmm      (s - t) / (max - t), t the score's theoretical minimum (BM25 0, cosine -1; min if unknown)
  z_score  (s - mean) / std
  dbsf     (s - (mean - 3 std)) / (6 std), clipped to [0, 1]  (distribution-based score fusion)

A passage missing from one retriever's list (beyond its candidate depth, or not retrieved by it)
takes that list's floor: 0 for min_max, tmm and dbsf (their lowest value, which is also ranx's
and most engines' convention of a missing score counting 0), and for z_score the z of the
lowest score the retriever gave any passage. A list whose scores are all equal gives its
passages 1 and the missing ones 0 (under z_score, which has no scale for it, 0 to both: such a
list adds nothing); a list that retrieved nothing adds 0 to every passage. The fused score is the
weighted sum over the lists.

RRF scores a passage sum(1 / (rrf_k + rank)) over the lists it appears in (rank from 1); a
missing passage adds nothing. Fused ties are broken by corpus row.
"""

from __future__ import annotations

import numpy as np

from ragopt.stages.ranking import Ranking, ScoreStats

NORMALIZATIONS = ("min_max", "tmm", "z_score", "dbsf")


def min_max(s: np.ndarray, stats: ScoreStats, theoretical_min: float | None) -> tuple[np.ndarray, np.ndarray]:
    return _scaled(s, stats.min, stats.max)


def tmm(s: np.ndarray, stats: ScoreStats, theoretical_min: float | None) -> tuple[np.ndarray, np.ndarray]:
    low = stats.min if theoretical_min is None else np.full_like(stats.min, theoretical_min)
    return _scaled(s, low, stats.max)


def z_score(s: np.ndarray, stats: ScoreStats, theoretical_min: float | None) -> tuple[np.ndarray, np.ndarray]:
    std, mean = stats.std[:, None], stats.mean[:, None]
    spread = np.nan_to_num(std) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(spread, (s - mean) / std, 0.0)
        floor = np.where(spread[:, 0], (stats.min - stats.mean) / stats.std, 0.0)
    return values, floor


def dbsf(s: np.ndarray, stats: ScoreStats, theoretical_min: float | None) -> tuple[np.ndarray, np.ndarray]:
    std, mean = stats.std[:, None], stats.mean[:, None]
    spread = np.nan_to_num(std) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(spread, np.clip((s - (mean - 3 * std)) / (6 * std), 0.0, 1.0), 1.0)
    return values, np.zeros(len(s))


def _scaled(s: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s - low) / (high - low), 1 where high == low; floor 0."""
    span = (high - low)[:, None]
    spread = np.nan_to_num(span) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(spread, (s - low[:, None]) / span, 1.0)
    return values, np.zeros(len(s))


NORMALIZE = {"min_max": min_max, "tmm": tmm, "z_score": z_score, "dbsf": dbsf}


def normalize(ranking: Ranking, method: str, theoretical_min: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalized scores of a ranking (NaN where nothing was retrieved) and each query's floor,
    the value a passage missing from this list takes. Without `stats` (a ranking not made by a
    retriever), statistics of the ranking's own entries are used."""
    if method not in NORMALIZE:
        raise ValueError(f"unknown normalization {method!r}; use one of {NORMALIZATIONS}")
    valid = ranking.ids >= 0
    s = np.where(valid, ranking.scores, np.nan).astype(np.float64)
    stats = ranking.stats if ranking.stats is not None else ScoreStats.of(np.where(valid, s, -np.inf))
    values, floor = NORMALIZE[method](s, stats, theoretical_min)
    return np.where(valid, values, np.nan), floor


def rrf(rankings: list[Ranking], k: int, n_docs: int, depth: int) -> Ranking:
    """Reciprocal rank fusion (Cormack et al. 2009)."""
    ranks = np.arange(1, max(r.depth for r in rankings) + 1, dtype=np.float64)
    contributions = [np.where(r.ids >= 0, 1.0 / (k + ranks[: r.depth]), 0.0) for r in rankings]
    return _combine(rankings, contributions, np.zeros(rankings[0].ids.shape[0]), n_docs, depth)


def convex(rankings: list[Ranking], weights: list[float], normalization: str, theoretical_mins: list[float | None],
           n_docs: int, depth: int) -> Ranking:
    """Weighted sum of normalized scores, a missing passage taking each list's floor; weights
    are used as given (they sum to 1 from the space)."""
    base = np.zeros(rankings[0].ids.shape[0])
    contributions = []
    for ranking, weight, t_min in zip(rankings, weights, theoretical_mins):
        values, floor = normalize(ranking, normalization, t_min)
        base += weight * floor
        contributions.append(np.where(ranking.ids >= 0, weight * (np.nan_to_num(values) - floor[:, None]), 0.0))
    return _combine(rankings, contributions, base, n_docs, depth)


def _combine(rankings: list[Ranking], contributions: list[np.ndarray], base: np.ndarray, n_docs: int,
             depth: int) -> Ranking:
    """Sum per-(query, passage) contributions over the union of candidate lists and rank, ties
    by corpus row (compared as the float32 scores the Ranking holds)."""
    n_queries = rankings[0].ids.shape[0]
    ids = np.concatenate([r.ids for r in rankings], axis=1)
    values = np.concatenate(contributions, axis=1)
    rows = np.broadcast_to(np.arange(n_queries)[:, None], ids.shape)
    keep = ids >= 0
    keys = rows[keep].astype(np.int64) * (n_docs + 1) + ids[keep]
    unique, inverse = np.unique(keys, return_inverse=True)
    fused = np.bincount(inverse, weights=values[keep], minlength=len(unique)) + base[unique // (n_docs + 1)]
    fused = fused.astype(np.float32)
    query, doc = unique // (n_docs + 1), unique % (n_docs + 1)
    order = np.lexsort((doc, -fused, query))
    query, doc, fused = query[order], doc[order], fused[order]
    starts = np.searchsorted(query, np.arange(n_queries))
    rank = np.arange(len(query)) - starts[query]
    take = rank < depth
    out_ids = np.full((n_queries, depth), -1, dtype=np.int64)
    out_scores = np.full((n_queries, depth), -np.inf, dtype=np.float32)
    out_ids[query[take], rank[take]] = doc[take]
    out_scores[query[take], rank[take]] = fused[take]
    return Ranking(out_ids, out_scores)
