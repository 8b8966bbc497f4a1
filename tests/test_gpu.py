"""Every retriever and reranker kind on a CUDA GPU against the same computation on the CPU or the
library's own GPU path, on the tiny random-weight models of conftest: packed (varlen) encoding
against model.encode, FlagReranker, CrossEncoder and FlagLLMReranker against their own scoring,
BGE-M3's three outputs, the exact-search and ColBERT scans, and the serving batcher. Marked `gpu`
(run them with `pytest -m gpu`, on a GPU machine: bench/device_check.sh); without CUDA they skip.

Tolerances. Half-precision models cannot match float32 bit for bit: bf16 keeps 8 significant bits
(relative rounding 2^-8 = 3.9e-3) and fp16 11. Measured on the CPU with these models, casting to
bf16 moves each embedding by 3e-3 to 8.5e-3 of its norm (model.encode and packed alike) and a
reranker's logits by up to 4e-3 (one label) and 8e-2 (two labels, logits spread 1.1). So an
embedding may differ from the float32 CPU one by 3e-2 of its norm, and by no more than twice what
model.encode's own GPU embedding does; ragopt's GPU scores must be as close to the CPU's as the
library's own GPU scores are (twice their largest difference, plus a floor of 1e-3 of the score
scale). A wrong token, truncation, pooling or pairing moves them by far more (0.1 to 1). Scans of
integer-valued vectors are exact in float32 on both devices, so their rankings must be equal."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import KO_MINI, example_texts
from ragopt.stages import ranking
from ragopt.stages.engine import Engine
from ragopt.stages.models import Locator, ModelPool
from ragopt.stages.retrievers import _scan, packed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = "cuda"
EMBEDDING_TOLERANCE = 3e-2
"""An embedding's distance to its float32 CPU value, over its norm (see the module's docstring)."""


def relative_errors(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per row: the distance between the two, over the expected row's norm."""
    return np.linalg.norm(found - expected, axis=-1) / np.linalg.norm(expected, axis=-1)


def assert_as_close_as_the_library(ours: np.ndarray, library_gpu: np.ndarray, cpu: np.ndarray) -> None:
    """ragopt's GPU scores are as close to the float32 CPU scores as the library's own GPU scores
    (see the module's docstring), and close to the library's GPU scores themselves."""
    floor = 1e-3 * max(1.0, float(np.abs(cpu).max()))
    library_error = float(np.abs(library_gpu - cpu).max())
    print(f"largest difference to the CPU: ragopt {np.abs(ours - cpu).max():.2e}, library {library_error:.2e}")
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, cpu, rtol=0, atol=2 * library_error + floor)
    np.testing.assert_allclose(ours, library_gpu, rtol=0, atol=3 * library_error + floor)


def assert_same_ranking(found: ranking.Ranking, expected: ranking.Ranking, tolerance: float,
                        full_scores: np.ndarray | None = None) -> None:
    """The same ranking up to rounding: per query and rank, scores within `tolerance`, and the
    same passage except where passages whose expected scores are that close swapped (also across
    the last rank). full_scores: the expected side's score of every passage, where known."""
    np.testing.assert_array_equal(found.ids >= 0, expected.ids >= 0)
    retrieved = expected.ids >= 0
    np.testing.assert_allclose(found.scores[retrieved], expected.scores[retrieved], rtol=0, atol=tolerance)
    for row in range(len(expected.ids)):
        assert_only_near_ties_differ(found.ids[row], expected.ids[row], expected.scores[row], tolerance,
                                     None if full_scores is None else full_scores[row].__getitem__)


