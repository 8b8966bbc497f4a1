"""Chunkers, one module per type, each registering its config entry, spec and implementation
with `ragopt.stages.chunkers._base.register`; `chunk_documents` cuts documents with a spec into a corpus
(`chunk_spans`, which a cache can keep, then `chunking_of`)."""

from ragopt.stages.chunkers import token_window, sentence, recursive, semantic, as_given  # noqa: F401  (types register)
from ragopt.stages.chunkers._base import (CHARACTERS, REGISTRY, RETRIEVER, ChunkContext, Chunker, ChunkerEntry,
                                          ChunkerSpec, register)
from ragopt.stages.chunkers.chunking import Chunking, chunk_documents, chunk_id, chunk_spans, chunking_of

__all__ = ["CHARACTERS", "REGISTRY", "RETRIEVER", "ChunkContext", "Chunker", "ChunkerEntry", "ChunkerSpec",
           "Chunking", "chunk_documents", "chunk_id", "chunk_spans", "chunking_of", "register"]
