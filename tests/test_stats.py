"""ragopt.stats: intervals and p-values against scipy.stats and hand computations, known significant and
null pairs, seeds, and refusals of unusable input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from ragopt.stats import PairedComparison, bootstrap_ci, holm, paired_test, paired_tests


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
