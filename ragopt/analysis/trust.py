"""Can a generated QA set stand in for real questions? Whether scoring pipelines on generated
questions orders them as real questions do, and what picking the generated set's winner costs on
the real questions. Plain numpy and scipy.

Inputs are per-question scores, questions along axis 0 and one column per trial, on the real
questions (`real`) and on the generated ones (`generated`), the trials in the same order.

- `agreement`: Kendall's tau-b between the trials' mean real and mean generated scores, over
  distinct pipelines (trials with the same values on every question of both sets count once), and
  its seeded bootstrap interval: each resample draws the real questions and the generated
  questions with replacement, independently, the same draw for every pipeline; the interval is
  tau +- z * the standard deviation of the resampled taus (Efron's standard interval), clipped to
  [-1, 1]. Not the percentile interval: a resample's means carry the question noise twice (the
  sample's and the resample's), which attenuates their tau, so the resampled taus lie below the
  observed one and their percentiles miss it (bench/bench_trust.py). For the same reason the
  observed tau is itself nearer 0 than the tau of unlimited questions would be.
- `resampled_taus`: the taus of those resamples, for other intervals (bench/bench_trust.py). Each is
  one scipy.stats.kendalltau call (about 0.3 ms at 50 or 200 pipelines on 2 cores; an all-pairs numpy
  version over a block of resamples took 0.08 ms a resample at 50 pipelines but 2.3 ms at 200).
- `winner_gap`: the real-question score of the real set's winner and of the generated set's, each
  with its bootstrap interval, and their paired difference (ragopt.analysis.stats.paired_test).

Example:
    found = agreement(real, generated, seed=0)
    print(f"tau {found.tau:.2f} [{found.low:.2f}, {found.high:.2f}] over {found.pipelines} pipelines")
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import kendalltau

from ragopt.analysis.selection import TIE_DECIMALS, fingerprint
from ragopt.analysis.stats import PairedComparison, bootstrap_ci, paired_test

_DRAW_BYTES = 16 * 2**20
"""Resample counts (int64) held at once: resamples are drawn a block at a time."""


@dataclass(frozen=True)
class Agreement:
    """How alike two sets of questions rank pipelines: Kendall's tau-b of their mean scores, its
    interval, and how many distinct pipelines were ranked."""

    tau: float
    low: float
    high: float
    pipelines: int


@dataclass(frozen=True)
class Score:
    """A mean score and its bootstrap interval."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class WinnerGap:
    """The real set's winner and the generated set's winner, both scored on the real questions,
    and the generated winner's score minus the real winner's, paired over the questions."""

    real: Score
    generated: Score
    difference: PairedComparison


def kendall_tau(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall's tau-b of two score vectors (ties in either count as scipy.stats.kendalltau counts
    them); NaN for fewer than two items or a constant vector, which have no order to compare."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be two score vectors of one length; got shapes {x.shape} and {y.shape}")
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(kendalltau(x, y, variant="b").statistic)


def distinct_pipelines(real: ArrayLike, generated: ArrayLike) -> np.ndarray:
    """The position of the first trial of each distinct pipeline: trials with the same values on
    every real and every generated question (to TIE_DECIMALS decimals) are one pipeline."""
    real, generated = _matrices(real, generated)
    seen: dict[bytes, int] = {}
    for j in range(real.shape[1]):
        seen.setdefault(fingerprint(np.concatenate([real[:, j], generated[:, j]])), j)
    return np.array(sorted(seen.values()), dtype=np.intp)


def agreement(real: ArrayLike, generated: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 10_000,
              seed: int = 0) -> Agreement:
    """Kendall's tau-b between the distinct pipelines' mean real and mean generated scores, with
    its seeded bootstrap interval from resampling both sets' questions (see the module's text);
    NaN (and a NaN interval) with fewer than two distinct pipelines or no order on one side."""
    real, generated = _matrices(real, generated)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer (e.g. 10_000), got {n_resamples}")
    kept = distinct_pipelines(real, generated)
    real, generated = real[:, kept], generated[:, kept]
    tau = kendall_tau(_rounded(real.mean(axis=0)), _rounded(generated.mean(axis=0)))
    if len(kept) < 2:
        return Agreement(tau, float("nan"), float("nan"), len(kept))
    taus = resampled_taus(real, generated, n_resamples=n_resamples, seed=seed)
    if np.isnan(tau) or np.count_nonzero(~np.isnan(taus)) < 2:
        return Agreement(tau, float("nan"), float("nan"), len(kept))
    spread = NormalDist().inv_cdf((1 + confidence) / 2) * float(np.nanstd(taus, ddof=1))
    return Agreement(tau, max(-1.0, tau - spread), min(1.0, tau + spread), len(kept))


def resampled_taus(real: ArrayLike, generated: ArrayLike, *, n_resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """Kendall's tau-b of the column means in each of `n_resamples` seeded resamples that draw the
    real and the generated questions with replacement (one draw of each set serves every column;
    drawn a block of resamples at a time: the real block, then the generated one)."""
    real, generated = _matrices(real, generated)
    rng = np.random.default_rng(seed)
    step = max(1, _DRAW_BYTES // (8 * max(len(real), len(generated))))
    taus = np.empty(n_resamples)
    for start in range(0, n_resamples, step):
        rows = min(step, n_resamples - start)
        real_means, generated_means = _resampled_means(real, rows, rng), _resampled_means(generated, rows, rng)
        taus[start:start + rows] = [kendall_tau(_rounded(r), _rounded(g)) for r, g in zip(real_means, generated_means)]
    return taus


def winner_gap(real: ArrayLike, real_winner: int, generated_winner: int, *, confidence: float = 0.95,
               n_resamples: int = 10_000, seed: int = 0) -> WinnerGap:
    """Both winners' scores on the real questions (columns `real_winner` and `generated_winner` of
    `real`) with their intervals, and the paired difference, generated winner minus real winner."""
    real = _scores(real, "real")
    pair = real[:, [real_winner, generated_winner]]
    means, lows, highs = bootstrap_ci(pair, confidence=confidence, n_resamples=n_resamples, seed=seed)
    scores = [Score(float(m), float(lo), float(hi)) for m, lo, hi in zip(means, lows, highs)]
    test = paired_test(pair[:, 1], pair[:, 0], confidence=confidence, n_resamples=n_resamples, seed=seed)
    return WinnerGap(scores[0], scores[1], test)


def _resampled_means(values: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(rows x columns) column means over `rows` resamples of the questions (axis 0) with replacement."""
    n = len(values)
    drawn = rng.integers(0, n, (rows, n)) + n * np.arange(rows)[:, None]
    counts = np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n)
    return counts @ values / n


def _rounded(means: np.ndarray) -> np.ndarray:
    """Means equal up to the rounding of their sums are equal (a tie), as the study's winner rule has them."""
    return np.round(means, TIE_DECIMALS) + 0.0


def _scores(values: ArrayLike, name: str) -> np.ndarray:
    """A (questions x trials) matrix of finite scores."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or not x.size:
        raise ValueError(f"{name} must be a (questions x trials) matrix of scores; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite scores: score an unanswered question as 0")
    return x


def _matrices(real: ArrayLike, generated: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both sets' score matrices, checked to hold the same trials."""
    real, generated = _scores(real, "real"), _scores(generated, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real has {real.shape[1]} trials and generated {generated.shape[1]}: give both sets' scores "
                         "of the same trials, in the same order")
    return real, generated
