"""Why XLM-R large encoding, FlagReranker and BGE-M3 got slower on the H200 (issue 19): the
candidate causes measured side by side in one GPU run, each variant with its seconds and its share
of the bf16 peak, so that one run tells which fix to keep. Random-weight stand-ins from
bench_models.py (the ones `bench_models.py throughput --work DIR` left in DIR, else built anew).

    python bench/bench_encode_variants.py --work DIR --data DIR --json out.json
    python bench/bench_encode_variants.py --arch tiny-xlmr --passages 32 --pairs 64    # the code paths, on a CPU

Encoding (720 autorag-ko passages, bf16):
  as is               ragopt.stages.retrievers.packed.encode as it is (its attention has no mask function)
  with mask function  the code before 2026-12-04: a mask function registered for ragopt's
                      attention, with which transformers >= 5.24 looks for packed sequences in the
                      position ids of every forward (a host sync per pack)
  tokens given        tokenizing done beforehand: the GPU loop alone (with and without the mask function)
  tokenize only       the worker thread's share: packed.encode's fast-tokenizer chunks, the
                      model.preprocess chunks it made until 2026-12-04, and one plain tokenizer call
                      for all texts (the H100 record's figure)
  batch 32 / 128      pack sizes (batch_size x 512 tokens)
  model.encode        sentence-transformers' padded batches
  syncs per call      host waits for the GPU inside one call (torch.cuda.set_sync_debug_mode)
  launch vs GPU       one 32k-token pack: seconds for Python to launch its forward against the GPU's
                      seconds for it (CUDA events): launch-bound when the first is the larger
  kernel time         the GPU's kernels in one call (profiler): the ceiling of this implementation
  fresh process       a whole first call in a process of its own, as is, and
                      as is under the H100 record's transformers 5.23 and sentence-transformers 6.2
                      (when bench/device_check.sh installed them, RAGOPT_RECORD_STACK)
Reranking (114 x 50 pairs, max_length 512, the FlagReranker stand-in):
  as is (fp16)        FlagScorer.score;  bf16: the same model in bf16
  batches prepared    every batch padded before the loop, copied without waiting (the loop alone)
  packed varlen       pairs packed end to end through the varlen attention, the classifier head
                      on each pair's first token: no padding, no per-batch Python
BGE-M3 (the encoder with its sparse and ColBERT heads, fp16):
  FlagEmbedding       BGEM3FlagModel.encode_corpus, three outputs and dense only
  packed 3 outputs    packed encoder, then the dense, sparse and ColBERT outputs computed on the GPU
                      and copied to the host once
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import (  # noqa: E402  (the benchmark's own stand-ins)
    ARCHITECTURES,
    DATA,
    PEAK_BF16,
    build_model,
    environment,
    measured_peak,
    train_tokenizer,
)

from ragopt import load_dataset  # noqa: E402
from ragopt.data.qa import Corpus  # noqa: E402
from ragopt.stages.engine import Engine  # noqa: E402
from ragopt.stages.models import Located, ModelPool, attention_kernels, pick_device  # noqa: E402
from ragopt.stages.retrievers import packed  # noqa: E402
from ragopt.stages.retrievers.dense import DenseSpec, load_sentence_transformer  # noqa: E402

BATCH = 64
RERANK_LENGTH = 512


class Bench:
    """Rows of (group, variant, seconds...) with each variant's share of the peak; a variant that
    fails is recorded with its error and the others go on."""

    def __init__(self, device: str, peak: float, matmul: float) -> None:
        self.device, self.peak, self.matmul = device, peak, matmul
        self.rows: list[dict[str, Any]] = []

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def time(self, run: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
        """Seconds of each run, and the last run's result."""
        times, result = [], None
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            result = run()
            self.sync()
            times.append(time.perf_counter() - start)
        return times, result

    def measure(self, group: str, variant: str, run: Callable[[], Any], repeats: int, flops: float,
                note: str | Callable[[Any], str] = "") -> Any:
        """Time run() `repeats` times and add its row (a callable note is given the last result);
        returns the last result, None when it failed."""
        try:
            times, result = self.time(run, repeats)
            text = note(result) if callable(note) else note
        except Exception as error:  # one broken variant must not cost the others
            traceback.print_exc()
            self.add(group, variant, [], flops, f"FAILED {type(error).__name__}: {error}")
            return None
        self.add(group, variant, times, flops, text)
        return result

    def guarded(self, group: str, variant: str, run: Callable[[], None]) -> None:
        """run() adds its own rows; if it fails, a row says so and the others go on."""
        try:
            run()
        except Exception as error:
            traceback.print_exc()
            self.add(group, variant, [], 0.0, f"FAILED {type(error).__name__}: {error}")

    def add(self, group: str, variant: str, times: list[float], flops: float, note: str = "") -> None:
        seconds = statistics.median(times) if times else float("nan")
        row = {"group": group, "variant": variant, "runs": len(times), "seconds": round(seconds, 4),
               "min_s": round(min(times), 4) if times else None, "max_s": round(max(times), 4) if times else None,
               "of_bf16_peak": _share(flops / seconds, self.peak) if flops else None,
               "of_matmul": _share(flops / seconds, self.matmul) if flops else None, "note": note}
        self.rows.append(row)
        print(json.dumps(row), flush=True)


