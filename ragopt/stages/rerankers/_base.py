"""The reranker plug-in kind: a config entry (its `depth` searchable), a spec, and a PairScorer
that scores (query, passage) pairs, registered together under the config's `type`. Reranking
reorders the first `depth` candidates of a ranking by the scorer, with every (model, query,
passage) score cached, so candidate lists shared by several retrievers or depths are scored once.

Contract of a PairScorer (checked for every registered type by ragopt.testing.rerankers): one
finite float32 score per pair, higher is more relevant, the same whatever the order, batch or
company the pair is scored in, equal to the library's own scoring of the model.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Literal, Sequence

import numpy as np
from pydantic import BeforeValidator, Field

from ragopt.stages.labels import model_label
from ragopt.stages.params import Chooser, StrictModel, bounded_ints
from ragopt.stages.ranking import Ranking
from ragopt.stages.registry import Registry, tagged_union

if TYPE_CHECKING:
    from ragopt.stages.cache import ScoreTable
    from ragopt.stages.models import Located, ModelPool


class RerankerSpec(StrictModel):
    """A concrete reranker: a model and the number of candidates it reorders."""

    type: str
    model: str
    depth: int = Field(20, ge=1)

    def describe(self) -> str:
        return f"{model_label(self.model)}@{self.depth}"

    def score_settings(self) -> dict[str, Any]:
        """The settings its scores depend on (not the depth, batch size or model name: the model
        enters cache keys by its revision)."""
        return self.model_dump(exclude={"depth", "batch_size", "model"})


class RerankerEntry(StrictModel):
    """A reranker in the config: a unique name, its settings and a searchable `depth`."""

    type: str
    name: str
    model: str
    depth: bounded_ints(1) = [20]

    def suggest(self, choose: Chooser) -> RerankerSpec:
        spec_class = REGISTRY[self.type].spec
        return spec_class(**self.model_dump(exclude={"name", "depth"}), depth=choose(f"{self.name}.depth", self.depth))

    def unused(self) -> set[str]:
        """Settings no suggestion of this entry reads; a reranker reads all of its own."""
        return set()

    def models(self) -> list[str]:
        return [self.model]

    def localized(self, local: Callable[[str], str]) -> "RerankerEntry":
        return self.model_copy(update={"model": local(self.model)})

    def depths(self) -> list[int]:
        return self.depth.grid() if not isinstance(self.depth, list) else list(self.depth)


class NoReranker(StrictModel):
    """The choice of no reranker (written `none` in the config)."""

    type: Literal["none"]
    name: str = "none"

    def suggest(self, choose: Chooser) -> None:
        return None

    def models(self) -> list[str]:
        return []

    def localized(self, local: Callable[[str], str]) -> "NoReranker":
        return self

    def depths(self) -> list[int]:
        return []


class PairScorer(ABC):
    """A loaded model that scores (query, passage) pairs (see the module's contract)."""

    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    """The libraries whose versions its scores depend on (part of the score cache key)."""

    def __init__(self, spec: Any, located: "Located", device: str, pool: "ModelPool", key: str) -> None:
        self.spec, self.located, self.device, self.pool, self.key = spec, located, device, pool, key

    @staticmethod
    def precision(spec: Any, device: str) -> str:
        """The precision the model runs in on this device (part of the score cache key)."""
        return "float32"

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One float32 score per pair, in input order."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.score_pairs(pairs), dtype=np.float32)

    @abstractmethod
    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The scores of one or more pairs, in input order."""


REGISTRY: Registry[PairScorer] = Registry()
register = REGISTRY.register


def spec_union() -> Any:
    """The registered spec classes as a pydantic union tagged by `type`."""
    return REGISTRY.spec_union()


def entry_union() -> Any:
    """`none` and the registered config entry classes, tagged by `type` ('none' alone is short for it)."""
    return Annotated[tagged_union((NoReranker, *REGISTRY.entries())),
                     BeforeValidator(_none_shorthand)]


def _none_shorthand(value: Any) -> Any:
    return {"type": "none"} if value in ("none", None) else value


def by_length(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Pair order, longest first: batches of similar length carry little padding, and the
    largest batch runs first, so an out-of-memory shows at once."""
    return np.argsort([-(len(q) + len(p)) for q, p in pairs], kind="stable")


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """64-bit content hashes of texts, the halves of a pair's cache key."""
    return np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts],
                    dtype=np.uint64)


def rerank(ranking: Ranking, depth: int, query_texts: Sequence[str], query_hashes: np.ndarray,
           doc_texts: Sequence[str], doc_hashes: np.ndarray, load_scorer: Callable[[], PairScorer],
           table: "ScoreTable") -> Ranking:
    """Reorder ranks [0, depth) by the scorer, ties kept in the retriever's order; ranks from
    depth on keep the retriever's order. The scorer is loaded only when some pair is not in the
    score table yet."""
    head = ranking.ids[:, :depth]
    valid = head >= 0
    rows, cols = np.nonzero(valid)
    docs = head[rows, cols]
    with np.errstate(over="ignore"):
        keys = query_hashes[rows] * np.uint64(0x9E3779B97F4A7C15) ^ doc_hashes[docs]
    scores, found = table.lookup(keys)
    if not found.all():
        todo = np.flatnonzero(~found)
        unique_keys, first = np.unique(keys[todo], return_index=True)
        pick = todo[first]
        fresh = load_scorer().score([(query_texts[rows[i]], doc_texts[docs[i]]) for i in pick])
        table.add(unique_keys, fresh)
        scores, _ = table.lookup(keys)
    grid = np.full(head.shape, -np.inf, dtype=np.float32)
    grid[rows, cols] = scores
    order = np.lexsort((np.broadcast_to(np.arange(head.shape[1]), head.shape), -grid), axis=1)
    new_ids = np.concatenate([np.take_along_axis(head, order, axis=1), ranking.ids[:, depth:]], axis=1)
    new_scores = np.concatenate([np.take_along_axis(grid, order, axis=1), ranking.scores[:, depth:]], axis=1)
    return Ranking(new_ids, new_scores)
