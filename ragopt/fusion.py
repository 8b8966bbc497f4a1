"""Hybrid fusion of rankings, pure numpy: reciprocal rank fusion and convex combination.

Convex combination normalizes each retriever's scores per query over its own candidate list:
  min_max  (s - min) / (max - min)
  tmm      (s - theoretical min) / (max - theoretical min)  (BM25: 0, cosine: -1; else observed min)
  z_score  (s - mean) / std
  dbsf     (s - (mean - 3 std)) / 6 std, clipped to [0, 1]  (distribution-based score fusion)
A passage missing from one retriever's list counts as that list's lowest normalized score there.
RRF scores a passage sum(1 / (rrf_k + rank)) over the lists it appears in (rank from 1).
"""

from __future__ import annotations

import numpy as np

from ragopt.retrievers._base import Ranking


def normalize(ranking: Ranking, method: str, theoretical_min: float | None) -> np.ndarray:
    """Per-query normalized scores of a ranking; NaN where nothing was retrieved."""
    valid = ranking.ids >= 0
    s = np.where(valid, ranking.scores, np.nan).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method in ("min_max", "tmm"):
            high = np.nanmax(s, axis=1, keepdims=True)
            low = np.nanmin(s, axis=1, keepdims=True)
            if method == "tmm" and theoretical_min is not None:
                low = np.full_like(low, theoretical_min)
            span = high - low
            return np.where(span > 0, (s - low) / span, 1.0)
        mean = np.nanmean(s, axis=1, keepdims=True)
        std = np.nanstd(s, axis=1, keepdims=True)
        if method == "z_score":
            return np.where(std > 0, (s - mean) / std, 0.0)
        if method == "dbsf":
            return np.where(std > 0, np.clip((s - (mean - 3 * std)) / (6 * std), 0.0, 1.0), 1.0)
    raise ValueError(f"unknown normalization {method!r}")


def _combine(rankings: list[Ranking], contributions: list[np.ndarray], base: np.ndarray, n_docs: int,
             depth: int) -> Ranking:
    """Sum per-(query, passage) contributions over the union of candidate lists and rank."""
    n_queries = rankings[0].ids.shape[0]
    ids = np.concatenate([r.ids for r in rankings], axis=1)
    values = np.concatenate(contributions, axis=1)
    rows = np.broadcast_to(np.arange(n_queries)[:, None], ids.shape)
    keep = ids >= 0
    keys = rows[keep].astype(np.int64) * (n_docs + 1) + ids[keep]
    unique, inverse = np.unique(keys, return_inverse=True)
    fused = np.bincount(inverse, weights=values[keep], minlength=len(unique)) + base[unique // (n_docs + 1)]
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


def rrf(rankings: list[Ranking], k: int, n_docs: int, depth: int) -> Ranking:
    """Reciprocal rank fusion (Cormack et al. 2009)."""
    ranks = np.arange(1, rankings[0].depth + 1, dtype=np.float64)
    contributions = [np.where(r.ids >= 0, 1.0 / (k + ranks[: r.depth]), 0.0) for r in rankings]
    return _combine(rankings, contributions, np.zeros(rankings[0].ids.shape[0]), n_docs, depth)


def convex(rankings: list[Ranking], weights: list[float], normalization: str, theoretical_mins: list[float | None],
           n_docs: int, depth: int) -> Ranking:
    """Weighted sum of normalized scores; weights are used as given (they sum to 1 from the space)."""
    base = np.zeros(rankings[0].ids.shape[0])
    contributions = []
    for ranking, weight, t_min in zip(rankings, weights, theoretical_mins):
        norm = normalize(ranking, normalization, t_min)
        floor = np.nanmin(np.where(np.isnan(norm), np.inf, norm), axis=1)
        floor = np.where(np.isfinite(floor), floor, 0.0)
        base += weight * floor
        contributions.append(np.where(ranking.ids >= 0, weight * (np.nan_to_num(norm) - floor[:, None]), 0.0))
    return _combine(rankings, contributions, base, n_docs, depth)
