"""Study speed: seconds for the first trial (tokenizing and encoding included), seconds per
trial once models are cached, and peak memory. Prints figures; asserts nothing.

    python bench/bench_study.py                       # configs/autorag-ko.yaml, 200 cached trials
    python bench/bench_study.py configs/quickstart.yaml --trials 80
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from ragopt import optimize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default="configs/autorag-ko.yaml")
    parser.add_argument("--trials", type=int, default=200, help="trials after the first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "out"
        start = time.perf_counter()
        optimize(args.config, output=output, n_trials=1, progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        outcome = optimize(args.config, output=output, n_trials=1 + args.trials, progress=False)
        rest = time.perf_counter() - start
        trials = pd.read_csv(output / "trials.csv")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kinds = trials["param.retriever"].value_counts().to_dict()
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores")
    print(f"config: {args.config}")
    print(f"first trial (cold cache: tokenize, encode, score): {first:.2f} s")
    print(f"{args.trials} further TPE trials (models cached, process restarted): {rest:.2f} s "
          f"= {1000 * rest / args.trials:.1f} ms per trial (Optuna sampling and storage included)")
    print(f"median serving latency (the probe: unseen questions, nothing query-side cached): "
          f"{1000 * trials['seconds_per_query'].median():.3f} ms per question")
    print(f"trials by retriever: {kinds}")
    print(f"best: {outcome.best_value:.4f} {outcome.best_spec.describe()}")
    print(f"peak memory (RSS): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
