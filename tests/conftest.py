"""Shared fixtures: the bundled example data, the real autorag-ko set beside the repository, and
tiny random-weight models built once per test run, in a temp folder every pytest-xdist worker
reads, so the real loading code runs offline."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

pytest_plugins = ["postgres"]  # the postgres_server / postgres_url fixtures, one server per test process

os.environ.setdefault("NUMBA_DISABLE_JIT", "1")  # ranx (test_fusion) as plain Python: no half minute of JIT


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker's native thread pools (torch's OpenMP, BLAS, the tokenizers'
    Rayon) get its share of the cores: every worker starting one thread per core oversubscribes
    the machine, and the spinning threads cost as much CPU time again. Set before anything imports
    them (the worker processes the tests start inherit it too)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(name, threads)


_share_the_cores()

ROOT = Path(__file__).resolve().parent.parent
KO_MINI = ROOT / "examples" / "ko-mini"
AUTORAG_KO = ROOT.parent / "shared" / "data" / "autorag-ko"
AUTORAG_KO_DOCS = ROOT.parent / "shared" / "data" / "autorag-ko-docs"
"""The same questions over autorag-ko's 32 source documents, labelled by evidence spans."""

FIRST = ("test_workers.py", "test_honest.py", "test_study.py", "test_tune_study.py", "test_finetune_command.py",
         "test_chunked_study.py", "test_tune_train.py", "test_autorag_ko.py", "test_autorag_import.py")
