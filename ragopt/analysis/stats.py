"""Statistics for comparing retrieval pipelines on their per-question scores.

The values are per-question scores (e.g. nDCG@10 of each question), questions along axis 0, and any
further axes are columns (pipelines, metrics, ...). Every function refuses empty input, NaN or
infinite scores and mismatched lengths with a ValueError that says what to change.

- `bootstrap_ci`: the mean of each column and its seeded percentile bootstrap interval. The same
  resamples of the questions serve every column, so a column's interval depends only on its own
  values, `n_resamples` and `seed` (not on the other columns); the results have the shape
  `values.shape[1:]` (0-d arrays for a 1-D input). A column with one question or one value
  throughout gets the interval [mean, mean].
- `paired_test` / `paired_tests`: mean(a - b) of two pipelines scored on the same questions, the
  bootstrap interval of that mean difference (`bootstrap_ci(a - b)` with the same seed) and the
  two-sided paired permutation (sign-flip) p-value of "mean(a - b) == 0". With 2**n <= n_resamples
  the p-value is exact (all 2**n sign patterns), otherwise a Monte-Carlo estimate of it with
  n_resamples patterns, counted as scipy.stats.permutation_test counts ((hits + 1) / (n_resamples + 1),
  twice the smaller tail, at most 1), except that means equal up to the rounding of a sum of n
  differences count as ties. When a and b agree on every question the p-value is exactly 1.0 and the
  interval [0, 0].
- `holm`: Holm-Bonferroni adjusted p-values, for deciding which of many comparisons are significant.

Why not scipy.stats.bootstrap and permutation_test (bench/bench_stats.py, 2-core CPU): bootstrap
gathers a columns x resamples x questions array, 30 to 44 s for a study's intervals (200 trials x 28
metric@k on autorag-ko's five question subsets), and permutation_test takes one comparison a call,
about 14 s for 300; here a matrix product per block of distinct columns gives the same intervals
(scipy.stats.bootstrap draws the same resamples for the same seed) in about 2 s and the 300
comparisons in 0.1 to 0.2 s. tests/test_stats.py checks both against scipy.

Memory: the resample counts and sign patterns are drawn a block of resamples at a time (_DRAW_BYTES), each
block used and dropped, so that a test on 10,000 questions with 10,000 resamples holds 48 MiB instead of
1.5 GiB. Intervals of more columns than one block of _BLOCK_BYTES of resampled means read the counts once per
block of columns, so they keep them, one byte a count (95 MiB at 10,000 x 10,000). numpy's generators continue one
stream from call to call, so the blocks hold the numbers one draw of all resamples gives, and the results are
those of the whole matrices bit for bit (tests/test_stats.py) wherever the BLAS rounds a product's element
whatever rows come with it: OpenBLAS does with 1, 2 or 4 threads at 10,000 resamples; with 3, 8 or 16 it rounds
the last rows of each thread's share otherwise, and a few resampled means may differ in their last bit (as they
already differ between those thread counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

_BLOCK_BYTES = 32 * 2**20  # resampled means held at once, per block of columns
_DRAW_BYTES = 16 * 2**20  # resample counts or sign patterns (float64) held at once, per block of resamples
_ROW_ALIGN = 64  # resamples per block are a multiple of this, so that blocks split BLAS's row tiles nowhere


@dataclass(frozen=True)
class PairedComparison:
    """Pipeline a against pipeline b on the same questions: the mean difference, its interval, its p-value."""

    difference: float
    low: float
    high: float
    p_value: float


def bootstrap_ci(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means, lows, highs) over axis 0: each column's mean and its seeded percentile bootstrap interval."""
    x = _scores(values, "values")
    _check_resampling(confidence, n_resamples)
    shape = x.shape[1:]
    x = x.reshape(len(x), -1)
    constant = np.all(x == x[0], axis=0)
    means = np.where(constant, x[0], x.mean(axis=0))
    lows, highs = means.copy(), means.copy()
    if not constant.all():
        distinct, inverse = np.unique(x[:, ~constant], axis=1, return_inverse=True)  # equal columns: one interval
        bounds = np.empty((2, distinct.shape[1]))
        step = max(1, _BLOCK_BYTES // (8 * n_resamples))
        counts = _drawn(_counts, len(x), _row_blocks(len(x), n_resamples), seed)
        if distinct.shape[1] > step:  # read once per block of columns: kept, in the smallest integer type (uint8)
            counts = [(rows, block.astype(np.min_scalar_type(block.max()))) for rows, block in counts]
        for start in range(0, distinct.shape[1], step):
            columns = distinct[:, start:start + step].T
            resampled = np.empty((columns.shape[0], n_resamples))
            for rows, block in counts:
                resampled[:, rows] = columns @ block.astype(np.float64).T / len(x)
            bounds[:, start:start + step] = _percentiles(resampled, confidence)
        lows[~constant], highs[~constant] = bounds[:, inverse.ravel()]
    return means.reshape(shape), lows.reshape(shape), highs.reshape(shape)


def paired_test(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95,
                n_resamples: int = 10_000, seed: int = 0) -> PairedComparison:
    """Compare two pipelines' per-question scores: mean(a - b), its bootstrap interval and sign-flip p-value."""
    a, b = _scores(a, "a"), _scores(b, "b")
    _check_column(a, "a")
    _check_column(b, "b")
    _check_same_questions(a, b, "a", "b")
    return paired_tests(a, b[:, None], confidence=confidence, n_resamples=n_resamples, seed=seed)[0]


def paired_tests(best: ArrayLike, others: ArrayLike, *, confidence: float = 0.95,
                 n_resamples: int = 10_000, seed: int = 0) -> list[PairedComparison]:
    """`paired_test(best, others[:, j])` for every column j at once, sharing the resamples (column order is moot)."""
    best, others = _scores(best, "best"), _scores(others, "others")
    _check_column(best, "best")
    _check_same_questions(best, others, "best", "others")
    _check_resampling(confidence, n_resamples)
    differences = best[:, None] - others.reshape(len(others), -1)
    means, lows, highs = bootstrap_ci(differences, confidence=confidence, n_resamples=n_resamples, seed=seed)
    p_values = _sign_flip_p_values(differences, n_resamples, seed)
    return [PairedComparison(float(d), float(lo), float(hi), float(p))
            for d, lo, hi, p in zip(means, lows, highs, p_values)]


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values in the input order, so that `holm(p) <= alpha` bounds the family-wise error."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a flat sequence of p-values, got an array of shape {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        bad = p[np.isnan(p) | (p < 0) | (p > 1)][0]
        raise ValueError(f"p_values must lie in [0, 1], got {bad}: drop the comparisons that have no p-value")
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def _scores(values: ArrayLike, name: str) -> np.ndarray:
    """Per-question scores as float64 with questions along axis 0; refuses what no statistic can use."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError(f"{name} must hold one score per question (questions along axis 0), got the scalar {x}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}): pass at least one question's score for each column")
    if not np.isfinite(x).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"{name} holds {np.count_nonzero(~np.isfinite(x))} NaN or infinite scores (the first at index "
                         f"{where}): score an unanswered question as 0, or drop that question for every pipeline")
    return x


def _check_column(x: np.ndarray, name: str) -> None:
    """Refuse anything but one score per question."""
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-question scores, got shape {x.shape}")


def _check_same_questions(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Refuse pairs that cannot be the same questions."""
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} questions and {name_b} has {len(b)}: pass both pipelines' scores on "
                         "the same questions, in the same order")


