"""Token windows: `size` consecutive tokens per chunk, the next window starting `overlap` tokens
before the end of the last, counted with a Hugging Face fast tokenizer (or in characters).

Hand-written on the tokenizer's offset mapping: no library returns exact character offsets for
token windows (bench/bench_chunkers.py, 256 MiniLM tokens on the 32 autorag-ko documents):
chonkie's TokenChunker adds up the lengths of decoded windows, which WordPiece lowercases and
respaces (0% of its offsets exact); llama-index-core's TokenTextSplitter packs words, not tokens,
finds its chunks again by str.find and took 9 s where this takes 0.8 s. A window runs from the
start of its first token to the start of the token after it, so that the characters no token
covers (those a tokenizer's normalizer drops) still fall in a chunk.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from ragopt.stages.chunkers._base import RETRIEVER, Chunker, ChunkerEntry, ChunkerSpec, Span, described, register
from ragopt.stages.chunkers._units import Units, overlap_units
from ragopt.stages.params import Chooser, bounded_floats, bounded_ints, choices

if TYPE_CHECKING:
    from ragopt.stages.retrievers import RetrieverSpec


class TokenWindowSpec(ChunkerSpec):
    """Windows of `size` tokens of `tokenizer`; `overlap` below 1 is a share of size, else tokens."""

    type: Literal["token_window"] = "token_window"
    size: int
    overlap: float = 0.0
    tokenizer: str

    def describe(self) -> str:
        return described(self.type, {"size": self.size, "overlap": self.overlap, "tokenizer": self.tokenizer})


class TokenWindowConfig(ChunkerEntry):
    """Token windows; size, overlap and the tokenizer ('retriever': the trial's retriever model's) are searchable."""

    type: Literal["token_window"]
    size: bounded_ints(1) = [256]
    overlap: bounded_floats(0.0, math.inf) = [0.0]
    tokenizer: choices(str) = [RETRIEVER]

    def suggest(self, choose: Chooser, retriever: "RetrieverSpec | None" = None) -> TokenWindowSpec:
        return TokenWindowSpec(size=choose(f"{self.name}.size", self.size),
                               overlap=choose(f"{self.name}.overlap", self.overlap),
                               tokenizer=self._model(choose, "tokenizer", retriever))


class TokenWindowChunker(Chunker):
    def cut(self, texts: list[str]) -> list[list[Span]]:
        size = self.spec.size
        stride = size - overlap_units(size, self.spec.overlap)
        cut = []
        for text, offsets in zip(texts, Units(self.spec.tokenizer, self.context.locate).offsets(texts)):
            starts = [0] + [start for start, _ in offsets[1:]]
            spans = []
            for first in range(0, len(starts), stride):
                after = first + size
                spans.append((starts[first], starts[after] if after < len(starts) else len(text)))
                if after >= len(starts):
                    break
            cut.append(spans)
        return cut


register(TokenWindowConfig, TokenWindowSpec, TokenWindowChunker)
