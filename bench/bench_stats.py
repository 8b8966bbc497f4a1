"""Statistics: ragopt.analysis.stats against scipy.stats on a per-domain report's workload. Prints seconds, the
ratio and how far the two results are apart; asserts nothing.

    python bench/bench_stats.py

Intervals: 200 trials x 28 metric@k columns (hit, mrr, ndcg, recall, precision, f1, map at k = 1, 3,
5, 10) on autorag-ko's subsets (all 114 questions; law 37, public 29, commerce 26, finance 22), 10,000
resamples, scipy.stats.bootstrap(method="percentile", vectorized) on each subset's whole array.
Comparisons: the best of 301 pipelines against the 300 others on 114 questions, scipy's
permutation_test (samples, vectorized) and bootstrap per comparison against one paired_tests call.
The scores are synthetic (the rank of each question's one relevant passage drawn per trial), with
the ties and zeros of real ones.
Big: one interval and one paired test on 10,000 questions with 10,000 resamples, seconds and peak
memory (tracemalloc, a second run) of ragopt.analysis.stats as it was before it resampled in blocks (read
from git, commit UNBLOCKED) and as it is, and whether their numbers are the same bit for bit.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_info

from ragopt.analysis import stats as blocked
from ragopt.analysis.stats import bootstrap_ci, paired_tests

SUBSETS = {"all": 114, "law": 37, "public": 29, "commerce": 26, "finance": 22}
KS = (1, 3, 5, 10)
RESAMPLES = 10_000
SCIPY_BATCH = 20  # resamples per scipy batch: 10 and 20 were fastest of 10 to 500 here (560 columns), memory small
UNBLOCKED = "901fa73"  # the last commit whose ragopt/analysis/stats.py drew the whole (resamples x questions) matrices
BIG = 10_000  # questions of the big case


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


def unblocked_stats() -> ModuleType:
    """ragopt/analysis/stats.py of commit UNBLOCKED, imported from a temporary file."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "show", f"{UNBLOCKED}:ragopt/stats.py"], cwd=root, capture_output=True,
                          text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ragopt_stats_unblocked.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location("ragopt_stats_unblocked", path)
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
        spec.loader.exec_module(module)
    return module


def measured(function, *args, **kwargs):
    """(seconds, peak traced bytes, result): timed alone, then run again under tracemalloc."""
    seconds, result = timed(function, *args, **kwargs)
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return seconds, peak, result


def bench_big() -> None:
    blas = next((lib for lib in threadpool_info() if "numpy" in lib["filepath"]), {})  # the BLAS of numpy's @
    print(f"\nbig: {BIG} questions, {RESAMPLES} resamples; before ({UNBLOCKED}) and after resampling in blocks "
          f"(BLAS {blas.get('internal_api', '?')} {blas.get('version', '')}, {blas.get('num_threads', '?')} threads)")
    ndcg10 = scores(BIG, 2, seed=11).reshape(BIG, 2, 28)[:, :, 7 * KS.index(10) + 2]
    a, b = ndcg10[:, 0], ndcg10[:, 1]
    unblocked = unblocked_stats()
    print(f"{'call':<28}{'before s':>10}{'after s':>10}{'ratio':>8}{'before MiB':>12}{'after MiB':>11}{'ratio':>8}"
          f"{'same numbers':>14}")
    for name, call in (("bootstrap_ci (one column)", "bootstrap_ci"), ("paired_test", "paired_test")):
        args = (a,) if call == "bootstrap_ci" else (a, b)
        old_s, old_peak, old = measured(getattr(unblocked, call), *args, n_resamples=RESAMPLES, seed=0)
        new_s, new_peak, new = measured(getattr(blocked, call), *args, n_resamples=RESAMPLES, seed=0)
        same = np.array_equal(np.array(old, dtype=float), np.array(new, dtype=float)) if call == "bootstrap_ci" \
            else old.__dict__ == new.__dict__
        print(f"{name:<28}{old_s:>10.2f}{new_s:>10.2f}{old_s / new_s:>8.2f}{old_peak / 2**20:>12.0f}"
              f"{new_peak / 2**20:>11.0f}{old_peak / new_peak:>8.1f}{str(same):>14}")


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}, "
          f"scipy {__import__('scipy').__version__}")
    bench_intervals()
    bench_comparisons()
    bench_big()


if __name__ == "__main__":
    main()