def _check_resampling(confidence: float, n_resamples: int) -> None:
    """Refuse a confidence level or a resample count that cannot give an interval."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer (e.g. 10_000), got {n_resamples}")


def _row_blocks(n: int, n_resamples: int) -> list[slice]:
    """Blocks of resamples of about _DRAW_BYTES of float64 draws of n questions each, in multiples of _ROW_ALIGN; a
    last block under half that size joins the one before, so that no block's product is a matrix-vector one or
    small enough for BLAS to take another code path, with other roundings, than for the whole matrix."""
    size = max(_ROW_ALIGN, _DRAW_BYTES // (8 * n) // _ROW_ALIGN * _ROW_ALIGN)
    starts = list(range(0, n_resamples, size))
    if len(starts) > 1 and n_resamples - starts[-1] < size // 2:
        starts.pop()
    return [slice(start, stop) for start, stop in zip(starts, starts[1:] + [n_resamples])]


def _drawn(draw: Callable[[np.random.Generator, int, int], np.ndarray], n: int, blocks: list[slice], seed: int
           ) -> Iterator[tuple[slice, np.ndarray]]:
    """Each block's rows of the (n_resamples x n) matrix `draw` makes from default_rng(seed), drawn one block at a
    time: the numbers of one draw of all rows, as numpy's generators continue the same stream from call to call."""
    rng = np.random.default_rng(seed)
    for rows in blocks:
        yield rows, draw(rng, rows.stop - rows.start, n)


