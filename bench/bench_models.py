"""Model throughput and the end-to-end model study, with random-weight stand-ins built from the
real architectures' configs (throughput does not depend on the weights; no hub is reachable).

    python bench/bench_models.py throughput                 # CPU here: a few passages per model
    python bench/bench_models.py throughput --passages 720 --pairs 5700    # the whole set (GPU)
    python bench/bench_models.py study                      # 5 dense x 3 rerankers on autorag-ko
    python bench/bench_models.py study --pruners none       # without pruning only
    python bench/bench_models.py throughput --work DIR      # keep the stand-ins (bench_encode_variants.py)

The study prints where its time goes: each stage's calls, items and seconds (its own, its callees'
excluded), reranker scoring and query encoding split by whether a latency probe asked for them.
Every run prints the machine and the library versions it ran with, and --json writes them too.

Stand-ins: XLM-RoBERTa large (bge-m3, BGE-m3-ko, KoE5, snowflake-arctic-embed-l-v2.0-ko,
multilingual-e5-large-instruct and the three rerankers all share it, 568M parameters) and MiniLM-L6
(BERT, 384 wide). The tokenizer is a Unigram / WordPiece model trained on the autorag-ko corpus,
so token counts are close to, not equal to, the real models'. Model FLOPs are counted as
2 x non-embedding parameters x tokens (attention's own products excluded), and compared with the
GPU's dense bf16 peak (H100 SXM: 989 TFLOP/s) and with a measured bf16 matrix product.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from ragopt import load_dataset, optimize
from ragopt.data.qa import Corpus
from ragopt.stages.engine import Engine
from ragopt.stages.models import Locator, pick_device
from ragopt.provenance import library_versions
from ragopt.stages.rerankers.cross_encoder import CrossEncoderScorer, CrossEncoderSpec
from ragopt.stages.rerankers.flag_reranker import FlagRerankerSpec, FlagScorer
from ragopt.stages.retrievers.bge_m3 import BGEM3Spec
from ragopt.stages.retrievers.dense import DenseSpec

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "autorag-ko"
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}
ARCHITECTURES = {
    "xlmr-large": {"family": "xlmr", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "intermediate_size": 4096, "vocab_size": 250002, "max_position_embeddings": 8194},
    "minilm-l6": {"family": "bert", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                  "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512},
    # two small layers: bench/device_check.sh --cpu-smoke runs every code path with it on a CPU
    "tiny-xlmr": {"family": "xlmr", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 128, "vocab_size": 250002, "max_position_embeddings": 514},
}
REAL_ARCHITECTURES = ["xlmr-large", "minilm-l6"]


def environment(device: str) -> dict[str, Any]:
    """The machine and the library versions a figure was measured with."""
    info: dict[str, Any] = {"device": device, "cpu": _cpu_name(), "cores": os.cpu_count(),
                            "torch_cuda": torch.version.cuda, "libraries": library_versions()}
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, multiprocessors=properties.multi_processor_count,
                    gpu_memory_gib=round(properties.total_memory / 2 ** 30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    cudnn=torch.backends.cudnn.version())
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def train_tokenizer(family: str, texts: list[str]):
    """A fast tokenizer of the family's kind trained on the benchmark texts."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast, XLMRobertaTokenizerFast

    if family == "bert":
        raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        raw.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
        raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        raw.train_from_iterator(texts, trainers.WordPieceTrainer(
            vocab_size=30000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
        return BertTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                 sep_token="[SEP]", mask_token="[MASK]", strip_accents=False)
    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=16000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>"))
    return XLMRobertaTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def build_model(folder: Path, arch: str, head: str, tokenizer, seed: int) -> int:
    """Save a random-weight model (head: encoder or reranker) in bf16; returns its non-embedding parameters."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaModel,
    )

    settings = dict(ARCHITECTURES[arch])
    family = settings.pop("family")
    config_class, encoder, reranker = ((XLMRobertaConfig, XLMRobertaModel, XLMRobertaForSequenceClassification)
                                       if family == "xlmr" else (BertConfig, BertModel, BertForSequenceClassification))
    torch.manual_seed(seed)
    config = config_class(**settings, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = (encoder if head == "encoder" else reranker)(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def measured_peak(device: str) -> float:
    """bf16 FLOP/s of a large matrix product on this device (CUDA only)."""
    if not device.startswith("cuda"):
        return float("nan")
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192 ** 3 / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(args: argparse.Namespace, work: Path) -> list[dict]:
    device = pick_device(args.device)
    qa, corpus = load_dataset(args.data / "qa.parquet", args.data / "corpus.parquet")
    passages = corpus.contents[:args.passages]
    queries = qa.queries.texts
    pairs = [(queries[i % len(queries)], corpus.contents[(37 * i) % len(corpus)]) for i in range(args.pairs)]
    peak = next((v for k, v in PEAK_BF16.items() if device.startswith("cuda") and k in torch.cuda.get_device_name()),
                float("nan"))
    matmul = measured_peak(device)
    rows = []
    for arch in args.archs:
        tokenizer = train_tokenizer(ARCHITECTURES[arch]["family"], corpus.contents + queries)
        limit = min(512 if arch == "minilm-l6" else 8192, ARCHITECTURES[arch]["max_position_embeddings"] - 2)
        folder = work / f"{arch}-encoder"
        params = build_model(folder, arch, "encoder", tokenizer, seed=0)
        spec = DenseSpec(model=str(folder), max_length=limit, batch_size=args.batch_size)
        sample = Corpus([str(i) for i in range(len(passages))], passages)
        engine = Engine(Corpus(["w"], [passages[0]]), device=device)
        retriever = engine.retriever(spec)  # load, warm up
        _sync(device)
        start = time.perf_counter()
        retriever.embed(sample.contents, sample.key, "passage")
        _sync(device)
        seconds = time.perf_counter() - start
        tokens = sum(len(ids) for ids in tokenizer(passages, truncation=True, max_length=limit)["input_ids"])
        rows.append(_row(arch, "encode passages", device, len(passages), tokens, seconds, params, peak, matmul))
        if ARCHITECTURES[arch]["family"] == "xlmr":  # BGE-M3's layout: the same encoder plus its two heads
            width = ARCHITECTURES[arch]["hidden_size"]
            torch.save(torch.nn.Linear(width, width).state_dict(), folder / "colbert_linear.pt")
            torch.save(torch.nn.Linear(width, 1).state_dict(), folder / "sparse_linear.pt")
            m3 = engine.retriever(BGEM3Spec(model=str(folder), batch_size=args.batch_size))
            _sync(device)
            start = time.perf_counter()
            m3.encode(sample.contents, sample.key, "passage")
            _sync(device)
            rows.append(_row(arch, "encode passages (BGE-M3, 3 outputs)", device, len(passages), tokens,
                             time.perf_counter() - start, params, peak, matmul))

        folder = work / f"{arch}-reranker"
        params = build_model(folder, arch, "reranker", tokenizer, seed=1)
        max_length = 512
        if ARCHITECTURES[arch]["family"] == "xlmr":
            spec = FlagRerankerSpec(model=str(folder), max_length=max_length, batch_size=args.batch_size)
            scorer = FlagScorer(spec, Locator()(spec.model), device, engine.pool, "bench-flag")
            kind = "rerank (FlagReranker)"
        else:
            spec = CrossEncoderSpec(model=str(folder), max_length=max_length, batch_size=args.batch_size)
            scorer = CrossEncoderScorer(spec, Locator()(spec.model), device, engine.pool, "bench-ce")
            kind = "rerank (CrossEncoder)"
        scorer.score(pairs[:8])
        _sync(device)
        start = time.perf_counter()
        scorer.score(pairs)
        _sync(device)
        seconds = time.perf_counter() - start
        tokens = sum(len(ids) for ids in tokenizer([q for q, _ in pairs], [p for _, p in pairs], truncation=True,
                                                   max_length=max_length)["input_ids"])
        rows.append(_row(arch, kind, device, len(pairs), tokens, seconds, params, peak, matmul))
    return rows


def _row(arch: str, task: str, device: str, items: int, tokens: int, seconds: float, params: int, peak: float,
         matmul: float) -> dict:
    flops = 2 * params * tokens / seconds
    return {"model": arch, "task": task, "device": device, "items": items, "tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds),
            "TFLOP_per_s": round(flops / 1e12, 2),
            "of_bf16_peak": round(flops / peak, 3) if peak == peak else None,
            "of_measured_matmul": round(flops / matmul, 3) if matmul == matmul else None}


class Stages:
    """Seconds per stage of a run: methods and functions wrapped in place, each call timed, its
    callees' time taken out of its own (so the stages add up to the time they cover). A stage
    reached inside a latency probe is reported under its own name plus ' [latency probe]'."""

    PROBE = "latency probes (Engine._timed)"

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.items: dict[str, int] = {}
        self._stack: list[list[Any]] = []
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, label: str, count: Callable[..., int] | None = None) -> None:
        """Time owner.name under `label`; count(*args, **kwargs) gives the items of a call."""
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            inside_probe = any(frame[0] == self.PROBE for frame in self._stack)
            key = f"{label} [latency probe]" if inside_probe and label != self.PROBE else label
            frame = [label, 0.0]
            self._stack.append(frame)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._stack.pop()
                if self._stack:
                    self._stack[-1][1] += elapsed
                self.seconds[key] = self.seconds.get(key, 0.0) + elapsed - frame[1]
                self.calls[key] = self.calls.get(key, 0) + 1
                if count is not None:
                    self.items[key] = self.items.get(key, 0) + count(*args, **kwargs)

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def table(self, total: float) -> pd.DataFrame:
        rows = [{"stage": key, "calls": self.calls[key], "items": self.items.get(key, ""),
                 "seconds": round(seconds, 2), "share": f"{seconds / total:.1%}"}
                for key, seconds in sorted(self.seconds.items(), key=lambda item: -item[1])]
        rest = total - sum(self.seconds.values())
        rows.append({"stage": "everything else (Optuna, scoring trials, fusion, Python)", "calls": "", "items": "",
                     "seconds": round(rest, 2), "share": f"{rest / total:.1%}"})
        return pd.DataFrame(rows)


@contextlib.contextmanager
def study_stages() -> Iterator[Stages]:
    """The stages of optimize() worth telling apart, timed while the block runs."""
    from ragopt.scoring import evaluation
    from ragopt.study import run
    from ragopt.stages.models import Locator
    from ragopt.stages.rerankers._base import PairScorer
    from ragopt.stages.rerankers.cross_encoder import CrossEncoderScorer
    from ragopt.stages.rerankers.flag_reranker import FlagScorer
    from ragopt.stages.retrievers import bm25, dense

    stages = Stages()
    stages.wrap(Locator, "_locate", "model folder content hashes")
    stages.wrap(dense, "load_sentence_transformer", "load encoders")
    stages.wrap(FlagScorer, "__init__", "load FlagRerankers")
    stages.wrap(CrossEncoderScorer, "__init__", "load CrossEncoders")
    stages.wrap(dense.DenseRetriever, "embed", "dense encoding (texts)", lambda self, texts, *a, **k: len(texts))
    stages.wrap(dense.DenseRetriever, "search", "dense search (exact scan)")
    stages.wrap(bm25.BM25Retriever, "__init__", "BM25 index")
    stages.wrap(bm25.BM25Retriever, "search", "BM25 search")
    stages.wrap(PairScorer, "score", "reranker scoring (pairs)", lambda self, pairs: len(pairs))
    stages.wrap(Engine, "rerank", "reranking (cache look-ups, ordering)")
    stages.wrap(Engine, "_timed", Stages.PROBE)
    stages.wrap(evaluation.Evaluator, "evaluate", "trial evaluation (metrics)")
    stages.wrap(evaluation.Evaluator, "evaluate_pruned", "trial evaluation (metrics, pruned)")
    stages.wrap(run, "warm_up", "warm-up (index and encode every retriever)")
    stages.wrap(run, "write_outputs", "writing the outputs (tables, statistics, best.yaml)")
    try:
        yield stages
    finally:
        stages.restore()


def study(args: argparse.Namespace, work: Path) -> list[dict]:
    """The autorag-ko space with 5 dense models and 3 rerankers, without and with pruning."""
    qa, corpus = load_dataset(args.data / "qa.parquet", args.data / "corpus.parquet")
    arch = args.study_arch
    tokenizer = train_tokenizer(ARCHITECTURES[arch]["family"], corpus.contents + qa.queries.texts)
    max_length = ARCHITECTURES[arch]["max_position_embeddings"] - 2
    dense_names = ["bge-m3", "BGE-m3-ko", "KoE5", "snowflake-arctic-embed-l-v2.0-ko", "multilingual-e5-large-instruct"]
    reranker_names = ["bge-reranker-v2-m3", "bge-reranker-v2-m3-ko", "ko-reranker"]
    build_start = time.perf_counter()
    for i, name in enumerate(dense_names):
        build_model(work / name, arch, "encoder", tokenizer, seed=10 + i)
    for i, name in enumerate(reranker_names):
        build_model(work / name, arch, "reranker", tokenizer, seed=20 + i)
    print(f"built 8 stand-ins in {time.perf_counter() - build_start:.0f} s (not counted)", flush=True)
    prefixes = {"KoE5": ("query: ", "passage: "), "multilingual-e5-large-instruct": (
        "Instruct: Given a question, retrieve passages that answer it\nQuery: ", "")}
    retrievers = [{"name": "bm25", "type": "bm25", "tokenizer": ["whitespace", {"type": "char_ngram", "n": 2}],
                   "k1": {"low": 0.5, "high": 2.0}, "b": {"low": 0.3, "high": 1.0}}]
    for name in dense_names:
        query_prefix, passage_prefix = prefixes.get(name, ("", ""))
        retrievers.append({"name": name, "type": "dense", "model": str(work / name), "max_length": max_length,
                           "query_prefix": query_prefix, "passage_prefix": passage_prefix, "batch_size": 32})
    rerankers = ["none"] + [
        {"name": name, "type": "cross_encoder" if name == "ko-reranker" else "flag_reranker", "model": str(work / name),
         "max_length": min(512, max_length), "depth": [10, 20, 50], "batch_size": 64} for name in reranker_names]
    rows = []
    for pruner in args.pruners:
        config = {"data": {"qa": str(args.data / "qa.parquet"), "corpus": str(args.data / "corpus.parquet")},
                  "retrievers": retrievers, "rerankers": rerankers, "top_k": [1, 3, 5, 10],
                  "optimize": {"f1": 1.0, "ndcg": 1.0}, "device": args.device,
                  "study": {"sampler": "tpe", "n_trials": args.trials, "seed": 1, "pruner": pruner}}
        path = work / f"study-{pruner}.yaml"
        path.write_text(yaml.safe_dump(config))
        start = time.perf_counter()
        with study_stages() as stages:
            try:
                outcome = optimize(path, output=work / f"out-{pruner}", progress=False)
            finally:  # also when a time limit interrupts it (SIGINT): where the time went so far
                total = time.perf_counter() - start
                table = stages.table(total)
                print(f"pruner {pruner}: {total:.1f} s by stage\n{table.to_string(index=False)}", flush=True)
        trials = pd.read_csv(outcome.output / "trials.csv")
        cached = trials.loc[trials["reused"] | ~trials["pipeline"].str.contains(" > "), "seconds_per_query"] * len(qa)
        rows.append({"pruner": pruner, "trials": args.trials, "completed": outcome.n_trials,
                     "pruned": outcome.n_pruned, "total_s": round(total, 1),
                     "median_cached_trial_ms": round(1000 * float(np.median(cached)), 2),
                     "best": round(outcome.best_value, 4), "best_pipeline": outcome.best_spec.describe(),
                     "stages": table.to_dict(orient="records")})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "stages"}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "study"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--archs", nargs="+", choices=list(ARCHITECTURES), default=REAL_ARCHITECTURES)
    parser.add_argument("--passages", type=int, default=16, help="passages to encode (720: the whole corpus)")
    parser.add_argument("--pairs", type=int, default=32, help="query-passage pairs to rerank (5700 = 114 x 50)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--study-arch", choices=list(ARCHITECTURES), default="xlmr-large")
    parser.add_argument("--pruners", nargs="+", choices=["none", "wilcoxon"], default=["none", "wilcoxon"])
    parser.add_argument("--work", type=Path, help="build the stand-ins here and keep them (default: a temp folder)")
    parser.add_argument("--data", type=lambda p: Path(p).resolve(), default=DATA,
                        help="folder with AutoRAG's qa.parquet and corpus.parquet")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    setting = environment(pick_device(args.device))
    print(json.dumps(setting), flush=True)
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        rows = (throughput if args.what == "throughput" else study)(args, work)
    table = pd.DataFrame(rows).drop(columns="stages", errors="ignore")
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps({"environment": setting, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
