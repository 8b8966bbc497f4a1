"""A concrete pipeline: one value per setting, nothing left to search.

A PipelineSpec is what a trial evaluates and what best.yaml stores. Its JSON form keys
everything derived from it, so two equal specs always share their results. The retriever and
reranker fields accept every registered type.
"""

from __future__ import annotations

import hashlib

from pydantic import Field

from ragopt.chunkers import _base as chunkers
from ragopt.labels import model_label
from ragopt.params import StrictModel
from ragopt.rerankers import _base as rerankers
from ragopt.retrievers import _base as retrievers


class PipelineSpec(StrictModel):
    """A runnable pipeline: chunk documents (when it was tuned on documents), retrieve,
    optionally rerank, return top_k passages."""

    chunker: chunkers.spec_union() | None = None
    retriever: retrievers.spec_union()
    reranker: rerankers.spec_union() | None = None
    top_k: int = Field(ge=1)

    def key(self) -> str:
        """A content hash of the spec; a pipeline without a chunker keeps the key it had before
        chunkers existed."""
        exclude = {"chunker"} if self.chunker is None else set()
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]

    def describe(self) -> str:
        """A one-line human summary for tables and progress bars."""
        text = self.retriever.describe()
        if self.chunker is not None:
            text = f"{self.chunker.describe()} > {text}"
        if self.reranker is not None:
            text += f" > {self.reranker.describe()}"
        return f"{text} k={self.top_k}"

    def choices(self) -> dict[str, str]:
        """What this pipeline chose, by kind, for comparing choices across trials: the retriever
        (its type, a hybrid's parts), the models, the tokenizers and the reranker's model, each
        model by the name people know it by (ragopt.labels.model_label)."""
        parts = self.retriever.components() or [self.retriever]
        kinds = [p.kind() for p in parts]
        chunker = {} if self.chunker is None else {"chunker": self.chunker.type}
        return {
            **chunker,
            "retriever": f"{self.retriever.type}({'+'.join(kinds)})" if self.retriever.components() else kinds[0],
            "model": " + ".join(" + ".join(map(model_label, p.models())) or p.type for p in parts),
            "tokenizer": " + ".join(t.label for t in self.retriever.tokenizers()) or "none",
            "reranker": model_label(self.reranker.model) if self.reranker is not None else "none",
        }
