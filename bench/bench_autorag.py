"""ragopt against AutoRAG on the same BM25 search space: Kiwi and whitespace tokenizers x
top_k 1, 3, 5, 10 on ../shared/data/autorag-ko, both timed in one run, cold caches.

AutoRAG is installed into its own virtual environment (never a dependency of ragopt):

    python bench/bench_autorag.py                          # creates bench/.autorag-venv on first use
    python bench/bench_autorag.py --autorag-venv /path/to/venv

Prints wall times, the ratio, and each configuration's metrics from both tools. To separate
"different rankings" from "different metric definitions", AutoRAG's own retrieved lists are
also scored with ragopt's trec_eval-exact metrics.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ragopt import load_dataset, optimize
from ragopt.data.qa import nfc
from ragopt.scoring.metrics import at_k, relevance

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent.parent / "shared" / "data" / "autorag-ko"
TOP_K = [1, 3, 5, 10]
METRICS = ["f1", "recall", "precision", "map", "mrr", "ndcg"]
AUTORAG_CONFIG = {
    "node_lines": [{
        "node_line_name": "retrieve_node_line",
        "nodes": [{
            "node_type": "lexical_retrieval",
            "strategy": {"metrics": [f"retrieval_{m}" for m in METRICS]},
            "top_k": TOP_K,
            "modules": [{"module_type": "bm25", "bm25_tokenizer": ["ko_kiwi", "space"]}],
        }],
    }],
}
# rank_bm25's BM25Okapi, which AutoRAG uses: Robertson's idf, k1 1.5, b 0.75.
RAGOPT_CONFIG = {
    "data": {"qa": str(DATA / "qa.parquet"), "corpus": str(DATA / "corpus.parquet")},
    "retrievers": [{"name": "bm25", "type": "bm25", "tokenizer": ["kiwi", "whitespace"],
                    "method": "robertson", "k1": 1.5, "b": 0.75}],
    "top_k": TOP_K,
    "metrics": METRICS,
    "optimize": "f1",
    "study": {"sampler": "grid"},
}
TOKENIZER_NAMES = {"ko_kiwi": "kiwi", "space": "whitespace"}


def autorag_python(venv: Path) -> Path:
    """The venv's python, creating the venv with AutoRAG 0.3.27 (and the CPU torch) if needed."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "AutoRAG==0.3.27", "kiwipiepy"], check=True)
    return python


def run_autorag(python: Path, work: Path) -> tuple[float, Path]:
    config = work / "autorag.yaml"
    config.write_text(yaml.safe_dump(AUTORAG_CONFIG))
    project = work / "autorag-project"
    command = [str(python), "-m", "autorag.cli", "evaluate", "--config", str(config),
               "--qa_data_path", str(DATA / "qa.parquet"), "--corpus_data_path", str(DATA / "corpus.parquet"),
               "--project_dir", str(project)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, project / "0" / "retrieve_node_line" / "lexical_retrieval"


def run_ragopt(work: Path) -> tuple[float, pd.DataFrame]:
    config = work / "ragopt.yaml"
    config.write_text(yaml.safe_dump(RAGOPT_CONFIG))
    start = time.perf_counter()
    optimize(config, output=work / "ragopt", progress=False)
    return time.perf_counter() - start, pd.read_csv(work / "ragopt" / "trials.csv")


def compare(node: Path, ragopt_trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (tokenizer, k): AutoRAG's metric, ragopt's, and AutoRAG's lists re-scored by ragopt."""
    qa, corpus = load_dataset(DATA / "qa.parquet", DATA / "corpus.parquet")
    row_of = corpus.index_of()
    summary = pd.read_csv(node / "summary.csv")
    rows = []
    for _, entry in summary.iterrows():
        params = entry["module_params"]
        params = ast.literal_eval(params) if isinstance(params, str) else params
        tokenizer, k = TOKENIZER_NAMES[params["bm25_tokenizer"]], int(params["top_k"])
        retrieved = pd.read_parquet(node / entry["filename"])["retrieved_ids"]
        ranking = np.array([[row_of[nfc(i)] for i in ids] for ids in retrieved])
        rescored = at_k(*relevance(ranking, qa.groups, len(corpus)), [k], tuple(METRICS))
        ours = ragopt_trials[(ragopt_trials["param.bm25.tokenizer"] == tokenizer)
                             & (ragopt_trials["param.top_k"] == k)].iloc[0]
        for metric in METRICS:
            rows.append({"tokenizer": tokenizer, "k": k, "metric": metric,
                         "autorag": float(entry[f"retrieval_{metric}"]),
                         "autorag_lists_trec_eval": float(np.mean(rescored[f"{metric}@{k}"])),
                         "ragopt": float(ours[f"{metric}@{k}"])})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autorag-venv", type=Path, default=ROOT / ".autorag-venv")
    args = parser.parse_args()
    python = autorag_python(args.autorag_venv)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        ragopt_seconds, trials = run_ragopt(work)
        print(f"ragopt: {ragopt_seconds:.1f} s for {len(trials)} configurations", flush=True)
        autorag_seconds, node = run_autorag(python, work)
        print(f"AutoRAG 0.3.27: {autorag_seconds:.1f} s ({autorag_seconds / 60:.1f} min)")
        print(f"ragopt is {autorag_seconds / ragopt_seconds:.0f}x faster")
        table = compare(node, trials)
    pd.set_option("display.width", 160)
    print(table.pivot_table(index=["tokenizer", "k"], columns="metric",
                            values=["autorag", "autorag_lists_trec_eval", "ragopt"]).round(4).to_string())
    differing = table[(table["autorag"] - table["autorag_lists_trec_eval"]).abs() > 1e-9]
    print(f"\nmetric definitions differ (same lists, AutoRAG vs trec_eval) in {len(differing)} of {len(table)} cells:")
    print(differing.groupby("metric").size().to_string())


if __name__ == "__main__":
    main()
