"""A concrete pipeline: one value per setting, nothing left to search.

A PipelineSpec is what a trial evaluates and what best.yaml stores. Its JSON form keys
everything derived from it, so two equal specs always share their results. It has one field per
stage kind (ragopt.stages.protocol.STAGES: chunker, retriever, reranker), each accepting every type its
registry holds, and top_k.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from pydantic import Field, create_model

from ragopt.stages.labels import model_label, tuned_label
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

    def with_retrievers(self, change: Callable[[Any], Any]) -> "_Pipeline":
        """The pipeline with each plain retriever (a hybrid's parts, else the retriever) replaced
        by `change(part)`: how a tuned model's folder takes the place of its settings."""
        retriever = self.retriever
        if retriever.components():
            retriever = retriever.model_copy(update={"retrievers": [change(p) for p in retriever.components()]})
        else:
            retriever = change(retriever)
        return self.model_copy(update={"retriever": retriever})

    def describe(self) -> str:
        """A one-line human summary for tables and progress bars: its stages, then k."""
        return " > ".join(part.describe() for _, part in self.stages()) + f" k={self.top_k}"

    def choices(self) -> dict[str, str]:
        """What this pipeline chose, by kind, for comparing choices across trials: the chunker's
        type (over documents), the retriever (its type, a hybrid's parts), the models, the
        tokenizers and the reranker's model, each model by the name people know it by
        (ragopt.stages.labels.model_label); a model tuned in the study is its base's name + '+ft',
        so that base and tuned compare as two choices."""
        retriever = self.retriever
        parts = retriever.components() or [retriever]
        kinds = [p.kind() for p in parts]
        chunker = {} if self.chunker is None else {"chunker": self.chunker.type}
        return {
            **chunker,
            "retriever": f"{retriever.type}({'+'.join(kinds)})" if retriever.components() else kinds[0],
            "model": " + ".join(_models_label(p) for p in parts),
            "tokenizer": " + ".join(t.label for t in retriever.tokenizers()) or "none",
            "reranker": model_label(self.reranker.model) if self.reranker is not None else "none",
        }


def _models_label(part: Any) -> str:
    """The models a retriever runs, by name (its type when it runs none): a tuned bi-encoder's
    is its base model's + '+ft' (the guide it trained with runs no query)."""
    if getattr(part, "finetune", None) is not None:
        return tuned_label(part.model)
    return " + ".join(map(model_label, part.models())) or part.type


PipelineSpec = create_model(
    "PipelineSpec", __base__=_Pipeline, __doc__=_Pipeline.__doc__, __module__=__name__,
    **{stage.name: ((stage.spec_union | None), None) if stage.optional else (stage.spec_union, ...)
       for stage in STAGES},
    top_k=(int, Field(ge=1)))