def assert_only_near_ties_differ(found_ids: Sequence, expected_ids: Sequence, expected_scores: np.ndarray,
                                 tolerance: float, expected_score_of: Callable[[Any], float] | None = None) -> None:
    """At every rank where the found passage is not the expected one, the found passage's expected
    score lies within `tolerance` of the expected score at that rank: only near-ties swapped. Its
    expected score is read from the expected ranking, else from expected_score_of; else it is
    outside the expected ranking, so at most the ranking's last score when the ranking is full
    (-1 ids: nothing more was retrieved, so no other passage may appear)."""
    expected_ids = list(expected_ids)
    score_of = dict(zip(expected_ids, np.asarray(expected_scores, dtype=np.float64).tolist()))
    full = -1 not in expected_ids
    for rank, (passage, wanted) in enumerate(zip(found_ids, expected_ids)):
        if passage == wanted:
            continue
        if passage in score_of:
            score = score_of[passage]
        elif expected_score_of is not None:
            score = float(expected_score_of(passage))
        else:  # its expected score is at most the last one: the closest it can come to this rank's
            score = float(expected_scores[-1]) if full else -np.inf
        assert abs(score - expected_scores[rank]) <= tolerance, (
            f"rank {rank}: {passage!r} (expected score {score}) in place of {wanted!r} "
            f"(expected score {expected_scores[rank]})")


def _stack(path, pooling: str, normalize: bool, device: str, **transformer):
    from sentence_transformers import SentenceTransformer, models

    modules = [models.Transformer(str(path), **transformer), models.Pooling(32, pooling_mode=pooling)]
    return SentenceTransformer(modules=modules + [models.Normalize()] * normalize, device=device)


@pytest.mark.parametrize("pooling,normalize", [("cls", True), ("mean", False), ("lasttoken", True)])
@pytest.mark.parametrize("family", ["bert", "xlmr", "roberta"])
def test_packed_encoding_on_gpu_matches_model_encode_and_the_cpu(family, pooling, normalize, tiny_bert, tiny_bge_m3,
                                                                  tiny_roberta):
    path = {"bert": tiny_bert, "xlmr": tiny_bge_m3, "roberta": tiny_roberta}[family]
    texts = example_texts()
    cpu = _stack(path, pooling, normalize, "cpu").encode(texts, batch_size=8, convert_to_numpy=True)
    model = _stack(path, pooling, normalize, GPU).to(torch.bfloat16)
    assert packed.packable(model, None)
    assert packed.attention_path("cuda", torch.bfloat16) == "varlen"
    library = model.encode(texts, batch_size=8, convert_to_tensor=True).float().cpu().numpy()
    ours = packed.encode(model, texts, None, 1, False).cpu().numpy()  # packs of 512 tokens: several of them
    assert np.all(np.isfinite(ours))
    ours_error, library_error = relative_errors(ours, cpu), relative_errors(library, cpu)
    print(f"{family}/{pooling}: relative error to the CPU, packed {ours_error.max():.2e}, "
          f"model.encode {library_error.max():.2e}")
    assert ours_error.max() <= EMBEDDING_TOLERANCE
    assert ours_error.max() <= 2 * library_error.max() + 2e-3
    assert relative_errors(ours, library).max() <= EMBEDDING_TOLERANCE
    assert model[0].auto_model.config._attn_implementation == "sdpa"  # its own attention is given back


class _Caught:
    """Python warnings, with the stack that raised each, and the warnings transformers,
    sentence-transformers and torch log."""

    LOGGERS = ("transformers", "sentence_transformers", "torch")

    def __init__(self) -> None:
        self.found: list[str] = []

    def __enter__(self) -> "_Caught":
        self._filters = warnings.catch_warnings()
        self._filters.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._show
        self._handler = logging.Handler(logging.WARNING)
        self._handler.emit = lambda record: self.found.append(f"log {record.name} {record.levelname}: "
                                                              f"{record.getMessage()}")
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self._handler)
        return self

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        stack = "".join(traceback.format_stack()[:-1])
        self.found.append(f"{category.__name__} at {filename}:{lineno}: {message}\n{stack}")

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self._handler)
        self._filters.__exit__(*exc)
        for text in self.found:
            print(f"\n--- caught:\n{text}")


@pytest.fixture(scope="module")
def xlmr_gpu(tiny_bge_m3):
    """The XLM-R encoder as a CLS-pooled, normalized bi-encoder on the GPU in bf16, warmed up."""
    model = _stack(tiny_bge_m3, "cls", True, GPU).to(torch.bfloat16)
    packed.encode(model, example_texts()[:4], None, 1, False).cpu()
    return model


def test_packed_encoding_on_gpu_raises_no_warning(xlmr_gpu):
    """The H200 run of 2026-12 saw a warning inside packed.encode; every one is printed in full."""
    texts = example_texts() * 3
    with _Caught() as caught:
        packed.encode(xlmr_gpu, texts, None, 1, True).cpu()
    assert caught.found == []


