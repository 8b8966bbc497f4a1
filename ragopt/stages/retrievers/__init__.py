"""Retrievers, one module per type, each registering its config entry, spec and index with
`ragopt.stages.retrievers._base.register`. Composite types (hybrid) come last: they combine the plain
types registered before them."""

from ragopt.stages.retrievers import bm25, dense, bge_m3, multi_vector  # noqa: F401  (plain types register themselves)
from ragopt.stages.retrievers import hybrid  # noqa: F401  (composite: after the plain types)
from ragopt.stages.retrievers._base import REGISTRY, Context, Retriever, RetrieverEntry, RetrieverSpec, register

__all__ = ["REGISTRY", "Context", "Retriever", "RetrieverEntry", "RetrieverSpec", "register"]
