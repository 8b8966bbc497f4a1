"""A concrete pipeline: one value per setting, nothing left to search.

A PipelineSpec is what a trial evaluates and what best.yaml stores. Its JSON form keys
everything derived from it, so two equal specs always share their results. It has one field per
stage kind (ragopt.stages.protocol.STAGES: chunker, retriever, reranker), each accepting every type its
registry holds, and top_k.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field, create_model

from ragopt.stages.labels import model_label
from ragopt.stages.params import StrictModel
from ragopt.stages.protocol import STAGES


class _Pipeline(StrictModel):
    """A runnable pipeline: one spec per stage of ragopt.stages.protocol.STAGES (chunk documents when it
    was tuned on documents, retrieve, optionally rerank), then top_k passages."""

    def stages(self) -> list[tuple[str, Any]]:
        """The pipeline's stages that it runs, in the order data flows, with their specs."""
        return [(stage.name, part) for stage in STAGES if (part := getattr(self, stage.name)) is not None]

    def key(self) -> str:
        """A content hash of the spec; a stage a pipeline goes without is left out, so that adding a
        stage kind changes no existing pipeline's key."""
        exclude = {stage.name for stage in STAGES if getattr(self, stage.name) is None}
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]

    def describe(self) -> str:
        """A one-line human summary for tables and progress bars: its stages, then k."""
        return " > ".join(part.describe() for _, part in self.stages()) + f" k={self.top_k}"

    def choices(self) -> dict[str, str]:
        """What this pipeline chose, by kind, for comparing choices across trials: the chunker's
        type (over documents), the retriever (its type, a hybrid's parts), the models, the
        tokenizers and the reranker's model, each model by the name people know it by
        (ragopt.stages.labels.model_label)."""
        retriever = self.retriever
        parts = retriever.components() or [retriever]
        kinds = [p.kind() for p in parts]
        chunker = {} if self.chunker is None else {"chunker": self.chunker.type}
        return {
            **chunker,
            "retriever": f"{retriever.type}({'+'.join(kinds)})" if retriever.components() else kinds[0],
            "model": " + ".join(" + ".join(map(model_label, p.models())) or p.type for p in parts),
            "tokenizer": " + ".join(t.label for t in retriever.tokenizers()) or "none",
            "reranker": model_label(self.reranker.model) if self.reranker is not None else "none",
        }


PipelineSpec = create_model(
    "PipelineSpec", __base__=_Pipeline, __doc__=_Pipeline.__doc__, __module__=__name__,
    **{stage.name: ((stage.spec_union | None), None) if stage.optional else (stage.spec_union, ...)
       for stage in STAGES},
    top_k=(int, Field(ge=1)))