def _share(rate: float, ceiling: float) -> float | None:
    return round(rate / ceiling, 3) if ceiling == ceiling and rate == rate else None


def non_embedding_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


@contextlib.contextmanager
def with_mask_function() -> Iterator[None]:
    """ragopt's packed attention as before 2026-12-04, with a mask function (returning None) in
    transformers' mask interface, so that mask creation runs its checks for every forward."""
    from transformers.masking_utils import AttentionMaskInterface

    packed._register_attention()
    AttentionMaskInterface.register(packed.ATTENTION, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        AttentionMaskInterface._global_mapping.pop(packed.ATTENTION, None)


@contextlib.contextmanager
def tokens_given(chunks: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[None]:
    """packed.encode reading chunks tokenized beforehand instead of tokenizing on its thread."""
    real = packed._tokenized
    packed._tokenized = lambda model, texts, prompt, cut: iter(chunks)
    try:
        yield
    finally:
        packed._tokenized = real


def sync_sites(run: Callable[[], Any]) -> list[str]:
    """Where run() makes the host wait for the GPU (first frames outside torch), one per wait."""
    sites: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            sites.append(" < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-3:][::-1]))

    torch.cuda.set_sync_debug_mode("warn")  # before recording: setting it warns (torch 2.11), "synchroniz..."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sites


def kernel_seconds(run: Callable[[], Any]) -> tuple[float, list[tuple[str, float]]]:
    """The GPU's kernel time in run() and its largest kernels (profiler, CUDA activity only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    averages = [(a.key, a.self_device_time_total / 1e6) for a in prof.key_averages()]
    return sum(s for _, s in averages), sorted(averages, key=lambda x: -x[1])[:8]


def forward_pack(network: Any, lengths: np.ndarray, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """One packed forward as packed.encode runs it."""
    return packed.forward_pack(network, lengths, ids, packed._position_offset(network))


def packs_of(token_lists: list[list[int]], budget: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    ids = np.fromiter(chain.from_iterable(token_lists), np.int64, int(lengths.sum()))
    return list(packed._packs([(lengths, ids)], budget))


def encoding(bench: Bench, model: Any, passages: list[str], flops: float, args: argparse.Namespace) -> np.ndarray:
    """The encoding variants; returns the as-is embeddings."""
    device, gpu = bench.device, bench.device.startswith("cuda")

    def ragopt(batch: int = BATCH) -> Callable[[], np.ndarray]:
        return lambda: packed.encode(model, passages, None, batch, True).cpu().numpy()

    network = model[0].auto_model
    bench.add("encode", "path taken by DenseRetriever", [], 0.0,
              f"packable: {packed.packable(model, None)}, attention: "
              f"{packed.attention_path(network.device.type, network.dtype)}, {network.dtype}")
    reference = bench.measure("encode", "as is", ragopt(), 3, flops)

    def same(found: np.ndarray) -> str:
        return f"max |diff| to as is {np.abs(found - reference).max():.1e}" if reference is not None else ""

    with with_mask_function():
        bench.measure("encode", "with mask function (before)", ragopt(), 3, flops, same)
    chunks = list(packed._tokenized(model, passages, None, []))
    with tokens_given(chunks):
        bench.measure("encode", "as is, tokens given", ragopt(), 3, flops)
        with with_mask_function():
            bench.measure("encode", "with mask function (before), tokens given", ragopt(), 3, flops)
    bench.measure("encode", "tokenize only (fast tokenizer, as packed does)",
                  lambda: list(packed._tokenized(model, passages, None, [])), 2, 0.0, "CPU, worker thread's work")
    step = packed.TOKENIZE_CHUNK
    bench.measure("encode", "tokenize only (model.preprocess, as packed did before)",
                  lambda: [model.preprocess(passages[i:i + step]) for i in range(0, len(passages), step)], 2, 0.0,
                  "CPU")
    bench.measure("encode", "tokenize only (plain tokenizer call, H100 record)",
                  lambda: model.tokenizer(passages, truncation=True, max_length=model.max_seq_length,
                                          return_attention_mask=False, return_token_type_ids=False), 2, 0.0, "CPU")
    for batch in (32, 128):
        bench.measure("encode", f"as is, batch {batch}", ragopt(batch), 2, flops)
    with attention_kernels(device):
        bench.measure("encode", "model.encode (padded batches)", lambda: model.encode(
            passages, batch_size=BATCH, convert_to_tensor=True, normalize_embeddings=True).float().cpu(), 2, flops)
    if gpu:
        bench.guarded("encode", "launch vs GPU", lambda: launch_against_gpu(bench, model, chunks))
        bench.guarded("encode", "syncs per call", lambda: sync_rows(bench, model, passages))
        bench.guarded("encode", "kernel time", lambda: kernel_row(bench, model, passages, flops))
    for variant in ("as-is", "record-stack"):
        fresh_process(bench, variant, flops, args)
    return reference


def sync_rows(bench: Bench, model: Any, passages: list[str]) -> None:
    """Where one call waits for the GPU, as it is and with the mask function of before."""
    for name, context in (("as is", contextlib.nullcontext), ("with mask function (before)", with_mask_function)):
        with context():
            sites = sync_sites(lambda: packed.encode(model, passages, None, BATCH, True))
        counted = {site: sites.count(site) for site in dict.fromkeys(sites)}
        bench.add("encode", f"syncs per call, {name}", [], 0.0, f"{len(sites)} waits: {counted}")


def kernel_row(bench: Bench, model: Any, passages: list[str], flops: float) -> None:
    """The GPU's kernel time in one call, and its largest kernels."""
    total, top = kernel_seconds(lambda: packed.encode(model, passages, None, BATCH, True).cpu())
    bench.add("encode", "kernel time", [total], flops,
              "; ".join(f"{name[:60]} {seconds * 1000:.1f} ms" for name, seconds in top))


def launch_against_gpu(bench: Bench, model: Any, chunks: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """One full pack: host seconds to launch its forward against the GPU's seconds for it."""
    network = model[0].auto_model
    lengths = np.concatenate([c[0] for c in chunks])
    ids = np.concatenate([c[1] for c in chunks])
    packs = list(packed._packs([(lengths, ids)], BATCH * packed.TOKENS_PER_TEXT))
    _, pack_lengths, pack_ids = packs[1] if len(packs) > 1 else packs[0]
    for name, context in (("as is", contextlib.nullcontext), ("with mask function (before)", with_mask_function)):
        launch, gpu = [], []
        with context(), torch.inference_mode(), packed._attention(network):
            for _ in range(5):
                torch.cuda.synchronize()
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start = time.perf_counter()
                begin.record()
                forward_pack(network, pack_lengths, pack_ids)
                launch.append(time.perf_counter() - start)
                end.record()
                torch.cuda.synchronize()
                gpu.append(begin.elapsed_time(end) / 1000)
        bench.add("encode", f"launch vs GPU, one pack of {int(pack_lengths.sum())} tokens, {name}", launch, 0.0,
                  f"host launch median {statistics.median(launch) * 1000:.1f} ms, "
                  f"GPU {statistics.median(gpu) * 1000:.1f} ms")


def fresh_process(bench: Bench, variant: str, flops: float, args: argparse.Namespace) -> None:
    """One whole encoding call in a process of its own (model loaded, warmed up on one passage)."""
    env = dict(os.environ)
    if variant == "record-stack":
        record = os.environ.get("RAGOPT_RECORD_STACK")
        if not record or not Path(record).is_dir():
            bench.add("encode", "fresh process, transformers 5.23 + sentence-transformers 6.2", [], 0.0,
                      "skipped: RAGOPT_RECORD_STACK names no folder")
            return
        env["PYTHONPATH"] = os.pathsep.join([record, env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--fresh", variant, "--work", str(args.work), "--data", str(args.data),
               "--passages", str(args.passages), "--arch", args.arch, "--device", bench.device]
    label = {"as-is": "fresh process, as is",
             "record-stack": "fresh process, as is, transformers 5.23 + sentence-transformers 6.2"}[variant]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    except subprocess.SubprocessError as error:
        print(getattr(error, "stdout", "") or "", getattr(error, "stderr", "") or "", sep="\n", flush=True)
        bench.add("encode", label, [], 0.0, f"FAILED {type(error).__name__}")
        return
    print(done.stderr[-4000:], flush=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    bench.add("encode", label, [found["seconds"]], flops, f"transformers {found['transformers']}, "
              f"sentence-transformers {found['sentence_transformers']}")


def fresh(args: argparse.Namespace) -> None:
    """The child of fresh_process: what bench_models.py throughput times, printed as JSON."""
    import sentence_transformers
    import transformers

    device = pick_device(args.device)
    _, corpus = load_dataset(args.data / "qa.parquet", args.data / "corpus.parquet")
    passages = corpus.contents[:args.passages]
    folder = args.work / f"{args.arch}-encoder"
    spec = DenseSpec(model=str(folder), max_length=_limit(args.arch), batch_size=BATCH)
    engine = Engine(Corpus(["w"], [passages[0]]), device=device)
    retriever = engine.retriever(spec)
    sample = Corpus([str(i) for i in range(len(passages))], passages)
    bench = Bench(device, float("nan"), float("nan"))
    seconds = bench.time(lambda: retriever.embed(sample.contents, sample.key, "passage"), 1)[0][0]
    print(json.dumps({"seconds": seconds, "transformers": transformers.__version__,
                      "sentence_transformers": sentence_transformers.__version__}))


def _limit(arch: str) -> int:
    return min(8192, ARCHITECTURES[arch]["max_position_embeddings"] - 2)


def reranking(bench: Bench, folder: Path, pairs: list[tuple[str, str]], device: str) -> None:
    from ragopt.stages.rerankers._pairs import PAD_MULTIPLE, pair_features
    from ragopt.stages.rerankers.flag_reranker import FlagRerankerSpec, FlagScorer

    spec = FlagRerankerSpec(model=str(folder), max_length=RERANK_LENGTH, batch_size=BATCH)
    scorer = FlagScorer(spec, Located(str(folder), str(folder), {"sha256": "bench"}), device, ModelPool(), "bench")
    model, tokenizer = scorer.model.model, scorer.model.tokenizer
    features = pair_features(tokenizer, pairs, RERANK_LENGTH, RERANK_LENGTH * 3 // 4)
    tokens = sum(len(ids) for ids in features["input_ids"])
    flops = 2 * non_embedding_parameters(model) * tokens
    scorer.score(pairs[:8])
    reference = bench.measure("rerank", f"FlagScorer as is ({next(model.parameters()).dtype})",
                              lambda: scorer.score(pairs), 1, flops, f"{len(pairs)} pairs, {tokens} tokens")
    if reference is None:
        return

    def agrees(found: np.ndarray) -> str:
        return f"max |diff| to as is {np.abs(found - reference).max():.1e} (scores' std {reference.std():.1e})"

    if device.startswith("cuda"):
        model.to(torch.bfloat16)
        bench.measure("rerank", "FlagScorer, model in bf16", lambda: scorer.score(pairs), 1, flops, agrees)
        model.to(torch.float16)

    order = np.argsort([-len(ids) for ids in features["input_ids"]], kind="stable")
    batches = [tokenizer.pad({k: [v[i] for i in order[s:s + BATCH]] for k, v in features.items()}, padding=True,
                             pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
               for s in range(0, len(order), BATCH)]

    def prepared() -> np.ndarray:
        with torch.inference_mode(), attention_kernels(device):
            logits = [model(**{k: v.to(device, non_blocking=True) for k, v in b.items()}).logits.float()
                      for b in batches]
        scores = torch.empty(len(pairs), device=device)
        scores[torch.from_numpy(order).to(device)] = torch.cat(logits)[:, 0]
        return scores.cpu().numpy()

    bench.measure("rerank", "batches padded beforehand (the loop alone)", prepared, 1, flops, agrees)

    network, head = model.roberta, model.classifier
    packs = packs_of(features["input_ids"], BATCH * packed.TOKENS_PER_TEXT)

    def packed_scores() -> np.ndarray:
        scores = torch.empty(len(pairs), device=device)
        with torch.inference_mode(), packed._attention(network):
            for first, lengths, ids in packs:
                hidden, bounds = forward_pack(network, lengths, ids)
                scores[first:first + len(lengths)] = head(hidden[bounds[:-1].long()][:, None]).float()[:, 0]
        return scores.cpu().numpy()

    for call in ("first call", "second call"):
        bench.measure("rerank", f"packed varlen, classifier on each pair's first token ({call})", packed_scores,
                      1, flops, agrees)


def bge_m3(bench: Bench, folder: Path, passages: list[str], device: str) -> None:
    from ragopt.stages.models import half_on_gpu
    from ragopt.stages.retrievers.bge_m3 import BGEM3Spec, load_bge_m3

    spec = BGEM3Spec(model=str(folder), batch_size=BATCH)
    model = load_bge_m3(Located(str(folder), str(folder), {"sha256": "bench"}), spec, device)
    max_length = spec.max_length

    def library(**outputs: bool) -> Callable[[list[str]], dict]:
        def run(texts: list[str]) -> dict:
            with attention_kernels(device):
                return model.encode_corpus(texts, batch_size=BATCH, max_length=max_length, **outputs)
        return run

    three = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
    library(**three)(passages[:2])  # loads the model onto the device
    m3 = model.model
    tokens = sum(len(ids) for ids in model.tokenizer(passages, truncation=True, max_length=max_length)["input_ids"])
    flops = 2 * non_embedding_parameters(m3.model) * tokens
    expected = bench.measure("bge_m3", "FlagEmbedding, 3 outputs", lambda: library(**three)(passages), 1, flops,
                             f"fp16: {half_on_gpu(spec.use_fp16, device)}")
    bench.measure("bge_m3", "FlagEmbedding, dense only", lambda: library(return_dense=True)(passages), 1, flops)
    token_lists = model.tokenizer(passages, truncation=True, max_length=max_length,
                                  return_attention_mask=False)["input_ids"]
    for call in ("first call", "second call"):
        bench.measure("bge_m3", f"packed, 3 outputs on the GPU, one copy ({call})",
                      lambda: m3_packed(m3, model.tokenizer, token_lists, device), 1, flops,
                      lambda found: m3_agreement(found, expected) if expected is not None else "")


def m3_packed(m3: Any, tokenizer: Any, token_lists: list[list[int]], device: str) -> dict[str, Any]:
    """BGE-M3's dense vectors, lexical weights and ColBERT vectors as BGEM3FlagModel computes them
    (CLS, normalized; per token id the largest relu(sparse_linear) weight, special tokens left
    out; colbert_linear of every token but the first, normalized), on packed texts."""
    network = m3.model
    unused = torch.tensor(sorted({tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                  tokenizer.unk_token_id} - {None}), device=device)
    dense, weights, token_ids, owners, colbert = [], [], [], [], []
    with torch.inference_mode(), packed._attention(network):
        for first, lengths, ids in packs_of(token_lists, BATCH * packed.TOKENS_PER_TEXT):
            hidden, bounds = forward_pack(network, lengths, ids)
            starts = bounds[:-1].long()
            dense.append(F.normalize(hidden[starts].float(), dim=-1))
            weights.append(torch.relu(m3.sparse_linear(hidden)).float()[:, 0])
            pack_ids = torch.from_numpy(ids).to(device, non_blocking=True)
            token_ids.append(pack_ids)
            owners.append(first + torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                                          bounds.diff().long(), output_size=len(ids)))
            keep = torch.ones(len(ids), dtype=torch.bool, device=device)
            keep[starts] = False
            colbert.append(F.normalize(m3.colbert_linear(hidden[keep]).float(), dim=-1).half())
    weight, token, owner = torch.cat(weights), torch.cat(token_ids), torch.cat(owners)
    valid = (weight > 0) & ~torch.isin(token, unused)
    vocabulary = int(token.max()) + 1
    keys, where = torch.unique(owner[valid] * vocabulary + token[valid], return_inverse=True)
    best = torch.zeros(len(keys), device=device).scatter_reduce_(0, where, weight[valid], "amax", include_self=False)
    counts = torch.bincount(keys // vocabulary, minlength=len(token_lists)).cpu().numpy()
    return {"dense": torch.cat(dense).cpu().numpy(), "sparse_ids": (keys % vocabulary).cpu().numpy(),
            "sparse_weights": best.cpu().numpy(), "sparse_offsets": np.concatenate([[0], counts.cumsum()]),
            "colbert": torch.cat(colbert).cpu().numpy(),
            "colbert_offsets": np.concatenate([[0], np.cumsum([len(t) - 1 for t in token_lists])])}


def m3_agreement(found: dict[str, Any], expected: dict[str, Any]) -> str:
    """How far the packed outputs are from FlagEmbedding's (largest differences)."""
    dense = float(np.abs(found["dense"] - expected["dense_vecs"]).max())
    colbert = np.concatenate(expected["colbert_vecs"]).astype(np.float32)
    same_tokens = colbert.shape[0] == found["colbert"].shape[0]
    colbert_diff = float(np.abs(found["colbert"].astype(np.float32) - colbert).max()) if same_tokens else float("nan")
    worst, missing = 0.0, 0
    for i, weights in enumerate(expected["lexical_weights"]):
        a, b = found["sparse_offsets"][i], found["sparse_offsets"][i + 1]
        ours = dict(zip(found["sparse_ids"][a:b].tolist(), found["sparse_weights"][a:b].tolist()))
        for token, weight in weights.items():
            if int(token) in ours:
                worst = max(worst, abs(ours[int(token)] - float(weight)))
            else:
                missing += 1
        missing += len(set(ours) - {int(t) for t in weights})
    return (f"max |diff| to FlagEmbedding: dense {dense:.1e}, sparse {worst:.1e} ({missing} tokens in one only), "
            f"ColBERT {colbert_diff:.1e} (same token count: {same_tokens})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", choices=[a for a, s in ARCHITECTURES.items() if s["family"] == "xlmr"],
                        default="xlmr-large")
    parser.add_argument("--passages", type=int, default=720)
    parser.add_argument("--pairs", type=int, default=5700, help="query-passage pairs to rerank (114 x 50)")
    parser.add_argument("--data", type=lambda p: Path(p).resolve(), default=DATA)
    parser.add_argument("--work", type=lambda p: Path(p).resolve(),
                        help="stand-ins left by bench_models.py throughput --work (built here when missing)")
    parser.add_argument("--only", nargs="+", choices=["encode", "rerank", "bge_m3"],
                        default=["encode", "rerank", "bge_m3"])
    parser.add_argument("--fresh", choices=["as-is", "record-stack"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.fresh:
        fresh(args)
        return
    device = pick_device(args.device)
    setting = environment(device)
    print(json.dumps(setting), flush=True)
    with contextlib.ExitStack() as stack:
        if args.work is None:
            args.work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        rows = run_all(args, device)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 140)
    print(table.to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps({"environment": setting, "rows": rows}, indent=1))


def run_all(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    qa, corpus = load_dataset(args.data / "qa.parquet", args.data / "corpus.parquet")
    passages = corpus.contents[:args.passages]
    queries = qa.queries.texts
    pairs = [(queries[i % len(queries)], corpus.contents[(37 * i) % len(corpus)]) for i in range(args.pairs)]
    encoder, reranker = args.work / f"{args.arch}-encoder", args.work / f"{args.arch}-reranker"
    if not (encoder / "colbert_linear.pt").exists() or not (reranker / "config.json").exists():
        tokenizer = train_tokenizer("xlmr", corpus.contents + queries)
        build_model(encoder, args.arch, "encoder", tokenizer, seed=0)
        width = ARCHITECTURES[args.arch]["hidden_size"]
        torch.save(torch.nn.Linear(width, width).state_dict(), encoder / "colbert_linear.pt")
        torch.save(torch.nn.Linear(width, 1).state_dict(), encoder / "sparse_linear.pt")
        build_model(reranker, args.arch, "reranker", tokenizer, seed=1)
    peak = next((v for k, v in PEAK_BF16.items() if device.startswith("cuda") and k in torch.cuda.get_device_name()),
                float("nan"))
    bench = Bench(device, peak, measured_peak(device))
    if "encode" in args.only:
        spec = DenseSpec(model=str(encoder), max_length=_limit(args.arch), batch_size=BATCH)
        model = load_sentence_transformer(Located(str(encoder), str(encoder), {"sha256": "bench"}), spec, device)
        tokens = sum(len(ids) for ids in model.tokenizer(passages, truncation=True,
                                                         max_length=model.max_seq_length)["input_ids"])
        packed.encode(model, passages[:1], None, BATCH, True).cpu()  # load, warm up
        encoding(bench, model, passages, 2 * non_embedding_parameters(model[0].auto_model) * tokens, args)
        del model
    if "rerank" in args.only:
        reranking(bench, reranker, pairs, device)
    if "bge_m3" in args.only:
        bge_m3(bench, encoder, passages, device)
    return bench.rows


if __name__ == "__main__":
    main()
