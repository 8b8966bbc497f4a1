"""From a config (a Space) to concrete PipelineSpecs: one function walks the conditional search
space and asks a chooser for each open decision. Optuna's trial is one chooser; the grid
enumerator, which replays the same walk with every combination, is another, so the two never
disagree.

Parameter names are stable and readable: each stage's name ('retriever', 'chunker', 'reranker'),
'top_k', then '<entry name>.<setting>' (e.g. 'bm25_kiwi.k1', 'hybrid.weight', 'ce.depth').
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from ragopt.errors import ConfigError
from ragopt.stages.params import Chooser, FloatRange, IntRange, Options
from ragopt.stages.spec import PipelineSpec
from ragopt.stages.protocol import decision_order

if TYPE_CHECKING:
    import optuna


class Space(Protocol):
    """What the walk reads of a config (ragopt.search.config.Config is one): each stage's list of
    entries (ragopt.stages.protocol) and top_k. A protocol, so that this module imports no config:
    the config imports the space to check its size, never the other way round."""

    chunkers: list[Any]
    retrievers: list[Any]
    rerankers: list[Any]
    top_k: list[int]


MAX_GRID = 100_000


def suggest_pipeline(config: Space, choose: Chooser) -> PipelineSpec:
    """Walk the space once, taking each decision from `choose(name, options)`: each stage of
    ragopt.stages.protocol picks an entry and the entry suggests its own settings, stages in the order
    their choices depend on each other; then top_k."""
    chosen: dict[str, Any] = {}
    for stage in decision_order():
        chosen[stage.name] = stage.suggest(config, choose, chosen)
    return PipelineSpec(**chosen, top_k=choose("top_k", config.top_k))


def optuna_chooser(trial: "optuna.Trial") -> Chooser:
    """Decisions drawn by an Optuna trial; a single fixed value is not recorded as a parameter."""

    def choose(name: str, options: Options) -> Any:
        if isinstance(options, FloatRange):
            return trial.suggest_float(name, options.low, options.high, step=options.step, log=options.log)
        if isinstance(options, IntRange):
            return trial.suggest_int(name, options.low, options.high, step=options.step, log=options.log)
        if len(options) == 1:
            return options[0]
        return trial.suggest_categorical(name, options)

    return choose


class _Replay:
    """A chooser that repeats the decisions of `path`, takes the first option for any later one,
    and notes how many options each decision had."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.sizes, self.params = path, [], {}

    def __call__(self, name: str, options: Options) -> Any:
        values = _grid(options) if isinstance(options, (FloatRange, IntRange)) else options
        index = self.path[len(self.sizes)] if len(self.sizes) < len(self.path) else 0
        self.sizes.append(len(values))
        if len(values) > 1:
            self.params[name] = values[index]
        return values[index]


@lru_cache(maxsize=64)
def _grid(options: FloatRange | IntRange) -> tuple:
    """A range's values, computed once: every walk of the enumeration asks again."""
    return tuple(options.grid())


def enumerate_space(config: Space) -> list[dict[str, Any]]:
    """Every distinct pipeline of the space, as Optuna parameter dicts; at most MAX_GRID."""
    pipelines = small_space(config, MAX_GRID)
    if pipelines is None:
        raise ConfigError(f"the search space has more than {MAX_GRID} distinct pipelines, too many to enumerate; "
                          "use study.sampler: tpe or random, or give fewer values")
    return pipelines


def small_space(config: Space, limit: int) -> list[dict[str, Any]] | None:
    """Every distinct pipeline of the space, as Optuna parameter dicts, when there are at most
    `limit` (else None, found without walking further), by replaying the walk with an odometer
    over the decisions it meets (later decisions depend on earlier ones)."""
    found: list[dict[str, Any]] = []
    path: list[int] = []
    while True:
        replay = _Replay(path)
        suggest_pipeline(config, replay)
        found.append(replay.params)
        if len(found) > limit:
            return None
        sizes = replay.sizes
        path = [path[i] if i < len(path) else 0 for i in range(len(sizes))]
        last = len(sizes) - 1
        while last >= 0 and path[last] + 1 >= sizes[last]:
            last -= 1
        if last < 0:
            return found
        path = path[:last] + [path[last] + 1]
