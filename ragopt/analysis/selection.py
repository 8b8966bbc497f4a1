"""How a winner is chosen among finished trials, and what that choice is worth on questions it
never saw: the best trial (under a latency budget), the tie rule among equal qualities, the
quality-vs-latency Pareto front, pipelines that score alike, and the k-fold estimate of the
selection procedure. Plain numpy: arrays of trials, in trial order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ragopt.errors import StudyError
from ragopt.analysis.splits import HOLDOUT

if TYPE_CHECKING:
    from ragopt.stages.spec import PipelineSpec

TIE_DECIMALS = 9
"""Means are compared to this many decimals, so that the order in which a mean was summed (or
float32 storage) never decides between pipelines that tie."""


TIE_RULE = "the fewest models, no reranker, the smallest depths and top_k, then the earliest trial"
"""The tie rule (`cost`) in words, for the pages that say how a winner was picked among equals."""


def cost(spec: "PipelineSpec") -> tuple[int, ...]:
    """The tie rule: of pipelines of exactly equal quality, the one with the smallest cost wins.
    The cost compares, in this order: the models a query needs (BM25 none, a dense retriever or
    a BM25 + dense hybrid one, a hybrid of two dense models two, a reranker's model one more);
    no reranker before one; fewer retrievers fused; a smaller reranker depth; a smaller hybrid
    candidate depth; a smaller top_k. Equal costs go to the earlier trial. Read from the spec
    alone, never from measured times, which vary from run to run: the same trials always pick
    the same winner."""
    retriever, reranker = spec.retriever, spec.reranker
    models = set(retriever.models()) | ({reranker.model} if reranker is not None else set())
    return (len(models), int(reranker is not None), len(retriever.components()) or 1,
            reranker.depth if reranker is not None else 0, getattr(retriever, "depth", 0), spec.top_k)


def cost_ranks(specs: Sequence["PipelineSpec"]) -> np.ndarray:
    """Each spec's place in the tie rule's order (0 the cheapest; equal costs share a place):
    trials.csv's `cost_rank`, from which the tables apply the rule without the specs."""
    costs = [cost(s) for s in specs]
    place = {c: i for i, c in enumerate(sorted(set(costs)))}
    return np.array([place[c] for c in costs], dtype=np.int64)


def fingerprint(values: np.ndarray) -> bytes:
    """A trial's values (any shape) as a short key, equal when the values are equal to
    TIE_DECIMALS decimals: what makes two pipelines score alike."""
    rounded = np.round(np.asarray(values, dtype=np.float64), TIE_DECIMALS) + 0.0  # + 0.0: -0.0 is 0.0
    return hashlib.blake2b(np.ascontiguousarray(rounded).tobytes(), digest_size=16).digest()


def tie_groups(order: np.ndarray, key: Callable[[int], bytes]) -> list[np.ndarray]:
    """`order` (trial positions, best first) in groups of equal `key(position)`, e.g. the
    fingerprint of their per-question values: each group in `order`'s order, led by its best
    member, the groups in the order of their leaders."""
    groups: dict[bytes, list[int]] = {}
    for position in order:
        groups.setdefault(key(int(position)), []).append(int(position))
    return [np.array(group) for group in groups.values()]


def feasible(seconds: np.ndarray, budget: float | None) -> np.ndarray:
    """The trials within the latency budget (all of them without one; none whose time was not
    measured with one)."""
    return np.ones(len(seconds), dtype=bool) if budget is None else np.nan_to_num(seconds, nan=np.inf) <= budget


def ranked(positions: np.ndarray, values: np.ndarray, seconds: np.ndarray | None = None,
           cost: np.ndarray | None = None) -> np.ndarray:
    """`positions` best first: by value, then by the tie rule's `cost` rank (see `cost`), then
    the earlier trial; with `seconds` (a study that optimizes latency too), the faster of equal
    values before the cheaper. Values equal up to rounding in the last bits are equal, however
    they were summed. Measured times decide only where asked: they vary from run to run, and the
    winner of a quality-only study must not."""
    quality = np.round(values[positions], TIE_DECIMALS)
    speed = np.zeros(len(positions)) if seconds is None else np.nan_to_num(seconds[positions], nan=0.0)
    cheap = np.zeros(len(positions)) if cost is None else cost[positions]
    return positions[np.lexsort((positions, cheap, speed, -quality))]


def best_index(values: np.ndarray, seconds: np.ndarray, budget: float | None = None, by_speed: bool = False,
               cost: np.ndarray | None = None) -> int:
    """The trial with the highest value within the budget; among equals the cheapest by the tie
    rule (`cost` ranks), then the earlier or, with `by_speed` (latency: pareto), first the faster,
    which is the Pareto front's best."""
    allowed = np.flatnonzero(feasible(seconds, budget))
    if not len(allowed):
        raise StudyError(f"no pipeline answers within latency_budget {budget} s per question; the fastest took "
                         f"{np.nanmin(seconds):.4g} s. Raise the budget or add faster pipelines to the space.")
    return int(ranked(allowed, values, seconds if by_speed else None, cost)[0])


def pareto_front(values: np.ndarray, seconds: np.ndarray, budget: float | None = None,
                 cost: np.ndarray | None = None) -> np.ndarray:
    """True for the trials no other trial beats on both quality (higher) and seconds per question
    (lower) while matching the other; among trials with equal value and time, the cheapest by
    the tie rule (`cost` ranks), then the earliest. Trials whose time was not measured (NaN) are
    on no front."""
    allowed = np.flatnonzero(feasible(seconds, budget) & np.isfinite(seconds))
    values = np.round(values, TIE_DECIMALS)
    cheap = np.zeros(len(values)) if cost is None else cost
    order = allowed[np.lexsort((allowed, cheap[allowed], -values[allowed], seconds[allowed]))]
    front = np.zeros(len(values), dtype=bool)
    best = -np.inf
    for i in order:
        if values[i] > best:
            front[i], best = True, values[i]
    return front


@dataclass(frozen=True)
class FoldSelection:
    """The k-fold estimate of choosing the best trial: in each fold, the trial best on the other
    folds' questions and its mean on this fold's; `score` is their question-weighted mean."""

    chosen: list[int]
    held_out: list[float]
    sizes: list[int]

    @property
    def score(self) -> float:
        return float(np.average(self.held_out, weights=self.sizes))


def kfold_selection(objective: np.ndarray, folds: np.ndarray, seconds: np.ndarray,
                    budget: float | None = None, by_speed: bool = False,
                    cost: np.ndarray | None = None) -> FoldSelection:
    """Select on k-1 folds, score on the k-th, for every k, as the winner is selected (the same
    tie rule). `objective` is (questions x trials); `folds` gives each question's fold (HOLDOUT
    rows take no part)."""
    chosen, held_out, sizes = [], [], []
    for fold in sorted(set(folds[folds != HOLDOUT].tolist())):
        train, test = (folds != HOLDOUT) & (folds != fold), folds == fold
        pick = best_index(objective[train].mean(axis=0), seconds, budget, by_speed, cost)
        chosen.append(pick)
        held_out.append(float(objective[test, pick].mean()))
        sizes.append(int(test.sum()))
    return FoldSelection(chosen, held_out, sizes)
