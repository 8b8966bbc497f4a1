"""ragopt.analysis.stats: intervals and p-values against scipy.stats and hand computations, known significant and
null pairs, seeds, and refusals of unusable input."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
from scipy import stats
from threadpoolctl import threadpool_limits

from ragopt.analysis import stats as ragopt_stats
from ragopt.analysis.stats import PairedComparison, bootstrap_ci, holm, paired_test, paired_tests


def mean(x: np.ndarray, axis: int) -> np.ndarray:
    return x.mean(axis=axis)


def scipy_interval(values: np.ndarray, n_resamples: int, seed: int, confidence: float = 0.95):
    result = stats.bootstrap((values,), mean, axis=0, vectorized=True, method="percentile",
                             confidence_level=confidence, n_resamples=n_resamples, rng=seed)
    return result.confidence_interval.low, result.confidence_interval.high


@pytest.fixture
def columns() -> np.ndarray:
    """100 questions x 3 differently spread columns in [0, 1]: uniform, U-shaped, mostly zeros."""
    rng = np.random.default_rng(42)
    n = 100
    return np.column_stack([rng.random(n), rng.beta(0.5, 0.5, n), np.where(rng.random(n) < 0.7, 0.0, rng.random(n))])


def test_bootstrap_matches_scipy_within_monte_carlo_error(columns):
    # Independent draws (seed 0 here, 1 for scipy), 20000 resamples: over 40 seed pairs the bounds were at most
    # 0.002 apart; a 90% interval instead of a 95% one moves them by 0.008 or more, a wrong axis by far more.
    means, lows, highs = bootstrap_ci(columns, n_resamples=20_000, seed=0)
    low, high = scipy_interval(columns, 20_000, seed=1)
    np.testing.assert_allclose(lows, low, atol=0.004)
    np.testing.assert_allclose(highs, high, atol=0.004)
    np.testing.assert_allclose(means, columns.mean(axis=0), rtol=1e-15)
    _, lows90, highs90 = bootstrap_ci(columns, confidence=0.9, n_resamples=20_000, seed=0)
    assert np.all(lows90 - low > 0.006) and np.all(high - highs90 > 0.006)


def test_bootstrap_draws_the_same_resamples_as_scipy_for_the_same_seed():
    # Both draw rng.integers(0, n, (n_resamples, n)) from default_rng(seed), so the bounds agree to rounding;
    # an off-by-one in the order statistic or the interpolation would move them by a lattice step (0.01 or 1/37).
    rng = np.random.default_rng(3)
    for n in (100, 37):
        values = np.column_stack([rng.integers(0, 2, n), np.round(rng.random(n), 1)]).astype(float)
        for confidence in (0.95, 0.8):
            _, lows, highs = bootstrap_ci(values, confidence=confidence, n_resamples=5_000, seed=11)
            low, high = scipy_interval(values, 5_000, seed=11, confidence=confidence)
            np.testing.assert_allclose(lows, low, rtol=0, atol=1e-12)
            np.testing.assert_allclose(highs, high, rtol=0, atol=1e-12)


def test_bootstrap_shapes_and_column_independence(columns):
    means, lows, highs = bootstrap_ci(columns[:, 0])
    assert means.shape == lows.shape == highs.shape == ()
    assert lows < means < highs
    cube = np.stack([columns, columns[:, ::-1]], axis=2)  # questions x 3 x 2
    means3, lows3, highs3 = bootstrap_ci(cube)
    assert means3.shape == lows3.shape == highs3.shape == (3, 2)
    _, lows2, highs2 = bootstrap_ci(columns)
    # a column's interval is the same whatever columns come with it, and alone
    np.testing.assert_allclose(lows3[:, 0], lows2, rtol=1e-12)
    np.testing.assert_allclose(highs3[::-1, 1], highs2, rtol=1e-12)
    assert lows3[0, 0] == pytest.approx(float(lows), rel=1e-12)


def test_bootstrap_degenerate_columns_get_point_intervals():
    values = np.column_stack([np.full(114, 0.1), np.zeros(114), np.r_[np.ones(57), np.zeros(57)]])
    means, lows, highs = bootstrap_ci(values)
    assert means.tolist()[:2] == lows.tolist()[:2] == highs.tolist()[:2] == [0.1, 0.0]
    assert lows[2] < 0.5 < highs[2]
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    one_question = bootstrap_ci([[0.2, 0.9]])
    assert [x.tolist() for x in one_question] == [[0.2, 0.9]] * 3


def test_known_significant_pair():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.3, 1.0, 50)
    b = a - 0.2 + rng.normal(0, 0.02, 50)
    for seed in (0, 1):
        result = paired_test(a, b, seed=seed)
        # no sign pattern reaches the observed mean: the smallest Monte-Carlo p-value, 2 * 1 / (10000 + 1)
        assert result.p_value == pytest.approx(2 / 10_001)
        assert 0 < result.low < 0.2 < result.high
        assert result.difference == pytest.approx(np.mean(a - b))


def test_known_null_pairs():
    rng = np.random.default_rng(1)
    a = rng.random(50)
    assert paired_test(a, a) == PairedComparison(0.0, 0.0, 0.0, 1.0)
    noisy = paired_test(a, a + rng.normal(0, 0.1, 50))
    assert noisy.p_value > 0.2
    assert noisy.low < 0 < noisy.high


def test_differences_that_cancel_exactly_get_p_one():
    # mean(d) is 0 in exact arithmetic but about 1e-17 in floating point, and every sign pattern's mean is a tie
    # or beyond: p must be 1.0 (scipy 1.17's permutation_test gives 0.92 here: its tolerance is relative to the
    # observed mean, which is ~0).
    d = np.array([0.1, 0.2, -0.3] * 10 + [0.0] * 4)
    assert d.mean() != 0
    result = paired_test(d, np.zeros_like(d))
    assert result.p_value == 1.0
    assert result.low < 0 < result.high


def test_seeds_reproduce_and_differ():
    rng = np.random.default_rng(2)
    a = rng.random(60)
    b = a - 0.03 + rng.normal(0, 0.15, 60)
    first, again, other = paired_test(a, b, seed=0), paired_test(a, b, seed=0), paired_test(a, b, seed=1)
    assert first == again
    assert first.difference == other.difference
    assert (first.low, first.high, first.p_value) != (other.low, other.high, other.p_value)
    assert abs(first.low - other.low) < 0.01 and abs(first.high - other.high) < 0.01
    assert abs(first.p_value - other.p_value) < 0.04


def test_p_values_match_scipy_permutation_test_within_monte_carlo_error():
    # 10000 sign patterns here, 50000 for scipy, independent draws: over 20 seed pairs at most 0.015 apart;
    # a one-sided p-value would be half of these (0.007, 0.07, 0.16).
    rng = np.random.default_rng(7)
    best = rng.random(40)
    others = np.column_stack([best - 0.06 + rng.normal(0, 0.15, 40), best - 0.03 + rng.normal(0, 0.15, 40),
                              best + rng.normal(0, 0.15, 40)])
    ours = [r.p_value for r in paired_tests(best, others, seed=0)]
    theirs = [stats.permutation_test((best - others[:, j],), mean, permutation_type="samples", vectorized=True,
                                     alternative="two-sided", n_resamples=50_000, rng=1).pvalue for j in range(3)]
    np.testing.assert_allclose(ours, theirs, atol=0.04)
    assert 0.003 < ours[0] < 0.02 and 0.03 < ours[1] < 0.12 and 0.1 < ours[2] < 0.3


def test_exact_p_value_by_hand():
    # d = [1, 2, 3], observed mean 2 (sum 6). The 8 sign patterns give sums 6, 4, 2, 0, 0, -2, -4, -6:
    # 1 of 8 is >= 6 and 8 of 8 are <= 6, so p = 2 * min(1/8, 8/8) = 0.25.
    assert paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).p_value == 0.25


def test_exact_p_value_matches_enumeration_and_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.random(10), rng.random(10)  # 2**10 = 1024 <= 10000 patterns: exact
    d = a - b
    sums = [np.dot(signs, d) for signs in itertools.product([1, -1], repeat=10)]
    observed = d.sum()
    enumerated = min(1.0, 2 * min(np.mean(sums <= observed + 1e-12), np.mean(sums >= observed - 1e-12)))
    result = paired_test(a, b, seed=0)
    assert result.p_value == pytest.approx(enumerated, abs=1e-12)
    assert paired_test(a, b, seed=5).p_value == result.p_value  # exact: no seed involved
    scipy_p = stats.permutation_test((d,), mean, permutation_type="samples", vectorized=True,
                                     n_resamples=10_000).pvalue
    assert result.p_value == pytest.approx(scipy_p, abs=1e-12)
    assert 0.05 < result.p_value < 1


def test_paired_tests_equal_one_at_a_time_whatever_the_column_order():
    rng = np.random.default_rng(5)
    best = rng.random(80)
    others = np.clip(best[:, None] - rng.uniform(0, 0.1, 4) + rng.normal(0, 0.2, (80, 4)), 0, 1)
    together = paired_tests(best, others, n_resamples=2_000, seed=3)
    reversed_ = paired_tests(best, others[:, ::-1], n_resamples=2_000, seed=3)[::-1]
    for j, result in enumerate(together):
        alone = paired_test(best, others[:, j], n_resamples=2_000, seed=3)
        for field in ("difference", "low", "high", "p_value"):
            assert getattr(result, field) == pytest.approx(getattr(alone, field), rel=1e-12, abs=1e-15)
            assert getattr(result, field) == pytest.approx(getattr(reversed_[j], field), rel=1e-12, abs=1e-15)
    _, lows, highs = bootstrap_ci(best[:, None] - others, n_resamples=2_000, seed=3)
    np.testing.assert_allclose([r.low for r in together], lows, rtol=1e-12)
    np.testing.assert_allclose([r.high for r in together], highs, rtol=1e-12)


def test_holm_by_hand():
    # sorted: 0.005 (4th), 0.01 (1st), 0.03 (3rd), 0.04 (2nd); times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04;
    # running maximum: 0.02, 0.03, 0.06, 0.06; back in input order: 0.03, 0.06, 0.06, 0.02.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # 0.4 * 2 = 0.8, then max(0.8, 0.6 * 1) = 0.8; 0.5 * 3 = 1.5 is capped at 1 and keeps the rest at 1
    np.testing.assert_allclose(holm([0.6, 0.4]), [0.8, 0.8])
    np.testing.assert_allclose(holm([0.5, 0.9, 0.6]), [1.0, 1.0, 1.0])
    assert holm([0.2]).tolist() == [0.2]
    assert holm([]).shape == (0,)


def test_holm_is_monotone_and_never_below_the_raw_p_values():
    p = np.random.default_rng(6).random(200) ** 3
    adjusted = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)
    assert adjusted[order[0]] == pytest.approx(200 * p[order[0]])


@pytest.mark.parametrize(("call", "message"), [
    (lambda: bootstrap_ci([0.5, np.nan, 0.2]), r"NaN or infinite.*index \(1,\).*drop that question"),
    (lambda: bootstrap_ci(np.empty((0, 3))), "empty.*at least one question"),
    (lambda: bootstrap_ci(0.5), "one score per question"),
    (lambda: bootstrap_ci([0.1, 0.2], confidence=95), "between 0 and 1"),
    (lambda: bootstrap_ci([0.1, 0.2], n_resamples=0), "positive integer"),
    (lambda: paired_test([0.1, 0.2, 0.3], [0.1, 0.2]), "a has 3 questions and b has 2.*same questions"),
    (lambda: paired_test([0.1, np.inf], [0.1, 0.2]), "a holds 1 NaN or infinite"),
    (lambda: paired_test([], []), "a is empty"),
    (lambda: paired_test([[0.1, 0.2]], [[0.1, 0.2]]), "a must be a 1-D array"),
    (lambda: paired_tests([0.1, 0.2], np.zeros((3, 2))), "best has 2 questions and others has 3"),
    (lambda: holm([0.01, np.nan]), r"\[0, 1\], got nan.*drop the comparisons"),
    (lambda: holm([0.01, 1.5]), r"\[0, 1\], got 1.5"),
    (lambda: holm([[0.1, 0.2]]), "flat sequence"),
])
def test_unusable_input_is_refused_with_what_to_change(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def unblocked_bootstrap_bounds(distinct: np.ndarray, confidence: float, n_resamples: int, seed: int) -> np.ndarray:
    """(2 x columns) interval bounds of distinct non-constant columns as ragopt 0.x computed them before resampling
    in blocks: the whole (n_resamples x questions) count matrix at once, one product per block of columns."""
    n = len(distinct)
    rng = np.random.default_rng(seed)
    counts = np.empty((n_resamples, n))
    for start in range(0, n_resamples, 1024):
        rows = min(1024, n_resamples - start)
        drawn = rng.integers(0, n, (rows, n)) + n * np.arange(rows)[:, None]
        counts[start:start + rows] = np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n)
    bounds = np.empty((2, distinct.shape[1]))
    step = max(1, ragopt_stats._BLOCK_BYTES // (8 * n_resamples))
    for start in range(0, distinct.shape[1], step):
        resampled = distinct[:, start:start + step].T @ counts.T / n
        bounds[:, start:start + step] = ragopt_stats._percentiles(resampled, confidence)
    return bounds


def unblocked_p_values(differences: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Sign-flip p-values of columns that are not all 0, as computed before resampling in blocks: every sign
    pattern at once."""
    n = len(differences)
    signs = 1.0 - 2.0 * np.random.default_rng(seed).integers(0, 2, (n_resamples, n))
    p_values = np.empty(differences.shape[1])
    step = max(1, ragopt_stats._BLOCK_BYTES // (8 * n_resamples))
    for start in range(0, differences.shape[1], step):
        d = differences[:, start:start + step]
        observed, null = d.mean(axis=0), signs @ d / n
        tie = 4 * n * np.finfo(np.float64).eps * np.abs(d).mean(axis=0)
        low = (np.count_nonzero(null <= observed + tie, axis=0) + 1) / (n_resamples + 1)
        high = (np.count_nonzero(null >= observed - tie, axis=0) + 1) / (n_resamples + 1)
        p_values[start:start + step] = np.minimum(1.0, 2 * np.minimum(low, high))
    return p_values


@pytest.mark.parametrize(("n", "n_resamples", "n_columns", "block_bytes"), [
    (2000, 3000, 1, 32 * 2**20),  # one column (numpy's matrix-vector product), blocks of 1024 resamples
    (2000, 2112, 7, 32 * 2**20),  # 2 x 1024 + 64 resamples: the last 64 join the block before
    (2000, 4000, 30, 8 * 4000 * 4),  # blocks of 4 columns, each reading the counts kept as bytes
    (40, 5000, 30, 8 * 5000 * 4),  # one block of resamples read by every block of columns
])
def test_blocked_resampling_gives_the_unblocked_numbers_bit_for_bit(monkeypatch, n, n_resamples, n_columns,
                                                                    block_bytes):
    # Each product element is the same sum in the same order (unmerged, the 64 resamples left over took another
    # code path of OpenBLAS's and rounded otherwise). One BLAS thread: OpenBLAS splits a matrix-vector product's
    # rows among its threads and rounds the last rows of a share that is not a multiple of 4 rows otherwise, so at
    # 10,000 resamples none of the resampled means differ from blocks to whole matrix with 1, 2 or 4 threads and
    # a few of them do in their last bit with 3, 8 or 16 (as the whole matrix's differ between those counts).
    monkeypatch.setattr(ragopt_stats, "_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(n_columns)
    best = rng.random(n)
    others = np.clip(best[:, None] - rng.uniform(0, 0.05, n_columns) + rng.normal(0, 0.2, (n, n_columns)), 0, 1)
    differences = best[:, None] - others
    with threadpool_limits(limits=1, user_api="blas"):
        results = paired_tests(best, others, confidence=0.9, n_resamples=n_resamples, seed=5)
        _, lows, highs = bootstrap_ci(others, n_resamples=n_resamples, seed=6)
        distinct, inverse = np.unique(differences, axis=1, return_inverse=True)
        bounds = unblocked_bootstrap_bounds(distinct, 0.9, n_resamples, 5)[:, inverse.ravel()]
        p_values = unblocked_p_values(differences, n_resamples, 5)
        expected_lows, expected_highs = unblocked_bootstrap_bounds(others, 0.95, n_resamples, 6)
    np.testing.assert_array_equal([r.low for r in results], bounds[0])
    np.testing.assert_array_equal([r.high for r in results], bounds[1])
    np.testing.assert_array_equal([r.p_value for r in results], p_values)
    np.testing.assert_array_equal(lows, expected_lows)
    np.testing.assert_array_equal(highs, expected_highs)
    assert len(set(p_values)) > 1 or n_columns == 1


def test_a_paired_test_on_10000_questions_holds_its_resamples_a_block_at_a_time():
    # 2,000 resamples of 10,000 questions: the whole count matrix and the whole sign matrix took 160 MB each
    # (400 MB at the peak); blocks of 16 MiB take under a third of that whatever the number of resamples.
    rng = np.random.default_rng(0)
    a = rng.random(10_000)
    b = a - 0.01 + rng.normal(0, 0.2, 10_000)
    tracemalloc.start()
    try:
        result = paired_test(a, b, n_resamples=2_000, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20
    assert result.low < 0.01 < result.high and result.p_value < 0.01
