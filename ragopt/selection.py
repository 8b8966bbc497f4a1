"""How a winner is chosen among finished trials, and what that choice is worth on questions it
never saw: the best trial (under a latency budget), the quality-vs-latency Pareto front, and the
k-fold estimate of the selection procedure. Plain numpy: arrays of trials, in trial order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ragopt.errors import StudyError
from ragopt.splits import HOLDOUT

TIE_DECIMALS = 9
"""Means are compared to this many decimals, so that the order in which a mean was summed (or
float32 storage) never decides between pipelines that tie."""


def feasible(seconds: np.ndarray, budget: float | None) -> np.ndarray:
    """The trials within the latency budget (all of them without one; none whose time was not
    measured with one)."""
    return np.ones(len(seconds), dtype=bool) if budget is None else np.nan_to_num(seconds, nan=np.inf) <= budget


def ranked(positions: np.ndarray, values: np.ndarray, seconds: np.ndarray | None = None) -> np.ndarray:
    """`positions` best first: by value, then the earlier trial; with `seconds` (a study that
    optimizes latency too), the faster of equal values first. Values equal up to rounding in the
    last bits are equal, however they were summed. Measured times decide only where asked: they
    vary from run to run, and the winner of a quality-only study must not."""
    quality = np.round(values[positions], TIE_DECIMALS)
    speed = np.zeros(len(positions)) if seconds is None else np.nan_to_num(seconds[positions], nan=0.0)
    return positions[np.lexsort((positions, speed, -quality))]


def best_index(values: np.ndarray, seconds: np.ndarray, budget: float | None = None, by_speed: bool = False) -> int:
    """The trial with the highest value within the budget; among equals the earlier or, with
    `by_speed` (latency: pareto), the faster, which is the Pareto front's best."""
    allowed = np.flatnonzero(feasible(seconds, budget))
    if not len(allowed):
        raise StudyError(f"no pipeline answers within latency_budget {budget} s per question; the fastest took "
                         f"{np.nanmin(seconds):.4g} s. Raise the budget or add faster pipelines to the space.")
    return int(ranked(allowed, values, seconds if by_speed else None)[0])


def pareto_front(values: np.ndarray, seconds: np.ndarray, budget: float | None = None) -> np.ndarray:
    """True for the trials no other trial beats on both quality (higher) and seconds per question
    (lower) while matching the other; among trials with equal value and time, the earliest. Trials
    whose time was not measured (NaN) are on no front."""
    allowed = np.flatnonzero(feasible(seconds, budget) & np.isfinite(seconds))
    values = np.round(values, TIE_DECIMALS)
    order = allowed[np.lexsort((allowed, -values[allowed], seconds[allowed]))]
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
                    budget: float | None = None, by_speed: bool = False) -> FoldSelection:
    """Select on k-1 folds, score on the k-th, for every k. `objective` is (questions x trials);
    `folds` gives each question's fold (HOLDOUT rows take no part)."""
    chosen, held_out, sizes = [], [], []
    for fold in sorted(set(folds[folds != HOLDOUT].tolist())):
        train, test = (folds != HOLDOUT) & (folds != fold), folds == fold
        pick = best_index(objective[train].mean(axis=0), seconds, budget, by_speed)
        chosen.append(pick)
        held_out.append(float(objective[test, pick].mean()))
        sizes.append(int(test.sum()))
    return FoldSelection(chosen, held_out, sizes)
