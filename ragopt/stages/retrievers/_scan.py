"""Exact search by scanning the corpus in blocks on the device (torch): a running top-k whose
ties are broken by corpus row, whatever order torch.topk would leave them in, and running
statistics of every score. Queries are taken in blocks too, so that no score matrix larger than
SCORE_BLOCK is ever in memory, and every reduction is deterministic (no atomic adds)."""

from __future__ import annotations

import numpy as np
import torch

from ragopt.stages import ranking
from ragopt.stages.ranking import Ranking, ScoreStats, padded

CORPUS_CHUNK = 65_536
"""Passages per dense scan block."""
TOKEN_CHUNK = 65_536
"""Passage token vectors per ColBERT scan block."""


class RunningTopK:
    """The best `depth` (score, corpus row) pairs per query over a corpus scanned in blocks of
    consecutive rows, best first and ties by row (so a shallow scan is a prefix of a deep one),
    and the count, mean, spread, lowest and highest of every finite score seen."""

    def __init__(self, n_queries: int, depth: int, device: str) -> None:
        self.depth, self.device = depth, device
        self.scores = torch.full((n_queries, depth), -torch.inf, device=device)
        self.ids = torch.zeros((n_queries, depth), dtype=torch.long, device=device)
        wide = {"dtype": torch.float64, "device": device}
        self.count, self.mean, self.m2 = (torch.zeros(n_queries, **wide) for _ in range(3))
        self.low, self.high = torch.full((n_queries,), torch.inf, **wide), torch.full((n_queries,), -torch.inf, **wide)

    def add(self, block_scores: torch.Tensor, first_row: int) -> None:
        """Merge the scores of rows first_row, first_row + 1, ... (one column each); NaN counts
        as not retrieved (-inf). Only the block's entries at or above both its own depth-th best
        and the depth-th best kept so far can enter, so only those are sorted with the kept ones
        (sorting the whole block cost several times the matrix product on a CPU)."""
        block = block_scores.float()
        block = torch.where(torch.isnan(block), -torch.inf, block)
        self._add_stats(block)
        n_queries, width = block.shape
        if width == 0:
            return
        threshold = torch.maximum(torch.topk(block, min(self.depth, width), dim=1).values[:, -1], self.scores[:, -1])
        rows, columns = torch.nonzero(block >= threshold.clamp(min=torch.finfo(block.dtype).min)[:, None],
                                      as_tuple=True)
        kept_rows, slots = torch.nonzero(self.scores > -torch.inf, as_tuple=True)
        rows = torch.cat([kept_rows, rows])
        ids = torch.cat([self.ids[kept_rows, slots], columns + first_row])
        scores = torch.cat([self.scores[kept_rows, slots], block[rows[len(kept_rows):], columns]])
        order = torch.sort(ids, stable=True).indices  # then by score, then by query: ties stay in row order
        order = order[torch.sort(scores[order], descending=True, stable=True).indices]
        order = order[torch.sort(rows[order], stable=True).indices]
        rows, ids, scores = rows[order], ids[order], scores[order]
        rank = torch.arange(len(rows), device=self.device) - torch.searchsorted(rows, rows)
        taken = rank < self.depth
        self.scores = torch.full((n_queries, self.depth), -torch.inf, device=self.device)
        self.ids = torch.zeros((n_queries, self.depth), dtype=torch.long, device=self.device)
        self.scores[rows[taken], rank[taken]] = scores[taken]
        self.ids[rows[taken], rank[taken]] = ids[taken]

    def _add_stats(self, block: torch.Tensor) -> None:
        """Chan et al.'s pairwise update of the running count, mean and sum of squared deviations."""
        values = block.double()
        finite = torch.isfinite(values)
        m = finite.sum(dim=1).double()
        block_mean = torch.where(finite, values, 0.0).sum(dim=1) / m.clamp(min=1)
        block_m2 = (torch.where(finite, values - block_mean[:, None], 0.0) ** 2).sum(dim=1)
        total = self.count + m
        delta = block_mean - self.mean
        self.mean = self.mean + delta * m / total.clamp(min=1)
        self.m2 = self.m2 + block_m2 + delta ** 2 * self.count * m / total.clamp(min=1)
        self.low = torch.minimum(self.low, torch.where(finite, values, torch.inf).min(dim=1).values)
        self.high = torch.maximum(self.high, torch.where(finite, values, -torch.inf).max(dim=1).values)
        self.count = total

    def ranking(self) -> Ranking:
        count = self.count.cpu().numpy()
        some = count > 0
        moments = [np.where(some, t.cpu().numpy(), np.nan)
                   for t in (self.low, self.high, self.mean, (self.m2 / self.count.clamp(min=1)).sqrt())]
        scores = self.scores.cpu().numpy()
        ids = np.where(scores > -np.inf, self.ids.cpu().numpy(), -1)
        return padded(ids, scores, self.depth, ScoreStats(count.astype(np.int64), *moments))