def _counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """(rows x n) times each question is drawn in each of `rows` resamples, from rng.integers(0, n, (rows, n))."""
    drawn = rng.integers(0, n, (rows, n))
    drawn += n * np.arange(rows)[:, None]
    return np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n)


def _signs(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """(rows x n) random signs, +1 or -1, from rng.integers(0, 2, (rows, n))."""
    return 1.0 - 2.0 * rng.integers(0, 2, (rows, n))


def _percentiles(resampled: np.ndarray, confidence: float) -> np.ndarray:
    """(2 x rows) each row's (1 - confidence) / 2 and (1 + confidence) / 2 quantiles, interpolated linearly as
    numpy.quantile does, from a partial sort in place (numpy.quantile takes about three times as long)."""
    last = resampled.shape[1] - 1
    alpha = (1 - confidence) / 2
    at = last * np.array([alpha, 1 - alpha])
    below = np.floor(at).astype(np.intp)
    above = np.minimum(below + 1, last)
    resampled.partition(np.unique(np.concatenate([below, above])), axis=1)
    return (resampled[:, below] + (at - below) * (resampled[:, above] - resampled[:, below])).T


def _sign_flip_p_values(differences: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Two-sided sign-flip p-value of each column's mean being 0: exact when 2**n <= n_resamples, else Monte Carlo.
    Each block of sign patterns is read once for every block of columns, counting the patterns on each side."""
    n = len(differences)
    p_values = np.ones(differences.shape[1])
    tested = np.flatnonzero(np.any(differences != 0, axis=0))
    if not tested.size:
        return p_values
    if 2**n <= n_resamples:
        n_signs, extra = 2**n, 0
        signs = [(slice(0, n_signs), 1.0 - 2.0 * ((np.arange(n_signs)[:, None] >> np.arange(n)) & 1))]
    else:
        n_signs, extra = n_resamples, 1
        signs = _drawn(_signs, n, _row_blocks(n, n_resamples), seed)
    step = max(1, _BLOCK_BYTES // (8 * n_signs))
    groups = [tested[start:start + step] for start in range(0, tested.size, step)]
    columns = [differences[:, group] for group in groups]
    observed = [d.mean(axis=0) for d in columns]
    # sign patterns whose means are equal in exact arithmetic may differ by rounding (at most ~n * eps * mean|d|)
    ties = [4 * n * np.finfo(np.float64).eps * np.abs(d).mean(axis=0) for d in columns]
    lows, highs = np.zeros(differences.shape[1], dtype=np.int64), np.zeros(differences.shape[1], dtype=np.int64)
    for _, block in signs:
        for group, d, mean, tie in zip(groups, columns, observed, ties):
            null = block @ d / n
            lows[group] += np.count_nonzero(null <= mean + tie, axis=0)
            highs[group] += np.count_nonzero(null >= mean - tie, axis=0)
    low = (lows[tested] + extra) / (n_signs + extra)
    high = (highs[tested] + extra) / (n_signs + extra)
    p_values[tested] = np.minimum(1.0, 2 * np.minimum(low, high))
    return p_values