"""The files whose tests take longest (--durations), started first: pytest-xdist hands out whole
files in collection order (--dist loadfile --no-loadscope-reorder), and a long one started last
keeps the other workers waiting for it at the end."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))


def example_texts() -> list[str]:
    """Every passage and question of the bundled example."""
    return [json.loads(line)[field] for name, field in (("corpus.jsonl", "contents"), ("qa.jsonl", "query"))
            for line in (KO_MINI / name).read_text().splitlines()]


def _train_tokenizer(kind: str):
    """A WordPiece (BERT) or Unigram (XLM-R) tokenizer over the example data: every character of
    it (as the real models' vocabularies cover Korean, so no text becomes <unk>) and its 600 most
    frequent words. Built from counts, not trained: the tokenizers library's trainers break ties
    differently in every process, and the tests need the same tiny models in every run."""
    import math
    import re
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    texts = example_texts()
    if kind == "wordpiece":
        lowered = [t.lower() for t in texts]
        alphabet = sorted(set("".join(lowered)) - set(" \t\n"))
        words = Counter(w for t in lowered for w in re.findall(r"\w+", t))
        frequent = [w for w, _ in sorted(words.items(), key=lambda x: (-x[1], x[0])) if len(w) > 1][:600]
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *alphabet, *("##" + c for c in alphabet), *frequent]
        tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return tokenizer
    alphabet = sorted(set("".join(texts).lower()) | set("".join(texts)) - set(" \t\n"))
    words = Counter("\u2581" + w for t in texts for w in t.split())
    frequent = sorted(words.items(), key=lambda x: (-x[1], x[0]))[:600]
    total = sum(words.values())
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -8.0) for c in alphabet] + [(w, math.log(n / total)) for w, n in frequent if len(w) > 2]
    tokenizer = Tokenizer(models.Unigram(list(dict(pieces).items()), unk_id=3, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    return tokenizer


def _save_tiny(folder: Path, model_class, config_class, tokenizer, seed: int = 0, **config) -> Path:
    """Random weights from a real architecture's config, 2 layers of width 32, saved with the tokenizer."""
    import torch

    torch.manual_seed(seed)
    model_class(config_class(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, **config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp folder of this test run that every pytest-xdist worker sees: their base temp
    folders (popen-gw0, popen-gw1...) sit side by side in the run's; alone, the run's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `build` fills, built by the first test process of the run that asks for it and
    read by the others: a lock for the build, a marker file for a complete one (a build that
    failed half way is started again)."""
    folder = run_folder(tmp_path_factory) / "built" / name
    folder.parent.mkdir(exist_ok=True)
    with FileLock(folder.parent / f"{name}.lock"):
        if not (folder.parent / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder.parent / f"{name}.done").touch()
    return folder


def _bert_tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(tokenizer_object=_train_tokenizer("wordpiece"), unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", strip_accents=False)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A BERT bi-encoder (sentence-transformers adds mean pooling when it finds no modules.json)."""
    from transformers import BertConfig, BertModel

    return built_once(tmp_path_factory, "tiny-bert", lambda folder: _save_tiny(
        folder, BertModel, BertConfig, _bert_tokenizer(), max_position_embeddings=256))


@pytest.fixture(scope="session")
def tiny_bert_query_tower(tmp_path_factory) -> Path:
    """A second BERT of the same width with other weights: the query tower of an asymmetric pair."""
    from transformers import BertConfig, BertModel

    return built_once(tmp_path_factory, "tiny-bert-q", lambda folder: _save_tiny(
        folder, BertModel, BertConfig, _bert_tokenizer(), seed=1, max_position_embeddings=256))


def _xlmr_tokenizer():
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(tokenizer_object=_train_tokenizer("unigram"), bos_token="<s>", eos_token="</s>",
                                   sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                   mask_token="<mask>")


def _xlmr_ids(tokenizer) -> dict:
    return {"max_position_embeddings": 260, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


def _save_xlmr(folder: Path, model_class, config_class, seed: int = 0, **config) -> Path:
    tokenizer = _xlmr_tokenizer()
    return _save_tiny(folder, model_class, config_class, tokenizer, seed=seed, **config, **_xlmr_ids(tokenizer))


@pytest.fixture(scope="session")
def tiny_xlmr_reranker(tmp_path_factory) -> Path:
    """An XLM-RoBERTa cross-encoder with one relevance logit, the architecture of bge-reranker-v2-m3."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    return built_once(tmp_path_factory, "tiny-xlmr", lambda folder: _save_xlmr(
        folder, XLMRobertaForSequenceClassification, XLMRobertaConfig, num_labels=1, initializer_range=0.3))


@pytest.fixture(scope="session")
def tiny_xlmr_two_labels(tmp_path_factory) -> Path:
    """An XLM-RoBERTa cross-encoder with two output labels (not relevant, relevant)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    return built_once(tmp_path_factory, "tiny-xlmr-2", lambda folder: _save_xlmr(
        folder, XLMRobertaForSequenceClassification, XLMRobertaConfig, seed=2, num_labels=2, initializer_range=0.3))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    """A RoBERTa encoder (position ids counted from padding_idx + 1, like XLM-R)."""
    from transformers import RobertaConfig, RobertaModel

    return built_once(tmp_path_factory, "tiny-roberta",
                      lambda folder: _save_xlmr(folder, RobertaModel, RobertaConfig, seed=3))


def _decoder_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_train_tokenizer("unigram"), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def _save_decoder(folder: Path, model_class, config_class, seed: int, **config) -> Path:
    tokenizer = _decoder_tokenizer()
    return _save_tiny(folder, model_class, config_class, tokenizer, seed=seed, num_key_value_heads=1, head_dim=16,
                      pad_token_id=tokenizer.pad_token_id, **config)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A Qwen3 decoder, the architecture of Qwen3-Embedding: causal attention, grouped-query
    attention (one key/value head for two query heads)."""
    from transformers import Qwen3Config, Qwen3Model

    return built_once(tmp_path_factory, "tiny-qwen3", lambda folder: _save_decoder(
        folder, Qwen3Model, Qwen3Config, seed=4, max_position_embeddings=512))


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    """A Mistral decoder (the base of e5-mistral-style embedders) with an 8-token sliding window."""
    from transformers import MistralConfig, MistralModel

    return built_once(tmp_path_factory, "tiny-mistral", lambda folder: _save_decoder(
        folder, MistralModel, MistralConfig, seed=5, sliding_window=8, max_position_embeddings=512))


@pytest.fixture(scope="session")
def tiny_bge_m3(tmp_path_factory) -> Path:
    """BGE-M3's layout: an XLM-RoBERTa encoder plus the ColBERT and sparse heads as
    colbert_linear.pt and sparse_linear.pt beside it."""
    def build(folder: Path) -> None:
        import torch
        from transformers import XLMRobertaConfig, XLMRobertaModel

        _save_xlmr(folder, XLMRobertaModel, XLMRobertaConfig)
        torch.save(torch.nn.Linear(32, 32).state_dict(), folder / "colbert_linear.pt")
        torch.save(torch.nn.Linear(32, 1).state_dict(), folder / "sparse_linear.pt")

    return built_once(tmp_path_factory, "tiny-bge-m3", build)


@pytest.fixture(scope="session")
def tiny_gemma_reranker(tmp_path_factory) -> Path:
    """A Gemma decoder, the architecture of bge-reranker-v2-gemma (FlagLLMReranker)."""
    from transformers import GemmaConfig, GemmaForCausalLM

    def build(folder: Path) -> None:
        tokenizer = _decoder_tokenizer()
        _save_tiny(folder, GemmaForCausalLM, GemmaConfig, tokenizer, num_key_value_heads=1, head_dim=16,
                   max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)

    return built_once(tmp_path_factory, "tiny-gemma", build)


@pytest.fixture(scope="session")
def ko_mini():
    from ragopt.data.qa import load_dataset

    return load_dataset(qa=KO_MINI / "qa.jsonl", corpus=KO_MINI / "corpus.jsonl", domain_column="domain")


@pytest.fixture
def scored_pairs(monkeypatch) -> list:
    """Every (query, passage) pair a CrossEncoder reranker is asked to score, in order."""
    from ragopt.stages.rerankers.cross_encoder import CrossEncoderScorer

    seen: list = []
    real = CrossEncoderScorer.score_pairs

    def counting(self, pairs):
        seen.extend(pairs)
        return real(self, pairs)

    monkeypatch.setattr(CrossEncoderScorer, "score_pairs", counting)
    return seen


def write_config(path: Path, text: str) -> Path:
    """A config file in a temp folder whose data paths point at the bundled example."""
    path.write_text(text.replace("@KO_MINI@", str(KO_MINI)), encoding="utf-8")
    return path
