"""Statistics: ragopt.stats against scipy.stats on a per-domain report's workload. Prints seconds, the
ratio and how far the two results are apart; asserts nothing.

    python bench/bench_stats.py

Intervals: 200 trials x 28 metric@k columns (hit, mrr, ndcg, recall, precision, f1, map at k = 1, 3,
5, 10) on autorag-ko's subsets (all 114 questions; law 37, public 29, commerce 26, finance 22), 10,000
resamples, scipy.stats.bootstrap(method="percentile", vectorized) on each subset's whole array.
Comparisons: the best of 301 pipelines against the 300 others on 114 questions, scipy's
permutation_test (samples, vectorized) and bootstrap per comparison against one paired_tests call.
The scores are synthetic (the rank of each question's one relevant passage drawn per trial), with
the ties and zeros of real ones.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np
from scipy import stats

from ragopt.stats import bootstrap_ci, paired_tests

SUBSETS = {"all": 114, "law": 37, "public": 29, "commerce": 26, "finance": 22}
KS = (1, 3, 5, 10)
RESAMPLES = 10_000
SCIPY_BATCH = 20  # resamples per scipy batch: 10 and 20 were fastest of 10 to 500 here (560 columns), memory small


def metric_columns(rank: np.ndarray) -> np.ndarray:
    """(questions x 28) scores of rankings whose one relevant passage sits at `rank` (0: not retrieved)."""
    columns = []
    for k in KS:
        hit = ((rank >= 1) & (rank <= k)).astype(np.float64)
        rr = np.where(hit > 0, 1 / np.maximum(rank, 1), 0.0)
        ndcg = np.where(hit > 0, 1 / np.log2(np.maximum(rank, 1) + 1), 0.0)
        columns += [hit, rr, ndcg, hit, hit / k, hit * 2 / (k + 1), rr]
    return np.stack(columns, axis=-1)


def scores(n_questions: int, n_trials: int, seed: int) -> np.ndarray:
    """(questions x trials * 28) synthetic per-question scores, rounded through float32 as ragopt stores them."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.3, 0.9, n_trials)
    rank = rng.geometric(quality, (n_questions, n_trials))
    rank[rank > 10] = 0
    return metric_columns(rank).reshape(n_questions, -1).astype(np.float32).astype(np.float64)


def mean(x: np.ndarray, axis: int) -> np.ndarray:
    return x.mean(axis=axis)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def bench_intervals() -> None:
    print(f"\nintervals: 200 trials x 28 columns, {RESAMPLES} resamples")
    print("(ragopt resamples each distinct column once: 'distinct' counts them, constant columns left out)")
    print(f"{'subset':<10}{'questions':>10}{'distinct':>10}{'scipy s':>10}{'ragopt s':>10}{'ratio':>8}"
          f"{'max |bound diff|':>18}")
    total_scipy = total_ours = 0.0
    for seed, (name, n) in enumerate(SUBSETS.items()):
        values = scores(n, 200, seed)
        ours_s, (_, lows, highs) = timed(bootstrap_ci, values, n_resamples=RESAMPLES, seed=0)
        scipy_s, result = timed(stats.bootstrap, (values,), mean, axis=0, vectorized=True, method="percentile",
                                n_resamples=RESAMPLES, batch=SCIPY_BATCH, rng=0)
        ci = result.confidence_interval
        apart = max(np.abs(ci.low - lows).max(), np.abs(ci.high - highs).max())
        total_scipy, total_ours = total_scipy + scipy_s, total_ours + ours_s
        varying = values[:, np.any(values != values[0], axis=0)]
        distinct = np.unique(varying, axis=1).shape[1]
        print(f"{name:<10}{n:>10}{distinct:>10}{scipy_s:>10.2f}{ours_s:>10.2f}{scipy_s / ours_s:>8.1f}{apart:>18.1e}")
    print(f"{'total':<30}{total_scipy:>10.2f}{total_ours:>10.2f}{total_scipy / total_ours:>8.1f}")


def bench_comparisons(n_others: int = 300, n: int = 114) -> None:
    print(f"\ncomparisons: best against {n_others} others, {n} questions, {RESAMPLES} resamples")
    ndcg10 = scores(n, n_others + 1, seed=7).reshape(n, n_others + 1, 28)[:, :, 7 * KS.index(10) + 2]
    best, others = ndcg10[:, 0], ndcg10[:, 1:]
    differences = [best - others[:, j] for j in range(n_others)]
    test_s, tests = timed(lambda: [
        stats.permutation_test((d,), mean, permutation_type="samples", vectorized=True, n_resamples=RESAMPLES,
                               alternative="two-sided", rng=0) for d in differences])
    interval_s, intervals = timed(lambda: [
        stats.bootstrap((d,), mean, vectorized=True, method="percentile", n_resamples=RESAMPLES,
                        rng=0).confidence_interval for d in differences])
    scipy_s = test_s + interval_s
    scipy_p = np.array([t.pvalue for t in tests])
    scipy_low, scipy_high = np.array([i.low for i in intervals]), np.array([i.high for i in intervals])
    ours_s, results = timed(paired_tests, best, others, n_resamples=RESAMPLES, seed=0)
    p = np.array([r.p_value for r in results])
    low, high = np.array([r.low for r in results]), np.array([r.high for r in results])
    print(f"scipy, one comparison at a time: permutation_test {test_s:.2f} s + bootstrap {interval_s:.2f} s")
    print(f"ragopt paired_tests, all at once: {ours_s:.3f} s (ratio {scipy_s / ours_s:.0f})")
    print(f"p-values: max |ragopt - scipy| {np.abs(p - scipy_p).max():.4f} (independent sign draws: their "
          f"difference has a Monte-Carlo sd up to {np.sqrt(2 / RESAMPLES):.4f}); p < 0.05 for "
          f"{np.count_nonzero(p < 0.05)} (ragopt), {np.count_nonzero(scipy_p < 0.05)} (scipy)")
    print(f"intervals: max |bound diff| {np.abs(np.r_[low - scipy_low, high - scipy_high]).max():.1e} (same resamples)")


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}, "
          f"scipy {__import__('scipy').__version__}")
    bench_intervals()
    bench_comparisons()


if __name__ == "__main__":
    main()
