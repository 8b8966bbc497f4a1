"""Do the comparison's verdicts hold up? Runs configs/autorag-ko-domains.yaml (30% of each domain
held out) with two study seeds, that is two different holdout splits, and for each study computes
the choice x domain matrix by retriever and by tokenizer with two bootstrap seeds. It prints
the winner's selection and held-out scores, and for every (choice, domain) whether it is
significantly worse than the domain's best, then how often those verdicts agree across
bootstrap seeds and across splits.

    python bench/bench_compare.py [--trials 200] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from ragopt.analysis.compare import Settings, StudyResults, choice_matrix
from ragopt.study import optimize

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "autorag-ko-domains.yaml"


def run(seed: int, trials: int, cache: Path, folder: Path) -> Path:
    """The study with `seed` (its holdout split and TPE path), data paths made absolute."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for key in ("qa", "corpus"):
        config["data"][key] = str((CONFIG.parent / config["data"][key]).resolve())
    config["study"].update(seed=seed, n_trials=trials)
    config["cache_dir"] = str(cache)
    path = folder / f"seed{seed}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    start = time.perf_counter()
    outcome = optimize(path, folder / f"seed{seed}", progress=False)
    print(f"study seed {seed}: {outcome.n_trials} trials in {time.perf_counter() - start:.1f} s; winner "
          f"{outcome.best_spec.describe()}; selection {outcome.best_value:.4f}, held out {outcome.holdout_value:.4f}, "
          f"5-fold selection {outcome.folds_value:.4f}")
    return outcome.output


def worse(output: Path, by: str, seed: int) -> dict[tuple[str, str], bool]:
    """(choice, domain) -> significantly worse than the domain's best."""
    results = StudyResults.load(output)
    table = choice_matrix(results, "objective", by, Settings(0.95, 10_000, seed))  # type: ignore[arg-type]
    return {(r.choice, r.domain): not (r.best or r.tied) for r in table.itertuples()}


def agreement(a: dict[tuple[str, str], bool], b: dict[tuple[str, str], bool]) -> str:
    shared = a.keys() & b.keys()
    same = sum(a[k] == b[k] for k in shared)
    significant = sum(a[k] for k in shared)
    kept = sum(a[k] and b[k] for k in shared)
    return f"{same}/{len(shared)} verdicts agree; {kept} of {significant} 'significantly worse' kept"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--cache", type=Path, default=ROOT / "configs" / "autorag-ko-domains-output" / "cache")
    args = parser.parse_args()
    folder = ROOT / "bench" / "out" / "compare"
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {seed: run(seed, args.trials, args.cache, folder) for seed in (7, 8)}
    for by in ("retriever", "tokenizer"):
        verdicts = {(study, boot): worse(outputs[study], by, boot) for study in outputs for boot in (0, 1)}
        for study in outputs:
            worse_ones = sorted(f"{c}@{d}" for (c, d), v in verdicts[(study, 0)].items() if v)
            print(f"by {by}, study seed {study}: significantly worse than the domain's best: {worse_ones}")
            print(f"  bootstrap seed 0 vs 1: {agreement(verdicts[(study, 0)], verdicts[(study, 1)])}")
        print(f"  split of seed 7 vs seed 8 (bootstrap seed 0): {agreement(verdicts[(7, 0)], verdicts[(8, 0)])}")


if __name__ == "__main__":
    main()