def exact_search(queries: np.ndarray, corpus: np.ndarray, depth: int, device: str) -> Ranking:
    """Top-`depth` inner products, scanning the corpus in chunks with a running top-k, a block of
    queries at a time."""
    chunk = max(1, min(len(corpus), CORPUS_CHUNK))
    block = max(1, ranking.SCORE_BLOCK // chunk)
    parts = []
    for start in range(0, max(1, len(queries)), block):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + block], dtype=np.float32)).to(device)
        best = RunningTopK(len(q), depth, device)
        for first in range(0, len(corpus), chunk):
            passages = torch.from_numpy(np.ascontiguousarray(corpus[first:first + chunk], dtype=np.float32))
            best.add(q @ passages.to(device, non_blocking=True).T, first)
        parts.append(best.ranking())
    return Ranking.concat(parts)


def colbert_search(q_vectors: np.ndarray, q_offsets: np.ndarray, d_vectors: np.ndarray, d_offsets: np.ndarray,
                   depth: int, device: str, mean: bool = True) -> Ranking:
    """Late interaction in float32 over the whole corpus, in blocks of passages and of queries:
    the sum over query tokens of each one's best passage-token match (MaxSim, PyLate's and
    sentence-transformers' multi-vector score), over the query's length when `mean`
    (BGEM3FlagModel.colbert_score)."""
    n_queries, n_docs = len(q_offsets) - 1, len(d_offsets) - 1
    q_lengths = np.diff(q_offsets)
    budget = max(1, ranking.SCORE_BLOCK // TOKEN_CHUNK)  # query tokens per block
    parts, first_query = [], 0
    while first_query < n_queries or not parts:
        last_query = first_query + 1
        while last_query < n_queries and q_offsets[last_query + 1] - q_offsets[first_query] <= budget:
            last_query += 1
        last_query = min(last_query, n_queries)
        parts.append(_colbert_block(q_vectors[q_offsets[first_query]:q_offsets[last_query]],
                                    q_lengths[first_query:last_query], d_vectors, d_offsets, n_docs, depth, device,
                                    mean))
        first_query = last_query
    return Ranking.concat(parts)


def _colbert_block(q_vectors: np.ndarray, q_lengths: np.ndarray, d_vectors: np.ndarray, d_offsets: np.ndarray,
                   n_docs: int, depth: int, device: str, mean: bool) -> Ranking:
    n_queries, longest = len(q_lengths), int(q_lengths.max(initial=1))
    q = torch.from_numpy(np.ascontiguousarray(q_vectors, dtype=np.float32)).to(device)
    # each query token's slot in a (queries x longest) grid: per-query sums without atomic adds
    slots = np.concatenate([i * longest + np.arange(n) for i, n in enumerate(q_lengths)]) if n_queries else []
    slots = torch.as_tensor(np.asarray(slots, dtype=np.int64), device=device)
    divisors = q_lengths if mean else np.ones_like(q_lengths)
    lengths = torch.from_numpy(divisors.astype(np.float32)).to(device).clamp(min=1)
    best = RunningTopK(n_queries, depth, device)
    first = 0
    while first < n_docs:
        last = max(first + 1, int(np.searchsorted(d_offsets, d_offsets[first] + TOKEN_CHUNK, side="right")) - 1)
        last = min(last, n_docs)
        block = torch.from_numpy(np.ascontiguousarray(d_vectors[d_offsets[first]:d_offsets[last]],
                                                      dtype=np.float32)).to(device)
        owner = torch.from_numpy(np.repeat(np.arange(last - first), np.diff(d_offsets[first:last + 1]))).to(device)
        similarity = q @ block.T
        best_match = torch.full((len(q), last - first), -torch.inf, device=device).scatter_reduce_(
            1, owner.expand(len(q), -1), similarity, "amax")
        grid = torch.zeros((n_queries * longest, last - first), device=device).index_copy_(0, slots, best_match)
        best.add(grid.view(n_queries, longest, -1).sum(dim=1) / lengths[:, None], first)
        first = last
    return best.ranking()
