"""Context-ranking metrics at k, vectorized over queries, with trec_eval's definitions.

Relevance follows AutoRAG's ground-truth groups: a question's retrieval_gt is a list of groups,
every group is required and the ids inside a group are alternatives. A retrieved passage is
relevant when it is the first one retrieved from a group not yet satisfied, and a question has as
many relevant items as it has groups. With one id per group (the usual case) this is exactly
trec_eval's binary relevance, so trec_eval on the runs ragopt writes (runs/best.trec, `ragopt
runs`) and qrels.trec gives the same numbers.

    precision@k  relevant in top k / k                          (trec_eval P_k)
    recall@k     relevant in top k / groups                     (recall_k)
    f1@k         harmonic mean of precision@k and recall@k
    map@k        sum of precision at each relevant rank <= k / groups   (map_cut_k)
    mrr@k        1 / rank of the first relevant passage if <= k (recip_rank on the run cut at k)
    ndcg@k       DCG@k / ideal DCG@k, gain 1, discount log2(rank + 1)   (ndcg_cut_k)
    hit@k        1 if any relevant passage is in the top k     (success_k)
"""

from __future__ import annotations

import numpy as np

METRICS = ("f1", "recall", "precision", "map", "mrr", "ndcg", "hit")


def relevance(ranked: np.ndarray, groups: list[list[list[int]]], n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary gains (queries x depth) of a ranking of corpus rows (-1 = nothing retrieved), and the
    number of groups per query."""
    n_queries, depth = ranked.shape
    q_idx, doc_idx, group_idx = [], [], []
    next_group = 0
    for q, query_groups in enumerate(groups):
        for group in query_groups:
            q_idx += [q] * len(group)
            doc_idx += group
            group_idx += [next_group] * len(group)
            next_group += 1
    keys = np.asarray(q_idx, dtype=np.int64) * (n_docs + 1) + np.asarray(doc_idx, dtype=np.int64)
    order = np.argsort(keys)
    keys, group_of = keys[order], np.asarray(group_idx, dtype=np.int64)[order]
    ranked_keys = np.arange(n_queries, dtype=np.int64)[:, None] * (n_docs + 1) + ranked
    pos = np.clip(np.searchsorted(keys, ranked_keys), 0, len(keys) - 1)
    matched = (keys[pos] == ranked_keys) & (ranked >= 0)
    hit_group = np.where(matched, group_of[pos], -1).ravel()
    first = np.zeros(hit_group.shape, dtype=bool)
    valid = np.flatnonzero(hit_group >= 0)
    _, first_of_group = np.unique(hit_group[valid], return_index=True)
    first[valid[first_of_group]] = True
    return first.reshape(n_queries, depth), group_counts(groups)


def group_counts(groups: list[list[list[int]]]) -> np.ndarray:
    """The number of required groups of each question: its relevant items."""
    return np.array([len(g) for g in groups], dtype=np.float64)


def at_k(gains: np.ndarray, n_rel: np.ndarray, ks: list[int], names: tuple[str, ...] = METRICS
         ) -> dict[str, np.ndarray]:
    """Per-query values of each metric at each k, keyed 'metric@k'."""
    depth = gains.shape[1]
    if max(ks) > depth:
        raise ValueError(f"ranking depth {depth} is smaller than k={max(ks)}")
    g = gains.astype(np.float64)
    hits = np.cumsum(g, axis=1)
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    precision_at_rank = hits / ranks
    discounted = np.cumsum(g / np.log2(ranks + 1), axis=1)
    ideal = np.cumsum(1.0 / np.log2(ranks + 1))
    first_rank = np.where(g.any(axis=1), np.argmax(g > 0, axis=1) + 1, depth + 1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        h = hits[:, k - 1]
        precision, recall = h / k, h / n_rel
        values = {
            "precision": precision,
            "recall": recall,
            "f1": np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(h),
                            where=(precision + recall) > 0),
            "map": (precision_at_rank[:, :k] * g[:, :k]).sum(axis=1) / n_rel,
            "mrr": np.where(first_rank <= k, 1.0 / first_rank, 0.0),
            "ndcg": discounted[:, k - 1] / ideal[np.minimum(n_rel, k).astype(int) - 1],
            "hit": (h > 0).astype(np.float64),
        }
        out.update({f"{name}@{k}": values[name] for name in names})
    return out
