"""Semantic breakpoints: a document's Korean sentences (kiwipiepy) are embedded, and a chunk ends
after a sentence whose cosine distance to the next (1 - cos of their embeddings) exceeds the
`percentile`-th percentile of that document's distances, as LlamaIndex's
SemanticSplitterNodeParser does (without its neighbour buffer); a group of sentences bigger than
`size` units is packed into chunks of at most `size` as the sentence chunker does.

Hand-written (a percentile over numpy distances): llama-index-core's splitter has no size limit
(its largest chunk of autorag-ko-docs was 21,512 characters) and finds its chunks' offsets by
str.find; chonkie's SemanticChunker smooths similarities with a Savitzky-Golay filter and splits
sentences on punctuation, not Korean ones. The embeddings come from the context
(`embed(model, texts)`, the study's model pool and cache): they are the cost, 60 s for the 3,930
sentences of autorag-ko-docs with all-MiniLM-L6-v2 on 2 CPU cores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from ragopt.stages.chunkers._base import (CHARACTERS, RETRIEVER, Chunker, ChunkerEntry, ChunkerSpec, Span, described,
                                   register)
from ragopt.stages.chunkers._sentences import fit, pack, sentence_pieces
from ragopt.stages.chunkers._units import Units
from ragopt.errors import ConfigError
from ragopt.stages.params import Chooser, bounded_floats, bounded_ints, choices

if TYPE_CHECKING:
    from ragopt.stages.retrievers import RetrieverSpec


class SemanticSpec(ChunkerSpec):
    """Breaks above the `percentile` of neighbour distances under `model`, chunks of at most
    `size` units of `tokenizer`."""

    type: Literal["semantic"] = "semantic"
    percentile: float = 95.0
    size: int
    model: str
    tokenizer: str = CHARACTERS

    def describe(self) -> str:
        return described(self.type, {"percentile": self.percentile, "size": self.size, "model": self.model,
                                     "tokenizer": self.tokenizer})


class SemanticConfig(ChunkerEntry):
    """Semantic breakpoints; percentile, size, the embedding model ('retriever': the trial's
    retriever model) and the tokenizer are searchable."""

    type: Literal["semantic"]
    percentile: bounded_floats(0.0, 100.0) = [95.0]
    size: bounded_ints(1) = [1024]
    model: choices(str) = [RETRIEVER]
    tokenizer: choices(str) = [CHARACTERS]

    def suggest(self, choose: Chooser, retriever: "RetrieverSpec | None" = None) -> SemanticSpec:
        return SemanticSpec(percentile=choose(f"{self.name}.percentile", self.percentile),
                            size=choose(f"{self.name}.size", self.size), model=self._model(choose, "model", retriever),
                            tokenizer=self._model(choose, "tokenizer", retriever))


class SemanticChunker(Chunker):
    def cut(self, texts: list[str]) -> list[list[Span]]:
        if self.context.embed is None:
            raise ConfigError(f"{self.spec.describe()} needs sentence embeddings, and this run has no model to "
                              "compute them; use another chunker")
        pieces = sentence_pieces(texts)
        sentences = [text[s:e].strip() for text, spans in zip(texts, pieces) for s, e in spans]
        if not sentences:
            return [[] for _ in texts]
        embeddings = np.asarray(self.context.embed(self.spec.model, sentences), dtype=np.float64)
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        units = Units(self.spec.tokenizer, self.context.locate)
        bounds = np.cumsum([0] + [len(spans) for spans in pieces]).tolist()
        return [[chunk for group in self._groups(spans, embeddings[first:end])
                 for chunk in pack(*fit(text, group, self.spec.size, units), self.spec.size)]
                for text, spans, first, end in zip(texts, pieces, bounds, bounds[1:])]

    def _groups(self, sentences: list[Span], vectors: np.ndarray) -> list[list[Span]]:
        """The runs of sentences between the breaks: after each sentence farther from the next
        than the percentile of the text's distances."""
        distances = 1.0 - np.sum(vectors[:-1] * vectors[1:], axis=1)
        if not len(distances):
            return [sentences] if sentences else []
        breaks = (np.flatnonzero(distances > np.percentile(distances, self.spec.percentile)) + 1).tolist()
        return [sentences[first:end] for first, end in zip([0, *breaks], [*breaks, len(sentences)])]

register(SemanticConfig, SemanticSpec, SemanticChunker)
