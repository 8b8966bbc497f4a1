"""Sentence packing: Korean sentences found by kiwipiepy (split_into_sents, which gives their
character offsets), packed in order into chunks of at most `size` units, each chunk after the
first repeating the last `overlap` sentences of the one before. A sentence bigger than `size`
is cut by semchunk first.

Hand-written packing (ten lines): chonkie's SentenceChunker and llama-index-core's
SentenceSplitter find sentences by punctuation or NLTK, which misses Korean sentences that end
without a full stop (common in reports and slides), and take none from outside. kiwipiepy's
analysis is the cost: 4.7-6 s for the 594k characters of autorag-ko-docs on 2 cores, where
chonkie's punctuation splitting takes 0.04 s; a process splits each text once for every size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ragopt.stages.chunkers._base import CHARACTERS, Chunker, ChunkerEntry, ChunkerSpec, Span, described, register
from ragopt.stages.chunkers._sentences import fit, pack, sentence_pieces
from ragopt.stages.chunkers._units import Units
from ragopt.stages.params import Chooser, bounded_ints, choices

if TYPE_CHECKING:
    from ragopt.stages.retrievers import RetrieverSpec


class SentenceSpec(ChunkerSpec):
    """Sentences packed up to `size` units of `tokenizer`, `overlap` sentences repeated."""

    type: Literal["sentence"] = "sentence"
    size: int
    overlap: int = 0
    tokenizer: str = CHARACTERS

    def describe(self) -> str:
        return described(self.type, {"size": self.size, "overlap": self.overlap, "tokenizer": self.tokenizer})


class SentenceConfig(ChunkerEntry):
    """Sentence packing; size, overlap (in sentences) and the tokenizer are searchable."""

    type: Literal["sentence"]
    size: bounded_ints(1) = [512]
    overlap: bounded_ints(0) = [0]
    tokenizer: choices(str) = [CHARACTERS]

    def suggest(self, choose: Chooser, retriever: "RetrieverSpec | None" = None) -> SentenceSpec:
        return SentenceSpec(size=choose(f"{self.name}.size", self.size),
                            overlap=choose(f"{self.name}.overlap", self.overlap),
                            tokenizer=self._model(choose, "tokenizer", retriever))


class SentenceChunker(Chunker):
    def cut(self, texts: list[str]) -> list[list[Span]]:
        units = Units(self.spec.tokenizer, self.context.locate)
        return [pack(*fit(text, pieces, self.spec.size, units), self.spec.size, self.spec.overlap)
                for text, pieces in zip(texts, sentence_pieces(texts))]


register(SentenceConfig, SentenceSpec, SentenceChunker)
