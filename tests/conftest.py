"""Shared fixtures: the bundled example data, the real autorag-ko set beside the repository, and
tiny random-weight models built in a temp folder so the real loading code runs offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest_plugins = ["postgres"]  # the postgres_server / postgres_url fixtures, one server per session

os.environ.setdefault("NUMBA_DISABLE_JIT", "1")  # ranx (test_fusion) as plain Python: no half minute of JIT

ROOT = Path(__file__).resolve().parent.parent
KO_MINI = ROOT / "examples" / "ko-mini"
AUTORAG_KO = ROOT.parent / "shared" / "data" / "autorag-ko"


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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A BERT bi-encoder (sentence-transformers adds mean pooling when it finds no modules.json)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast(tokenizer_object=_train_tokenizer("wordpiece"), unk_token="[UNK]",
                                  pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                  strip_accents=False)
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert"), BertModel, BertConfig, tokenizer,
                      max_position_embeddings=256)


@pytest.fixture(scope="session")
def tiny_bert_query_tower(tmp_path_factory) -> Path:
    """A second BERT of the same width with other weights: the query tower of an asymmetric pair."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast(tokenizer_object=_train_tokenizer("wordpiece"), unk_token="[UNK]",
                                  pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                  strip_accents=False)
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert-q"), BertModel, BertConfig, tokenizer, seed=1,
                      max_position_embeddings=256)


def _xlmr_tokenizer():
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(tokenizer_object=_train_tokenizer("unigram"), bos_token="<s>", eos_token="</s>",
                                   sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                   mask_token="<mask>")


def _xlmr_ids(tokenizer) -> dict:
    return {"max_position_embeddings": 260, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


@pytest.fixture(scope="session")
def tiny_xlmr_reranker(tmp_path_factory) -> Path:
    """An XLM-RoBERTa cross-encoder with one relevance logit, the architecture of bge-reranker-v2-m3."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = _xlmr_tokenizer()
    return _save_tiny(tmp_path_factory.mktemp("tiny-xlmr"), XLMRobertaForSequenceClassification, XLMRobertaConfig,
                      tokenizer, num_labels=1, initializer_range=0.3, **_xlmr_ids(tokenizer))


@pytest.fixture(scope="session")
def tiny_xlmr_two_labels(tmp_path_factory) -> Path:
    """An XLM-RoBERTa cross-encoder with two output labels (not relevant, relevant)."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = _xlmr_tokenizer()
    return _save_tiny(tmp_path_factory.mktemp("tiny-xlmr-2"), XLMRobertaForSequenceClassification, XLMRobertaConfig,
                      tokenizer, seed=2, num_labels=2, initializer_range=0.3, **_xlmr_ids(tokenizer))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    """A RoBERTa encoder (position ids counted from padding_idx + 1, like XLM-R)."""
    from transformers import RobertaConfig, RobertaModel

    tokenizer = _xlmr_tokenizer()
    return _save_tiny(tmp_path_factory.mktemp("tiny-roberta"), RobertaModel, RobertaConfig, tokenizer, seed=3,
                      **_xlmr_ids(tokenizer))


def _decoder_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_train_tokenizer("unigram"), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A Qwen3 decoder, the architecture of Qwen3-Embedding: causal attention, grouped-query
    attention (one key/value head for two query heads)."""
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _decoder_tokenizer()
    return _save_tiny(tmp_path_factory.mktemp("tiny-qwen3"), Qwen3Model, Qwen3Config, tokenizer, seed=4,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    """A Mistral decoder (the base of e5-mistral-style embedders) with an 8-token sliding window."""
    from transformers import MistralConfig, MistralModel

    tokenizer = _decoder_tokenizer()
    return _save_tiny(tmp_path_factory.mktemp("tiny-mistral"), MistralModel, MistralConfig, tokenizer, seed=5,
                      num_key_value_heads=1, head_dim=16, sliding_window=8, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def tiny_bge_m3(tmp_path_factory) -> Path:
    """BGE-M3's layout: an XLM-RoBERTa encoder plus the ColBERT and sparse heads as
    colbert_linear.pt and sparse_linear.pt beside it."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer = _xlmr_tokenizer()
    folder = _save_tiny(tmp_path_factory.mktemp("tiny-bge-m3"), XLMRobertaModel, XLMRobertaConfig, tokenizer,
                        **_xlmr_ids(tokenizer))
    torch.save(torch.nn.Linear(32, 32).state_dict(), folder / "colbert_linear.pt")
    torch.save(torch.nn.Linear(32, 1).state_dict(), folder / "sparse_linear.pt")
    return folder


@pytest.fixture(scope="session")
def tiny_gemma_reranker(tmp_path_factory) -> Path:
    """A Gemma decoder, the architecture of bge-reranker-v2-gemma (FlagLLMReranker)."""
    from transformers import GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_train_tokenizer("unigram"), bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    return _save_tiny(tmp_path_factory.mktemp("tiny-gemma"), GemmaForCausalLM, GemmaConfig, tokenizer,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)


@pytest.fixture(scope="session")
def ko_mini():
    from ragopt.data import load_dataset

    return load_dataset(qa=KO_MINI / "qa.jsonl", corpus=KO_MINI / "corpus.jsonl", domain_column="domain")


@pytest.fixture
def scored_pairs(monkeypatch) -> list:
    """Every (query, passage) pair a CrossEncoder reranker is asked to score, in order."""
    from ragopt.rerankers.cross_encoder import CrossEncoderScorer

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
