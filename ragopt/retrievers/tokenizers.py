"""Tokenizers for BM25 on Korean text. bm25s's default splitter drops one-character tokens,
which in Korean are often whole words (집, 법, 세), so ragopt brings its own."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Iterable

from tqdm.auto import tqdm

from ragopt.models import load_model
from ragopt.spec import (
    CONTENT_POS,
    CharNgramTokenizer,
    HuggingFaceTokenizer,
    KiwiTokenizer,
    MecabTokenizer,
    WhitespaceTokenizer,
)

_WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi(num_workers=os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _mecab():
    from mecab import MeCab

    return MeCab()


@lru_cache(maxsize=4)
def _hf_tokenizer(model: str):
    from transformers import AutoTokenizer

    return load_model("tokenizer", model, AutoTokenizer.from_pretrained)


def _keep(tag: str, pos: str) -> bool:
    return pos == "all" or tag.split("-")[0] in CONTENT_POS


def tokenize(spec: KiwiTokenizer | MecabTokenizer | WhitespaceTokenizer | CharNgramTokenizer | HuggingFaceTokenizer,
             texts: list[str], progress: bool = False) -> list[list[str]]:
    """Tokens of each text; Latin letters are lowercased so 'AI' and 'ai' match."""
    bar = tqdm(total=len(texts), desc=f"tokenize {spec.label}", disable=not progress,
               leave=False, unit="text")
    result: list[list[str]] = []
    for tokens in _tokens(spec, texts):
        result.append(tokens)
        bar.update()
    bar.close()
    return result


def _tokens(spec, texts: list[str]) -> Iterable[list[str]]:
    if isinstance(spec, KiwiTokenizer):
        for analysed in _kiwi().tokenize(texts):
            yield [t.form.lower() for t in analysed if _keep(t.tag, spec.pos)]
    elif isinstance(spec, MecabTokenizer):
        mecab = _mecab()
        for text in texts:
            yield [form.lower() for form, tag in mecab.pos(text) if _keep(tag, spec.pos)]
    elif isinstance(spec, WhitespaceTokenizer):
        for text in texts:
            words = _WORD.findall(text)
            yield [w.lower() for w in words] if spec.lowercase else words
    elif isinstance(spec, CharNgramTokenizer):
        n = spec.n
        for text in texts:
            yield [w[i:i + n] for w in _WORD.findall(text.lower()) for i in range(max(1, len(w) - n + 1))]
    elif isinstance(spec, HuggingFaceTokenizer):
        tokenizer = _hf_tokenizer(spec.model)
        for text in texts:
            yield tokenizer.tokenize(text)
    else:
        raise TypeError(f"unknown tokenizer {spec!r}")
