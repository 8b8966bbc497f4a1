"""Exact search by scanning the corpus in blocks on the device (torch): a running top-k whose
ties are broken by corpus row, whatever order torch.topk leaves them in, and running statistics
of every score, so no block's score matrix outlives its scan."""

from __future__ import annotations

import numpy as np
import torch

from ragopt.ranking import Ranking, ScoreStats, padded

CORPUS_CHUNK = 65_536


class RunningTopK:
    """The best `depth` (score, corpus row) pairs per query over a corpus scanned in blocks of
    consecutive rows, best first and ties by row (so a shallow scan is a prefix of a deep one),
    and the count, mean, spread, lowest and highest of every score seen."""

    def __init__(self, n_queries: int, depth: int, device: str) -> None:
        self.depth, self.device = depth, device
        self.scores = torch.full((n_queries, 0), -torch.inf, device=device)
        self.ids = torch.zeros((n_queries, 0), dtype=torch.long, device=device)
        self.count = 0
        wide = {"dtype": torch.float64, "device": device}
        self.mean, self.m2 = torch.zeros(n_queries, **wide), torch.zeros(n_queries, **wide)
        self.low, self.high = torch.full((n_queries,), torch.inf, **wide), torch.full((n_queries,), -torch.inf, **wide)

    def add(self, block_scores: torch.Tensor, first_row: int) -> None:
        """Merge the scores of rows first_row, first_row + 1, ... (one column each)."""
        self._add_stats(block_scores)
        n_queries, width = block_scores.shape
        rows = torch.arange(first_row, first_row + width, device=self.device)
        # kept ranks come first, sorted by score then row, and all their rows precede the block's:
        # in column order, equal scores are in row order, and a stable sort keeps them so
        scores = torch.cat([self.scores, block_scores.float()], dim=1)
        ids = torch.cat([self.ids, rows.expand(n_queries, -1)], dim=1)
        take = min(self.depth, scores.shape[1])
        if take == 0 or n_queries == 0:
            return
        kth = torch.topk(scores, take, dim=1).values[:, -1:]
        above, tied = scores > kth, scores == kth
        needed = take - above.sum(dim=1, keepdim=True)
        chosen = above | (tied & (torch.cumsum(tied.int(), dim=1) <= needed))
        columns = chosen.nonzero()[:, 1].view(n_queries, take)
        picked, picked_ids = scores.gather(1, columns), ids.gather(1, columns)
        order = torch.sort(picked, dim=1, descending=True, stable=True).indices
        self.scores, self.ids = picked.gather(1, order), picked_ids.gather(1, order)

    def _add_stats(self, block: torch.Tensor) -> None:
        """Chan et al.'s pairwise update of the running mean and sum of squared deviations."""
        if block.shape[1] == 0:
            return
        values = block.double()
        n, m = self.count, block.shape[1]
        block_mean = values.mean(dim=1)
        block_m2 = ((values - block_mean[:, None]) ** 2).sum(dim=1)
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (m / (n + m))
        self.m2 = self.m2 + block_m2 + delta ** 2 * (n * m / (n + m))
        self.low = torch.minimum(self.low, values.min(dim=1).values)
        self.high = torch.maximum(self.high, values.max(dim=1).values)
        self.count = n + m

    def ranking(self) -> Ranking:
        n_queries = len(self.mean)
        count = np.full(n_queries, self.count, dtype=np.int64)
        if self.count:
            moments = [t.cpu().numpy() for t in (self.low, self.high, self.mean, (self.m2 / self.count).sqrt())]
        else:
            moments = [np.full(n_queries, np.nan)] * 4
        return padded(self.ids.cpu().numpy(), self.scores.cpu().numpy(), self.depth, ScoreStats(count, *moments))


def exact_search(queries: np.ndarray, corpus: np.ndarray, depth: int, device: str) -> Ranking:
    """Top-`depth` inner products, scanning the corpus in chunks and keeping a running top-k."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    best = RunningTopK(len(queries), depth, device)
    for start in range(0, len(corpus), CORPUS_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(corpus[start:start + CORPUS_CHUNK], dtype=np.float32))
        best.add(q @ chunk.to(device, non_blocking=True).T, start)
    return best.ranking()
