"""Tokenizers for BM25 on Korean text. bm25s's default splitter drops one-character tokens,
which in Korean are often whole words (집, 법, 세), so ragopt brings its own. Each tokenizer
names what its tokens depend on (`provenance`): the analyser's library and dictionary versions,
Python's Unicode tables for the regular-expression ones, the model revision for a subword one."""

from __future__ import annotations

import os
import re
import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Iterator, Literal, Union

from pydantic import BeforeValidator, Field

from ragopt.stages.params import StrictModel
from ragopt.provenance import versions

if TYPE_CHECKING:
    from ragopt.stages.models import Locator

_WORD = re.compile(r"\w+")

CONTENT_POS = ("NNG", "NNP", "NNB", "NR", "NP", "VV", "VA", "MAG", "XR", "SL", "SH", "SN")
"""Content-bearing Sejong POS tags (nouns, verbs, adjectives, adverbs, roots, foreign words,
hanja, numbers), shared by Kiwi and MeCab-ko; particles, endings and affixes are dropped."""


class _MorphemeTokenizer(StrictModel):
    """Morphemes of a Korean analyser; pos='content' keeps only CONTENT_POS."""

    type: str
    pos: Literal["all", "content"] = "all"

    @property
    def label(self) -> str:
        return self.type if self.pos == "all" else f"{self.type}:content"


class KiwiTokenizer(_MorphemeTokenizer):
    """Kiwi morphemes (kiwipiepy, multi-threaded; its model ships in kiwipiepy_model)."""

    type: Literal["kiwi"] = "kiwi"

    def provenance(self, locate: "Locator") -> dict[str, Any]:
        return versions("kiwipiepy", "kiwipiepy_model")

    def tokens(self, texts: list[str], locate: "Locator") -> Iterable[list[str]]:
        for analysed in _kiwi().tokenize(texts):
            yield [t.form.lower() for t in analysed if _keep(t.tag, self.pos)]


class MecabTokenizer(_MorphemeTokenizer):
    """MeCab-ko morphemes (python-mecab-ko, dictionary from python-mecab-ko-dic)."""

    type: Literal["mecab"] = "mecab"

    def provenance(self, locate: "Locator") -> dict[str, Any]:
        return versions("python-mecab-ko", "python-mecab-ko-dic")

    def tokens(self, texts: list[str], locate: "Locator") -> Iterable[list[str]]:
        mecab = _mecab()
        for text in texts:
            yield [form.lower() for form, tag in mecab.pos(text) if _keep(tag, self.pos)]


class WhitespaceTokenizer(StrictModel):
    """Words (\\w+ runs), punctuation stripped; one-character words are kept."""

    type: Literal["whitespace"] = "whitespace"
    lowercase: bool = True

    @property
    def label(self) -> str:
        return "whitespace" if self.lowercase else "whitespace:cased"

    def provenance(self, locate: "Locator") -> dict[str, Any]:
        return {"unicode": unicodedata.unidata_version}

    def tokens(self, texts: list[str], locate: "Locator") -> Iterable[list[str]]:
        for text in texts:
            words = _WORD.findall(text)
            yield [w.lower() for w in words] if self.lowercase else words


class CharNgramTokenizer(StrictModel):
    """Character n-grams inside each word (a word shorter than n is one token)."""

    type: Literal["char_ngram"] = "char_ngram"
    n: int = Field(2, ge=1, le=6)

    @property
    def label(self) -> str:
        return f"char_ngram:{self.n}"

    def provenance(self, locate: "Locator") -> dict[str, Any]:
        return {"unicode": unicodedata.unidata_version}

    def tokens(self, texts: list[str], locate: "Locator") -> Iterable[list[str]]:
        n = self.n
        for text in texts:
            yield [w[i:i + n] for w in _WORD.findall(text.lower()) for i in range(max(1, len(w) - n + 1))]


class HuggingFaceTokenizer(StrictModel):
    """The subword tokenizer of a Hugging Face model (hub id, local path or pkg:)."""

    type: Literal["huggingface"] = "huggingface"
    model: str

    @property
    def label(self) -> str:
        return f"huggingface:{self.model}"

    def provenance(self, locate: "Locator") -> dict[str, Any]:
        return {"model": locate(self.model).identity, **versions("tokenizers", "transformers")}

    def tokens(self, texts: list[str], locate: "Locator") -> Iterable[list[str]]:
        from ragopt.stages.models import load_model

        tokenizer = load_model("tokenizer", locate(self.model), _hf_tokenizer)
        for text in texts:
            yield tokenizer.tokenize(text)


def _tokenizer_shorthand(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


TOKENIZERS = (KiwiTokenizer, MecabTokenizer, WhitespaceTokenizer, CharNgramTokenizer, HuggingFaceTokenizer)
Tokenizer = Annotated[
    Union[TOKENIZERS],
    Field(discriminator="type"),
    BeforeValidator(_tokenizer_shorthand),
]


@lru_cache(maxsize=1)
def _kiwi() -> Any:
    from kiwipiepy import Kiwi

    return Kiwi(num_workers=os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _mecab() -> Any:
    from mecab import MeCab

    return MeCab()


@lru_cache(maxsize=4)
def _hf_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _keep(tag: str, pos: str) -> bool:
    return pos == "all" or tag.split("-")[0] in CONTENT_POS


def token_stream(spec: Any, texts: list[str], locate: "Locator | None" = None, progress: bool = False
                 ) -> Iterator[list[str]]:
    """Tokens of each text by a tokenizer spec, one text at a time (a large corpus's tokens need
    not fit in memory as Python strings); Latin letters are lowercased so 'AI' and 'ai' match. A
    huggingface tokenizer's model is found through `locate` (a Locator)."""
    from tqdm.auto import tqdm

    from ragopt.stages.models import Locator

    with tqdm(total=len(texts), desc=f"tokenize {spec.label}", disable=not progress, leave=False,
              unit="text") as bar:
        for tokens in spec.tokens(texts, locate or Locator()):
            yield tokens
            bar.update()


def tokenize(spec: Any, texts: list[str], locate: "Locator | None" = None, progress: bool = False
             ) -> list[list[str]]:
    """Tokens of each text by a tokenizer spec, as a list (see token_stream)."""
    return list(token_stream(spec, texts, locate, progress))