def test_packed_encoding_never_waits_for_the_gpu(xlmr_gpu):
    """Launching pack after pack never waits for the GPU (a synchronizing call stalls the launching
    thread until the GPU's queue is empty, so tokenizing and launching stop overlapping with the
    GPU's work); only reading the result does. transformers >= 5.24 looks for packed sequences in
    the position ids of every forward when the attention implementation has a mask function, one
    synchronizing .all() per pack. The mode is set before warnings are recorded: setting it warns
    (torch 2.11) that it is a prototype, in a text that also says "synchroniz"."""
    texts = example_texts() * 3

    def synchronizing(call: Callable[[], Any]) -> tuple[Any, list[str]]:
        places: list[str] = []

        def record(message, category, filename, lineno, file=None, line=None) -> None:
            if "synchroniz" in str(message):
                places.append(f"{filename}:{lineno}: {message}\n" + "".join(traceback.format_stack()[:-1]))

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            return call(), places

    torch.cuda.set_sync_debug_mode("warn")
    try:
        vectors, syncs = synchronizing(lambda: packed.encode(xlmr_gpu, texts, None, 1, True))
        _, reading = synchronizing(lambda: vectors.sum().item())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert reading, "reading a GPU value was not seen as a synchronizing call: the check cannot see any"
    for place in syncs:
        print(f"\n--- synchronizing call:\n{place}")
    assert syncs == []


def test_dense_retriever_on_gpu_encodes_and_scans_like_the_cpu(ko_mini, tiny_bge_m3):
    from ragopt.stages.retrievers.dense import DenseSpec

    qa, corpus = ko_mini
    spec = DenseSpec(model=str(tiny_bge_m3))
    gpu, cpu = Engine(corpus, device=GPU), Engine(corpus, device="cpu")
    assert relative_errors(gpu.retriever(spec).corpus_vectors, cpu.retriever(spec).corpus_vectors).max() \
        <= EMBEDDING_TOLERANCE
    found = gpu.retrieve(spec, qa.queries, 10)
    # the device scan against numpy over the GPU's own vectors: exact float32 products, ties by row
    queries = gpu.retriever(spec).embed(qa.queries.texts, qa.queries.key, "query")
    scores = queries @ gpu.retriever(spec).corpus_vectors.T
    expected = ranking.top_k(scores, 10)
    assert_same_ranking(found, expected, 1e-5, scores)
    assert_same_ranking(found, cpu.retrieve(spec, qa.queries, 10), 4e-2)


def _integer_vectors(rng: np.random.Generator, rows: int, width: int = 16) -> np.ndarray:
    """Small integers: every product and sum is exact in float32, on any device, in any order,
    and many scores tie exactly."""
    return rng.integers(-2, 3, size=(rows, width)).astype(np.float32)


