"""Each document is one chunk (its text without the whitespace around it): for documents that
are passages already."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ragopt.stages.chunkers._base import Chunker, ChunkerEntry, ChunkerSpec, Span, register
from ragopt.stages.params import Chooser

if TYPE_CHECKING:
    from ragopt.stages.retrievers import RetrieverSpec


class AsGivenSpec(ChunkerSpec):
    type: Literal["as_given"] = "as_given"

    def describe(self) -> str:
        return self.type


class AsGivenConfig(ChunkerEntry):
    """Each document whole; nothing to search."""

    type: Literal["as_given"]
    name: str = "as_given"

    def suggest(self, choose: Chooser, retriever: "RetrieverSpec | None" = None) -> AsGivenSpec:
        return AsGivenSpec()


class AsGivenChunker(Chunker):
    def cut(self, texts: list[str]) -> list[list[Span]]:
        return [[(0, len(text))] for text in texts]


register(AsGivenConfig, AsGivenSpec, AsGivenChunker)
