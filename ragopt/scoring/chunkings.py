"""The corpora a study cuts from its documents: one chunking per chunker spec, each with its
engine and its questions' relevance there, built once per process and, on disk, once per
content. Chunk spans are cached by the documents' content and the chunker's settings; the
chunks' tokens and embeddings then go through the engine's caches like any corpus's.

The questions are labelled by evidence spans, so one label serves every chunking: a chunk is
relevant when it covers `min_coverage` of an evidence span or the span covers that share of the
chunk (ragopt.scoring.spans), and the evidence metrics score the characters retrieved, at each k and
within each token budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ragopt.stages.cache import Cache, entry_key
from ragopt.stages.chunkers import ChunkContext, ChunkerSpec, chunk_spans, chunking_of
from ragopt.data.qa import Corpus, QASet, content_key
from ragopt.data.documents import ChunkSpans, Documents, SpanQA
from ragopt.stages.engine import Engine
from ragopt.scoring.evaluation import Target
from ragopt.provenance import versions
from ragopt.scoring.spans import TokenEnds, budget_metrics, span_metrics, span_qrels, token_ends
from ragopt.stages.spec import PipelineSpec

CHUNKING_LIBRARIES = ("kiwipiepy", "semchunk", "transformers", "tokenizers", "sentence-transformers", "torch")
"""The libraries whose versions key a cached chunking (tokenizers count sizes, kiwi finds sentences,
a model embeds them)."""

MAX_BUDGET_DEPTH = 1000
"""The deepest a ranking is scored to fill a token budget with small chunks."""


@dataclass(frozen=True)
class Chunked:
    """One chunking of the documents: its corpus (a chunk's id is `document#start-end`), the
    chunks' spans aligned with the corpus rows, and what its pipelines are scored against."""

    chunker: ChunkerSpec
    spans: ChunkSpans
    target: Target

    @property
    def corpus(self) -> Corpus:
        """The chunks as a corpus: the one its engine searches."""
        return self.target.engine.corpus


def as_qa(qa: SpanQA) -> QASet:
    """The questions of a span-labelled set as a QASet with no corpus groups: their relevance
    depends on the chunking (Chunked.target.groups)."""
    return QASet(qa.qids, qa.queries, [[] for _ in qa.qids], qa.domains, qa.source)


class Chunkings:
    """Chunkings of one set of documents, their engines sharing one cache and the loaded models.

    Example:
        chunkings = Chunkings(documents, qa, Cache("cache"), "cpu")
        ranking = chunkings.target(spec).engine.run(spec, qa.queries)
    """

    def __init__(self, documents: Documents, qa: SpanQA | None, cache: Cache, device: str = "auto",
                 progress: bool = False, exact_search_max: int = 1_000_000, min_coverage: float = 0.5,
                 budgets: tuple[int, ...] = (), budget_tokenizer: Any = None, engine: Engine | None = None) -> None:
        self.documents = documents.masked(qa.masked) if qa is not None else documents
        self.qa, self.min_coverage, self.budgets = qa, min_coverage, tuple(budgets)
        self.budget_tokenizer = budget_tokenizer
        """What counts a budget's tokens: a Hugging Face fast tokenizer, or None for words and punctuation."""
        self.engine = engine or Engine(Corpus([], []), cache, device, progress, exact_search_max)
        """The engine of no corpus whose cache, models and device every chunking's engine shares
        (given: another Chunkings' engine, whose cache and device then stand for `cache` and `device`)."""
        self.context = ChunkContext(self.engine.locate, self._embed)
        self._doc_index = self.documents.index_of()
        self._done: dict[str, Chunked] = {}

    def sharing(self, documents: Documents, qa: SpanQA) -> "Chunkings":
        """Chunkings of `documents` for other questions (blanked at those questions' own masked
        spans), with this one's settings and engine: one cache, every model loaded once."""
        return Chunkings(documents, qa, self.engine.cache, min_coverage=self.min_coverage, budgets=self.budgets,
                         budget_tokenizer=self.budget_tokenizer, engine=self.engine)

    def target(self, spec: PipelineSpec) -> Target:
        """What the pipeline is scored against: its chunking's engine and relevance."""
        assert spec.chunker is not None, "a pipeline over documents names its chunker"
        return self.get(spec.chunker).target

    def get(self, chunker: ChunkerSpec) -> Chunked:
        """The chunking a chunker makes of the documents, built on first use."""
        key = chunker.key()
        if key not in self._done:
            self._done[key] = self._chunked(chunker)
        return self._done[key]

    def spans_of(self, chunker: ChunkerSpec) -> ChunkSpans:
        """A chunker's spans over the documents, from the disk cache when it has them: keyed by
        the documents' content, the settings, the identity of the models it names and the
        versions of the libraries that cut."""
        key = entry_key("chunks", self.documents.key, chunker.model_dump(mode="json"),
                        [self.engine.locate(m).identity for m in chunker.models()], versions(*CHUNKING_LIBRARIES))

        def compute() -> dict[str, np.ndarray]:
            spans = chunk_spans(chunker, self.documents, self.context)
            return {"document": spans.document, "start": spans.start, "end": spans.end}

        arrays = self.engine.cache.arrays("chunks", key, compute)
        return ChunkSpans(arrays["document"], arrays["start"], arrays["end"])

    def _embed(self, model: str, texts: list[str]) -> np.ndarray:
        """Sentence embeddings for a semantic chunker, L2-normalized, through the dense
        retriever's cached encoding and the shared engine's loaded models (its own corpus is
        empty: the texts are embedded as they are asked for)."""
        from ragopt.stages.retrievers.dense import DenseSpec

        vectors = self.engine.retriever(DenseSpec(model=model)).embed(texts, content_key(texts), "passage")
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def _chunked(self, chunker: ChunkerSpec) -> Chunked:
        chunking = chunking_of(chunker, self.documents, self.spans_of(chunker))
        engine = self.engine.sibling(chunking.corpus)
        if self.qa is None:
            return Chunked(chunker, chunking.spans, Target(engine, []))
        evidence, spans, index = self.qa.evidence, chunking.spans, self._doc_index
        groups = span_qrels(evidence, spans, index, self.min_coverage)
        texts = [self.documents[d].text[a:b] for d, a, b in zip(spans.document, spans.start, spans.end)]
        ends = token_ends(texts, self.budget_tokenizer) if self.budgets else None
        depth = _budget_depth(ends, self.budgets)

        def extra(ranked: np.ndarray, rows: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
            chosen = [evidence[i] for i in rows]
            values = span_metrics(ranked, chosen, spans, index, ks)
            if self.budgets:
                values.update(budget_metrics(ranked, chosen, spans, index, ends, list(self.budgets)))
            return values

        return Chunked(chunker, spans, Target(engine, groups, extra, depth))


def _budget_depth(ends: TokenEnds | None, budgets: tuple[int, ...]) -> int:
    """How deep a ranking must go for its chunks to fill the largest budget whichever chunks it
    ranks first: as many as the smallest chunks it takes to reach it (at most MAX_BUDGET_DEPTH)."""
    if not budgets or ends is None or not len(ends.counts):
        return 0
    smallest = np.cumsum(np.sort(ends.counts))
    return int(min(MAX_BUDGET_DEPTH, len(smallest), np.searchsorted(smallest, max(budgets)) + 1))


def describe_chunking(chunked: Chunked) -> dict[str, Any]:
    """A chunking's size, for tables and the report: chunks and their mean characters."""
    lengths = chunked.spans.end - chunked.spans.start
    return {"chunks": int(len(lengths)), "mean_chars": float(lengths.mean()) if len(lengths) else 0.0}