def _numpy_top(scores: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The `depth` best columns of each row, best first, ties by column."""
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :depth]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("depth", [5, 60])
def test_exact_search_on_gpu_matches_numpy_with_ties_by_row(depth, monkeypatch):
    rng = np.random.default_rng(7)
    corpus, queries = _integer_vectors(rng, 50), _integer_vectors(rng, 9)
    corpus[20:30] = corpus[10:20]  # whole rows tie
    monkeypatch.setattr(_scan, "CORPUS_CHUNK", 7)  # the running top-k merges 8 blocks
    monkeypatch.setattr(ranking, "SCORE_BLOCK", 28)  # 4 queries per block
    found = _scan.exact_search(queries, corpus, depth, GPU)
    scores = queries @ corpus.T
    ids, best = _numpy_top(scores, min(depth, len(corpus)))
    np.testing.assert_array_equal(found.ids[:, :ids.shape[1]], ids)
    np.testing.assert_array_equal(found.scores[:, :ids.shape[1]], best)
    assert (found.ids[:, ids.shape[1]:] == -1).all()
    stats = ranking.ScoreStats.of(scores)
    for name in ("count", "min", "max", "mean", "std"):
        np.testing.assert_allclose(getattr(found.stats, name), getattr(stats, name), rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    on_cpu = _scan.exact_search(queries, corpus, depth, "cpu")
    np.testing.assert_array_equal(found.ids, on_cpu.ids)
    np.testing.assert_array_equal(found.scores, on_cpu.scores)


def test_colbert_search_on_gpu_matches_the_cpu(monkeypatch):
    rng = np.random.default_rng(11)
    q_lengths, d_lengths = rng.integers(1, 6, size=7), rng.integers(1, 9, size=40)
    q_offsets, d_offsets = (np.concatenate([[0], np.cumsum(n)]) for n in (q_lengths, d_lengths))
    q, d = _integer_vectors(rng, int(q_offsets[-1])), _integer_vectors(rng, int(d_offsets[-1]))
    monkeypatch.setattr(_scan, "TOKEN_CHUNK", 30)  # passages scanned in many blocks
    found = _scan.colbert_search(q, q_offsets, d, d_offsets, 12, GPU)
    expected = _scan.colbert_search(q, q_offsets, d, d_offsets, 12, "cpu")
    np.testing.assert_array_equal(found.ids, expected.ids)
    np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-6)
    # late interaction by hand for the first query: its tokens' best matches, averaged
    by_hand = [np.mean((q[:q_offsets[1]] @ d[d_offsets[j]:d_offsets[j + 1]].T).max(axis=1)) for j in range(40)]
    ids, best = _numpy_top(np.array([by_hand], dtype=np.float32), 12)
    np.testing.assert_array_equal(found.ids[0], ids[0])
    np.testing.assert_allclose(found.scores[0], best[0], rtol=1e-6)


def _pairs(ko_mini, n: int = 40) -> list[tuple[str, str]]:
    qa, corpus = ko_mini
    return [(qa.queries.texts[i % 8], corpus.contents[(7 * i) % len(corpus)]) for i in range(n)]


def test_flag_reranker_on_gpu_scores_like_compute_score(ko_mini, tiny_xlmr_reranker):
    from FlagEmbedding import FlagReranker

    from ragopt.stages.rerankers.flag_reranker import FlagRerankerSpec, FlagScorer

    pairs, path = _pairs(ko_mini), str(tiny_xlmr_reranker)
    spec = FlagRerankerSpec(model=path, max_length=128)
    ours = FlagScorer(spec, Locator()(path), GPU, ModelPool(), "gpu").score(pairs)
    library = FlagReranker(path, use_fp16=True, devices=[GPU]).compute_score(pairs, max_length=128)
    cpu = FlagReranker(path, use_fp16=False, devices=["cpu"]).compute_score(pairs, max_length=128)
    assert_as_close_as_the_library(ours, np.asarray(library, np.float32), np.asarray(cpu, np.float32))


@pytest.mark.parametrize("labels", [1, 2])
def test_cross_encoder_on_gpu_scores_like_predict(labels, ko_mini, tiny_xlmr_reranker, tiny_xlmr_two_labels):
    from sentence_transformers import CrossEncoder

    from ragopt.stages.rerankers.cross_encoder import CrossEncoderScorer, CrossEncoderSpec

    pairs, path = _pairs(ko_mini), str({1: tiny_xlmr_reranker, 2: tiny_xlmr_two_labels}[labels])
    ours = CrossEncoderScorer(CrossEncoderSpec(model=path), Locator()(path), GPU, ModelPool(), "gpu").score(pairs)

    def predict(device: str, dtype: torch.dtype) -> np.ndarray:
        model = CrossEncoder(path, device=device)
        model.to(dtype)
        scores = model.predict(pairs, apply_softmax=labels > 1, convert_to_tensor=True)
        return (scores if labels == 1 else scores[:, -1]).float().cpu().numpy()

    assert_as_close_as_the_library(ours, predict(GPU, torch.bfloat16), predict("cpu", torch.float32))


def test_flag_llm_reranker_on_gpu_scores_like_compute_score(ko_mini, tiny_gemma_reranker):
    from FlagEmbedding import FlagLLMReranker

    from ragopt.stages.rerankers.flag_llm_reranker import FlagLLMRerankerSpec, FlagLLMScorer

    pairs, path = _pairs(ko_mini, 24), str(tiny_gemma_reranker)
    spec = FlagLLMRerankerSpec(model=path, max_length=128)
    ours = FlagLLMScorer(spec, Locator()(path), GPU, ModelPool(), "gpu").score(pairs)
    library = FlagLLMReranker(path, use_fp16=True, devices=[GPU]).compute_score(pairs, max_length=128)
    cpu = FlagLLMReranker(path, use_fp16=False, devices=["cpu"]).compute_score(pairs, max_length=128)
    assert_as_close_as_the_library(ours, np.asarray(library, np.float32), np.asarray(cpu, np.float32))


@pytest.mark.parametrize("mode", ["dense", "sparse", "colbert"])
def test_bge_m3_on_gpu_encodes_and_ranks_like_the_cpu(mode, ko_mini, tiny_bge_m3):
    from ragopt.stages.retrievers.bge_m3 import BGEM3Spec

    qa, corpus = ko_mini
    spec = BGEM3Spec(model=str(tiny_bge_m3), mode=mode)
    gpu, cpu = Engine(corpus, device=GPU), Engine(corpus, device="cpu")
    found, expected = gpu.retriever(spec).corpus_outputs, cpu.retriever(spec).corpus_outputs
    if mode == "dense":
        assert relative_errors(found["dense"], expected["dense"]).max() <= EMBEDDING_TOLERANCE
    elif mode == "colbert":
        np.testing.assert_array_equal(found["colbert_offsets"], expected["colbert_offsets"])
        assert relative_errors(found["colbert"].astype(np.float32),
                               expected["colbert"].astype(np.float32)).max() <= EMBEDDING_TOLERANCE
    else:  # each passage's weights over the vocabulary (a weight that rounds to 0 drops out)
        width = int(max(found["sparse_ids"].max(), expected["sparse_ids"].max())) + 1
        dense_weights = [_sparse_as_dense(outputs, width) for outputs in (found, expected)]
        assert relative_errors(*dense_weights).max() <= EMBEDDING_TOLERANCE
    assert_same_ranking(gpu.retrieve(spec, qa.queries, 10), cpu.retrieve(spec, qa.queries, 10), 2e-2)


def _sparse_as_dense(outputs: dict, width: int) -> np.ndarray:
    """BGE-M3's sparse weights of every passage as a dense (passages x vocabulary) matrix."""
    offsets = outputs["sparse_offsets"]
    weights = np.zeros((len(offsets) - 1, width), dtype=np.float32)
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    weights[rows, outputs["sparse_ids"]] = outputs["sparse_weights"]
    return weights


def _hits_match(found, expected, tolerance: float) -> None:
    """The same passages with the same scores within `tolerance`, near-ties allowed to swap."""
    assert len(found) == len(expected)
    scores = np.array([h.score for h in expected])
    np.testing.assert_allclose([h.score for h in found], scores, rtol=0, atol=tolerance)
    assert_only_near_ties_differ([h.doc_id for h in found], [h.doc_id for h in expected], scores, tolerance)


@pytest.fixture(scope="module")
def gpu_best(tmp_path_factory, tiny_bert, tiny_xlmr_reranker):
    """BM25 and a dense model fused, the first 3 candidates reranked, 5 returned, tuned on the GPU."""
    from ragopt.serving.export import Exported, write_best
    from ragopt.stages.spec import PipelineSpec

    bm25 = {"type": "bm25", "tokenizer": {"type": "whitespace"}, "method": "bm25+", "k1": 1.2, "b": 0.6}
    dense = {"type": "dense", "model": str(tiny_bert), "query_prefix": "query: ", "passage_prefix": "passage: "}
    pipeline = {"retriever": {"type": "hybrid", "retrievers": [bm25, dense], "fusion": "convex",
                              "normalization": "tmm", "weights": [0.7, 0.3], "depth": 20},
                "reranker": {"type": "cross_encoder", "model": str(tiny_xlmr_reranker), "depth": 3}, "top_k": 5}
    path = tmp_path_factory.mktemp("gpu-serve") / "best.yaml"
    write_best(path, Exported(PipelineSpec.model_validate(pipeline), device="cuda"), {}, {})
    return path


def test_serving_batcher_on_gpu_answers_as_the_pipeline(gpu_best):
    """The worker thread owns a GPU pipeline: batches that arrive together are answered as the
    pipeline answers the same batch, and concurrent requests as single calls (bf16 scores of a
    question differ with its company by rounding: tolerance 2e-2 on scores of scale 1)."""
    from ragopt import load_pipeline
    from ragopt.serving.serve import Batcher

    questions = _questions()
    served = load_pipeline(gpu_best, KO_MINI / "corpus.jsonl", device=GPU)
    reference = load_pipeline(gpu_best, KO_MINI / "corpus.jsonl", device=GPU)
    retrieve, release, batches = served.retrieve, threading.Event(), []

    def held(queries, k=None):
        batches.append((len(queries), k))
        release.wait(10)
        return retrieve(queries, k)

    served.retrieve = held
    batcher = Batcher(served, max_batch=8)
    first = batcher.submit(questions[0], 2)
    while not batches:
        time.sleep(0.01)
    asks = [(questions[i], k) for i, k in zip(range(1, 11), [1, 5, 3, 2, 7, 1, 4, 6, 2, 3])]
    futures = [batcher.submit(q, k) for q, k in asks]
    release.set()
    _hits_match(first.result(30)[0], reference.retrieve(questions[0], 2)[0], 2e-2)
    deepest = reference.retrieve(questions[1:9], 7) + reference.retrieve(questions[9:11], 3)
    for future, hits, (_, k) in zip(futures, deepest, asks):
        _hits_match(future.result(30)[0], hits[:k], 2e-2)
    assert batches == [(1, 2), (8, 7), (2, 3)]
    served.retrieve = retrieve
    asked = [(questions[i % 20], 1 + i % 7) for i in range(48)]
    with ThreadPoolExecutor(16) as threads:
        found = list(threads.map(lambda ask: batcher.submit(*ask).result(30)[0], asked))
    batcher.close()
    for hits, (question, k) in zip(found, asked):
        _hits_match(hits, reference.retrieve(question, k)[0], 2e-2)


def _questions() -> list[str]:
    import json

    return [json.loads(line)["query"] for line in (KO_MINI / "qa.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tiny_colbert_gpu(tmp_path_factory):
    from test_multi_vector import save_pylate_colbert

    return save_pylate_colbert(tmp_path_factory.mktemp("tiny-colbert-gpu"))


@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_multi_vector_on_gpu_ranks_like_the_cpu(dtype, ko_mini, tiny_colbert_gpu):
    """MaxSim over token vectors encoded on the GPU (float32, and bf16 stored as float16) against
    the float32 CPU encoding and scan."""
    from ragopt.stages.retrievers.multi_vector import MultiVectorSpec

    qa, corpus = ko_mini
    spec = MultiVectorSpec(model=str(tiny_colbert_gpu), dtype=dtype)
    found = Engine(corpus, device=GPU).retrieve(spec, qa.queries, 10)
    expected = Engine(corpus, device="cpu").retrieve(spec.model_copy(update={"dtype": "float32"}), qa.queries, 10)
    scale = float(np.abs(expected.scores[expected.ids >= 0]).max())
    assert_same_ranking(found, expected, (1e-5 if dtype == "float32" else 2e-2) * scale)


def test_causal_lm_reranker_on_gpu_scores_like_the_model_card(ko_mini):
    """Qwen3-Reranker's P(yes) in bf16 on the GPU against the card's own code on the CPU in float32,
    and against CrossEncoder.predict in bf16 on the GPU."""
    from sentence_transformers import CrossEncoder
    from test_qwen3 import card_scores, save_qwen3_reranker

    from ragopt.stages.rerankers.causal_lm_reranker import CausalLMRerankerSpec, CausalLMScorer

    pairs = _pairs(ko_mini, 24)
    with tempfile.TemporaryDirectory() as folder:
        path = save_qwen3_reranker(Path(folder) / "qwen3-reranker")
        spec = CausalLMRerankerSpec(model=str(path), max_length=512)
        ours = CausalLMScorer(spec, Locator()(str(path)), GPU, ModelPool(), "gpu").score(pairs)
        library = CrossEncoder(str(path), device=GPU)
        library.to(torch.bfloat16)
        library_gpu = library.predict(pairs, convert_to_tensor=True).float().cpu().numpy()
        cpu = np.asarray(card_scores(path, max_length=512)(pairs), np.float32)
    assert_as_close_as_the_library(ours, library_gpu, cpu)
