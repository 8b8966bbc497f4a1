"""Documents cut by a chunker spec into a corpus whose every passage knows its span: the corpus
the retrievers index, and ChunkSpans aligned with its rows, which span relevance and the span
metrics read. The spans alone (chunk_spans) are what a cache keeps; chunking_of makes the
corpus from them again."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ragopt.stages.chunkers._base import REGISTRY, ChunkContext, ChunkerSpec
from ragopt.data.qa import Corpus, Metadata
from ragopt.data.documents import Documents
from ragopt.data.documents import ChunkSpans


@dataclass(frozen=True)
class Chunking:
    """A chunking of documents: `corpus` row r is the text of `spans` row r."""

    corpus: Corpus
    spans: ChunkSpans


def chunk_id(doc_id: str, start: int, end: int) -> str:
    """A chunk's passage id: its document and span ('report.pdf#120-630'); unique, since the
    suffix '#start-end' holds no '#'."""
    return f"{doc_id}#{start}-{end}"


def chunk_spans(spec: ChunkerSpec, documents: Documents, context: ChunkContext | None = None) -> ChunkSpans:
    """Every document's spans cut by `spec`, in the order of their chunk ids (a corpus's rows)."""
    chunker = REGISTRY[spec.type].implementation(spec, context or ChunkContext())
    cut = chunker.spans([doc.text for doc in documents])
    rows = sorted((chunk_id(doc.doc_id, start, end), d, start, end)
                  for d, (doc, spans) in enumerate(zip(documents, cut)) for start, end in spans)
    return ChunkSpans([r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])


def chunking_of(spec: ChunkerSpec, documents: Documents, spans: ChunkSpans) -> Chunking:
    """The corpus of `spans` of the documents that `spec` cut: passages `text[start:end]` with
    the document's metadata plus `document`, `start` and `end`; the spans in its rows' order."""
    docs = [documents[int(d)] for d in spans.document]
    places = list(zip(docs, spans.start.tolist(), spans.end.tolist()))
    ids = [chunk_id(doc.doc_id, start, end) for doc, start, end in places]
    order = np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)
    metadata = [{**doc.metadata, "document": doc.doc_id, "start": start, "end": end} for doc, start, end in places]
    corpus = Corpus(ids, [doc.text[start:end] for doc, start, end in places],
                    source=f"{documents.source} ({spec.describe()})",
                    metadata=Metadata({"metadata": metadata}) if places else None)
    return Chunking(corpus, ChunkSpans(spans.document[order], spans.start[order], spans.end[order]))


def chunk_documents(spec: ChunkerSpec, documents: Documents, context: ChunkContext | None = None) -> Chunking:
    """Every document cut by `spec` into a corpus (see chunking_of)."""
    return chunking_of(spec, documents, chunk_spans(spec, documents, context))
