"""Documents to the best pipeline, cold: the 32 documents of autorag-ko-docs cut six ways and a
200-trial BM25 study over chunker x tokenizer x k1/b x top_k, in a fresh process with an empty
cache (the issue's target: under 2 minutes on a 2-core machine). Prints where the time goes;
asserts nothing.

    python bench/bench_chunked_study.py                # 200 TPE trials
    python bench/bench_chunked_study.py --trials 50
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT.parent / "shared" / "data" / "autorag-ko-docs"
CONFIG = f"""
data: {{documents: "{DOCS / 'documents'}", qa: "{DOCS / 'qa.jsonl'}", domain_column: domain}}
chunkers:
  - {{name: window, type: token_window, size: [256, 512], overlap: 0.25, tokenizer: characters}}
  - {{name: sentence, type: sentence, size: 512}}
  - {{name: recursive, type: recursive, size: 512}}
  - {{name: page, type: as_given}}
  - {{name: recursive_long, type: recursive, size: 1024}}
retrievers:
  - {{name: bm25, type: bm25, tokenizer: [kiwi, mecab, {{type: char_ngram, n: 2}}], method: [lucene, bm25+],
     k1: {{low: 0.5, high: 2.0}}, b: {{low: 0.3, high: 1.0}}}}
top_k: [1, 3, 5, 10]
metrics: [f1, recall, precision, map, mrr, ndcg, hit, evidence_recall, evidence_precision, evidence_iou]
optimize: {{ndcg: 1.0, evidence_recall@1024t: 1.0}}
study: {{sampler: tpe, n_trials: @TRIALS@, seed: 7, latency: off}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    start = time.perf_counter()
    from ragopt import optimize
    from ragopt.scoring import chunkings
    from ragopt.stages.retrievers import bm25

    timings: dict[str, float] = {"chunking": 0.0, "BM25 index (tokenize chunks)": 0.0}

    def timed(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                timings[label] += time.perf_counter() - t
        setattr(owner, name, wrapper)

    timed(chunkings.Chunkings, "spans_of", "chunking")
    timed(bm25.BM25Retriever, "__init__", "BM25 index (tokenize chunks)")
    imported = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "docs.yaml"
        config.write_text(CONFIG.replace("@TRIALS@", str(args.trials)), encoding="utf-8")
        study_start = time.perf_counter()
        outcome = optimize(config, progress=False)
        study = time.perf_counter() - study_start
        trials = pd.read_csv(Path(folder) / "docs-output" / "trials.csv")
    total = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"imports: {imported:.2f} s")
    print(f"study ({args.trials} TPE trials, cold cache): {study:.2f} s, of which")
    for label, seconds in timings.items():
        print(f"  {label}: {seconds:.2f} s")
    print(f"chunkings used: {trials['param.chunker'].nunique()} chunkers, "
          f"{trials[['param.chunker', 'chunks']].drop_duplicates().shape[0]} chunkings")
    print(f"total (fresh process to outputs written): {total:.2f} s")
    print(f"best: {outcome.best_value:.4f} {outcome.best_spec.describe()}")
    print(f"peak memory (RSS): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
