"""Recursive splitting by semchunk: a text is cut at its most meaningful boundary (blank lines,
then line breaks, tabs, whitespace after sentence punctuation, any whitespace, punctuation, and
at last between characters) until each piece fits `size`, and neighbouring pieces are merged up
to `size` again. semchunk returns each chunk's exact character offsets.

Why semchunk (bench/bench_chunkers.py on the 32 autorag-ko documents, 594k characters): exact
offsets are its documented contract (chunks[i] == text[start:end]) and held for every chunk,
covering every character, as chonkie's RecursiveChunker's (whose chunks carry the whitespace
between them) and llama-index-core's SentenceSplitter's (found afterwards by str.find) did;
0.02 s at 512 characters (chonkie 0.02 s, llama-index 1.0 s) and 3.0 s at 256 MiniLM tokens
(chonkie 1.0 s, which counts tokens in batches); overlap built in; one dependency (tqdm) against
chonkie's 12 and llama-index-core's 60, imported in 0.04 s.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import semchunk

from ragopt.stages.chunkers._base import CHARACTERS, Chunker, ChunkerEntry, ChunkerSpec, Span, described, register
from ragopt.stages.chunkers._units import Units, overlap_units
from ragopt.stages.params import Chooser, bounded_floats, bounded_ints, choices

if TYPE_CHECKING:
    from ragopt.stages.retrievers import RetrieverSpec


class RecursiveSpec(ChunkerSpec):
    """Chunks of at most `size` units of `tokenizer`; `overlap` below 1 is a share of size, else units."""

    type: Literal["recursive"] = "recursive"
    size: int
    overlap: float = 0.0
    tokenizer: str = CHARACTERS

    def describe(self) -> str:
        return described(self.type, {"size": self.size, "overlap": self.overlap, "tokenizer": self.tokenizer})


class RecursiveConfig(ChunkerEntry):
    """Recursive splitting; size, overlap and the tokenizer (characters by default) are searchable."""

    type: Literal["recursive"]
    size: bounded_ints(1) = [512]
    overlap: bounded_floats(0.0, math.inf) = [0.0]
    tokenizer: choices(str) = [CHARACTERS]

    def suggest(self, choose: Chooser, retriever: "RetrieverSpec | None" = None) -> RecursiveSpec:
        return RecursiveSpec(size=choose(f"{self.name}.size", self.size),
                             overlap=choose(f"{self.name}.overlap", self.overlap),
                             tokenizer=self._model(choose, "tokenizer", retriever))


class RecursiveChunker(Chunker):
    def cut(self, texts: list[str]) -> list[list[Span]]:
        units = Units(self.spec.tokenizer, self.context.locate)
        count = len if units.tokenizer is None else lru_cache(maxsize=None)(units.count)
        overlap = overlap_units(self.spec.size, self.spec.overlap) or None
        return [semchunk.chunk(text, self.spec.size, count, offsets=True, overlap=overlap, memoize=False)[1]
                for text in texts]


register(RecursiveConfig, RecursiveSpec, RecursiveChunker)
