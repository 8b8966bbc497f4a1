"""A concrete pipeline: one value per setting, nothing left to search.

A PipelineSpec is what a trial evaluates and what best.yaml stores. Its JSON form keys
everything derived from it, so two equal specs always share their results. The retriever and
reranker fields accept every registered type.
"""

from __future__ import annotations

from pydantic import Field

from ragopt.params import StrictModel
from ragopt.rerankers import _base as rerankers
from ragopt.retrievers import _base as retrievers


class PipelineSpec(StrictModel):
    """A runnable pipeline: retrieve, optionally rerank, return top_k passages."""

    retriever: retrievers.spec_union()
    reranker: rerankers.spec_union() | None = None
    top_k: int = Field(ge=1)

    def describe(self) -> str:
        """A one-line human summary for tables and progress bars."""
        text = self.retriever.describe()
        if self.reranker is not None:
            text += f" > {self.reranker.describe()}"
        return f"{text} k={self.top_k}"
