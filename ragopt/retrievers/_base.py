"""What every retriever returns: a Ranking, one row of corpus indices and scores per query."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Ranking:
    """ids[q, r] is the corpus row at rank r for query q (-1 where fewer were retrieved);
    scores[q, r] is its score (-inf there). Rows are sorted best first."""

    ids: np.ndarray
    scores: np.ndarray

    @property
    def depth(self) -> int:
        return self.ids.shape[1]

    def head(self, depth: int) -> "Ranking":
        """The first `depth` ranks; a smaller k is a slice, never a new retrieval."""
        return Ranking(self.ids[:, :depth], self.scores[:, :depth])


def top_k(scores: np.ndarray, depth: int) -> Ranking:
    """The `depth` best columns of a (queries x docs) score matrix, best first. Equal scores are
    ordered by corpus row over the whole corpus, so a shallower ranking is always a prefix of a
    deeper one (BM25 gives many equal scores, zero above all)."""
    n_queries, n_docs = scores.shape
    take = min(depth, n_docs)
    kth = -np.partition(-scores, take - 1, axis=1)[:, take - 1:take]
    above = scores > kth
    needed = take - above.sum(axis=1, keepdims=True)
    tied = scores == kth
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= needed))
    ids = np.nonzero(chosen)[1].reshape(n_queries, take)
    picked = np.take_along_axis(scores, ids, axis=1)
    order = np.lexsort((ids, -picked), axis=1)
    return padded(np.take_along_axis(ids, order, axis=1), np.take_along_axis(picked, order, axis=1), depth)


class RunningTopK:
    """The best `depth` (score, corpus row) pairs per query over a corpus scanned in blocks of
    consecutive rows, kept on the device so no block's full score matrix outlives its scan."""

    def __init__(self, n_queries: int, depth: int, device: str) -> None:
        self.depth, self.device = depth, device
        self.scores = torch.full((n_queries, 0), -torch.inf, device=device)
        self.ids = torch.zeros((n_queries, 0), dtype=torch.long, device=device)

    def add(self, block_scores: torch.Tensor, first_row: int) -> None:
        """Merge the scores of rows first_row, first_row + 1, ... (one column each)."""
        rows = torch.arange(first_row, first_row + block_scores.shape[1], device=self.device)
        scores = torch.cat([self.scores, block_scores], dim=1)
        ids = torch.cat([self.ids, rows.expand(len(scores), -1)], dim=1)
        self.scores, pos = torch.topk(scores, min(self.depth, scores.shape[1]), dim=1)
        self.ids = torch.gather(ids, 1, pos)

    def ranking(self) -> Ranking:
        return padded(self.ids.cpu().numpy(), self.scores.cpu().numpy(), self.depth)


def padded(ids: np.ndarray, scores: np.ndarray, depth: int) -> Ranking:
    """A Ranking of exactly `depth` columns, filling missing ranks with -1 / -inf."""
    missing = depth - ids.shape[1]
    if missing > 0:
        ids = np.pad(ids, ((0, 0), (0, missing)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
    return Ranking(ids.astype(np.int64), scores.astype(np.float32))
