"""Hybrids: the fusion of the rankings of two or more plain retrievers (ragopt.stages.fusion), each
taken to the hybrid's candidate `depth`. The candidate depth is part of the spec, never raised
by the number of passages asked for, so a shorter fused ranking is a prefix of a longer one."""

from __future__ import annotations

from typing import Callable, ClassVar, Literal

from pydantic import Field, model_validator

from ragopt.stages import fusion
from ragopt.data.qa import Queries
from ragopt.stages.params import Chooser, FloatRange, bounded_floats, bounded_ints, choices
from ragopt.stages.ranking import Ranking
from ragopt.stages.retrievers._base import Retriever, RetrieverEntry, RetrieverSpec, register, spec_union

Normalization = Literal["min_max", "tmm", "z_score", "dbsf"]
DEFAULT_RRF_K = 60


class HybridSpec(RetrieverSpec):
    """Fusion of the rankings of two or more retrievers, each taken to `depth` candidates."""

    type: Literal["hybrid"] = "hybrid"
    retrievers: list[spec_union(composite=False)] = Field(min_length=2)
    fusion: Literal["rrf", "convex"]
    rrf_k: int | None = Field(None, ge=1)
    normalization: Normalization | None = None
    weights: list[float] | None = None
    depth: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> "HybridSpec":
        if self.fusion == "convex":
            if self.normalization is None or self.weights is None or len(self.weights) != len(self.retrievers):
                raise ValueError("convex fusion needs a normalization and one weight per retriever")
            if not all(0.0 <= w <= 1.0 for w in self.weights):
                raise ValueError(f"weights must lie in [0, 1]; got {self.weights}")
        return self

    def describe(self) -> str:
        parts = "+".join(r.describe() for r in self.retrievers)
        how = f"rrf(k={self.rrf_k})" if self.fusion == "rrf" else (
            f"cc({self.normalization},w={','.join(f'{w:.2f}' for w in self.weights or [])})")
        return f"{how}({parts})"

    def index_key(self) -> str:
        """Hybrids keep no index of their own: one HybridRetriever serves them all."""
        return "hybrid"

    def components(self) -> list[RetrieverSpec]:
        return list(self.retrievers)


class HybridConfig(RetrieverEntry):
    """Fusion of named retrievers. With two, `weight` is the first one's share; with more, each
    retriever draws a weight from `weight` and the weights are normalized to sum to 1."""

    type: Literal["hybrid"]
    composite: ClassVar[bool] = True
    retrievers: list[str] = Field(min_length=2)
    fusion: choices(Literal["rrf", "convex"]) = ["rrf"]
    rrf_k: bounded_ints(1) = [DEFAULT_RRF_K]
    normalization: choices(Normalization) = ["min_max"]
    weight: bounded_floats(0.0, 1.0) = FloatRange(low=0.0, high=1.0)
    depth: int = Field(100, ge=1)

    def references(self) -> list[str]:
        return list(self.retrievers)

    def check(self, max_depth: int) -> str | None:
        if self.depth < max_depth:
            return (f"depth: {self.depth} is below the deepest ranking this space needs ({max_depth}, from top_k and "
                    f"reranker depths); raise it")
        return None

    def unused(self) -> set[str]:
        return ({"weight", "normalization"} if "convex" not in self.fusion else set()) | (
            {"rrf_k"} if "rrf" not in self.fusion else set())

    def suggest(self, choose: Chooser, resolve: Callable[[str], RetrieverSpec]) -> HybridSpec:
        name = self.name
        components = [resolve(c) for c in self.retrievers]
        fusion_name = choose(f"{name}.fusion", self.fusion)
        if fusion_name == "rrf":
            return HybridSpec(retrievers=components, fusion="rrf", rrf_k=choose(f"{name}.rrf_k", self.rrf_k),
                              depth=self.depth)
        if len(components) == 2:
            first = choose(f"{name}.weight", self.weight)
            weights = [first, 1.0 - first]
        else:
            raw = [choose(f"{name}.weight.{c}", self.weight) for c in self.retrievers]
            weights = [w / sum(raw) for w in raw] if sum(raw) > 0 else [1.0 / len(raw)] * len(raw)
        return HybridSpec(retrievers=components, fusion="convex", weights=weights, depth=self.depth,
                          normalization=choose(f"{name}.normalization", self.normalization))


class HybridRetriever(Retriever):
    """Fuses its components' rankings, which the engine retrieves (and keeps) once each."""

    def search(self, spec: HybridSpec, queries: Queries, depth: int) -> Ranking:
        context = self.context
        parts = [context.retrieve(r, queries, spec.depth) for r in spec.retrievers]
        n_docs = len(context.corpus)
        if spec.fusion == "rrf":
            return fusion.rrf(parts, DEFAULT_RRF_K if spec.rrf_k is None else spec.rrf_k, n_docs, depth)
        mins = [context.retriever(r).theoretical_min(r) for r in spec.retrievers]
        return fusion.convex(parts, spec.weights, spec.normalization, mins, n_docs, depth)


register(HybridConfig, HybridSpec, HybridRetriever)
