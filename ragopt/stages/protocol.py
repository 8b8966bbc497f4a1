"""The stages of a pipeline, in the order data flows through them: chunk (documents -> passages),
retrieve (queries -> a ranking of passages; fusion is a hybrid retriever's), rerank (a ranking
-> a ranking). The pipeline spec, the search space and the engine learn their stages from
STAGES, not from code of their own per stage.

A stage kind is a plug-in kind (ragopt/stages/chunkers, ragopt/stages/retrievers, ragopt/stages/rerankers: a
registry of config entry, spec and implementation per `type`, one file per implementation, a
contract suite in ragopt/testing) plus one Stage here, which says:
- `name`: the pipeline spec's field, the Optuna parameter that picks an entry, the config's list
  of entries (`<name>s`);
- `optional`: whether a pipeline may go without it (a spec of None);
- `after`: the stages whose choices this one's suggestion reads (a chunker counting tokens with
  the retriever's model is chosen after the retriever), so decisions are taken in that order;
- for a query-time stage, `run`: what it does to the queries and the ranking before it, and
  `upstream`: how deep a ranking it needs from the stage before it.

A new stage (query rewriting: queries -> queries, before retrieve) is its plug-in package, its
contract suite, one Stage in STAGES and its entry list in the Config. Plain data: no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ragopt.stages.chunkers import _base as chunkers
from ragopt.stages.params import Chooser
from ragopt.stages.registry import Registry
from ragopt.stages.rerankers import _base as rerankers
from ragopt.stages.retrievers import _base as retrievers

if TYPE_CHECKING:
    from ragopt.data.qa import Queries
    from ragopt.stages.ranking import Ranking

Suggest = Callable[[Any, Chooser, dict[str, Any]], Any]
"""(the config's entry for the choice, choose, the specs chosen so far by stage name) -> a spec."""


@dataclass(frozen=True)
class Flow:
    """What passes from one query-time stage to the next: the questions as asked, the queries
    the next stage works with (a rewriting stage changes these), and the ranking so far."""

    asked: "Queries"
    queries: "Queries"
    ranking: "Ranking | None" = None


Run = Callable[[Any, Any, Flow, int, tuple[str, ...]], Flow]
"""(the engine, this stage's spec, the flow from the stage before, depth, the keys of the stages
so far, this one's included) -> the flow after this stage, its ranking `depth` deep."""


@dataclass(frozen=True)
class Stage:
    """One stage kind of a pipeline (see the module's docstring)."""

    name: str
    registry: Registry
    spec_union: Any
    optional: bool
    suggest_entry: Suggest
    after: tuple[str, ...] = ()
    run: Run | None = None
    upstream: Callable[[Any, int], int] = field(default=lambda spec, depth: depth)

    @property
    def entries(self) -> str:
        """The config's list of this stage's entries."""
        return f"{self.name}s"

    def suggest(self, config: Any, choose: Chooser, chosen: dict[str, Any]) -> Any:
        """This stage's spec for a trial: the entry picked by choose(name, entry names), then its
        settings; None when the config lists no entry of an optional stage."""
        entries = {entry.name: entry for entry in getattr(config, self.entries)}
        if not entries:
            if self.optional:
                return None
            raise ValueError(f"the search space lists no {self.entries}")
        return self.suggest_entry(entries, choose, chosen)


def _chunker(entries: dict[str, Any], choose: Chooser, chosen: dict[str, Any]) -> Any:
    return entries[choose("chunker", list(entries))].suggest(choose, chosen.get("retriever"))


def _retriever(entries: dict[str, Any], choose: Chooser, chosen: dict[str, Any]) -> Any:
    def resolve(name: str) -> Any:
        return entries[name].suggest(choose, resolve)

    return resolve(choose("retriever", list(entries)))


def _reranker(entries: dict[str, Any], choose: Chooser, chosen: dict[str, Any]) -> Any:
    return entries[choose("reranker", list(entries))].suggest(choose)


def _retrieve(engine: Any, spec: Any, flow: Flow, depth: int, keys: tuple[str, ...]) -> Flow:
    return replace(flow, ranking=engine.retrieve(spec, flow.queries, depth))


def _rerank(engine: Any, spec: Any, flow: Flow, depth: int, keys: tuple[str, ...]) -> Flow:
    """The reranker scores the questions as asked against the passages ranked before it."""
    before = flow.ranking
    assert before is not None, "a reranker reorders the ranking of the stage before it"
    ranking = engine.memo((*keys, flow.queries.key, flow.asked.key, depth),
                          lambda: engine.rerank(spec, before, flow.asked).head(depth))
    return replace(flow, ranking=ranking)


STAGES: tuple[Stage, ...] = (
    Stage("chunker", chunkers.REGISTRY, chunkers.spec_union(), optional=True, suggest_entry=_chunker,
          after=("retriever",)),
    Stage("retriever", retrievers.REGISTRY, retrievers.spec_union(), optional=False, suggest_entry=_retriever,
          run=_retrieve),
    Stage("reranker", rerankers.REGISTRY, rerankers.spec_union(), optional=True, suggest_entry=_reranker,
          run=_rerank, upstream=lambda spec, depth: max(depth, spec.depth)),
)
"""Every stage kind, in the order data flows through a pipeline."""


def decision_order(stages: Sequence[Stage] = STAGES) -> list[Stage]:
    """The stages in the order a trial decides them: each after the stages it reads."""
    done: list[Stage] = []
    waiting = list(stages)
    while waiting:
        ready = next(s for s in waiting if all(name in {d.name for d in done} for name in s.after))
        done.append(ready)
        waiting.remove(ready)
    return done


def query_stages(spec: Any, stages: Sequence[Stage] = STAGES) -> list[tuple[Stage, Any]]:
    """The query-time stages a pipeline spec runs, in order, with their specs."""
    return [(stage, part) for stage in stages if stage.run is not None and (part := getattr(spec, stage.name))
            is not None]


def run_stages(engine: Any, spec: Any, queries: "Queries", depth: int, stages: Sequence[Stage] = STAGES
               ) -> "Ranking":
    """A pipeline's ranking: each query-time stage on the flow of the one before, each asked for
    as deep a ranking as the stages after it need."""
    running = query_stages(spec, stages)
    depths = [depth]
    for stage, part in reversed(running[1:]):
        depths.insert(0, stage.upstream(part, depths[0]))
    flow, keys = Flow(queries, queries), ()
    for (stage, part), stage_depth in zip(running, depths):
        keys = (*keys, part.key())
        assert stage.run is not None
        flow = stage.run(engine, part, flow, stage_depth, keys)
    if flow.ranking is None:
        raise ValueError(f"the pipeline {spec.describe()} ranks nothing: it has no retrieving stage")
    return flow.ranking
