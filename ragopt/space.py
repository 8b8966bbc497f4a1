"""From a Config to concrete PipelineSpecs: one function walks the conditional search space and
asks a chooser for each open decision. Optuna's trial is one chooser; the grid enumerator,
which replays the same walk with every combination, is another, so the two never disagree.

Parameter names are stable and readable: 'retriever', 'reranker', 'top_k', then
'<entry name>.<setting>' (e.g. 'bm25_kiwi.k1', 'hybrid.weight', 'ce.depth').
"""

from __future__ import annotations

from typing import Any, Callable, Union

import optuna

from ragopt.config import (
    BGEM3Config,
    BM25Config,
    ConfigError,
    Config,
    DenseConfig,
    FloatRange,
    HybridConfig,
    IntRange,
    NoReranker,
)
from ragopt.retrievers.bm25 import NONOCCURRENCE_METHODS
from ragopt.spec import BGEM3Spec, BM25Spec, DenseSpec, HybridSpec, PipelineSpec

Options = Union[list, FloatRange, IntRange]
Chooser = Callable[[str, Options], Any]
MAX_GRID = 100_000


def suggest_pipeline(config: Config, choose: Chooser) -> PipelineSpec:
    """Walk the space once, taking each decision from `choose(name, options)`."""
    entries = {r.name: r for r in config.retrievers}
    retriever = _resolve(entries[choose("retriever", list(entries))], entries, choose)
    rerankers = {r.name: r for r in config.rerankers}
    reranker_entry = rerankers[choose("reranker", list(rerankers))]
    reranker = None
    if not isinstance(reranker_entry, NoReranker):
        reranker = reranker_entry.to_spec(choose(f"{reranker_entry.name}.depth", reranker_entry.depth))
    return PipelineSpec(retriever=retriever, reranker=reranker, top_k=choose("top_k", config.top_k))


def _resolve(entry: BM25Config | DenseConfig | BGEM3Config | HybridConfig, entries: dict, choose: Chooser
             ) -> BM25Spec | DenseSpec | BGEM3Spec | HybridSpec:
    name = entry.name
    if isinstance(entry, DenseConfig):
        return entry.to_spec()
    if isinstance(entry, BGEM3Config):
        return entry.to_spec(choose(f"{name}.mode", entry.mode))
    if isinstance(entry, BM25Config):
        tokenizers = {t.label: t for t in entry.tokenizer}
        method = choose(f"{name}.method", entry.method)
        return BM25Spec(
            tokenizer=tokenizers[choose(f"{name}.tokenizer", list(tokenizers))], method=method,
            k1=choose(f"{name}.k1", entry.k1), b=choose(f"{name}.b", entry.b),
            delta=choose(f"{name}.delta", entry.delta) if method in NONOCCURRENCE_METHODS else 0.5)
    components = [_resolve(entries[c], entries, choose) for c in entry.retrievers]
    fusion = choose(f"{name}.fusion", entry.fusion)
    if fusion == "rrf":
        return HybridSpec(retrievers=components, fusion="rrf", rrf_k=choose(f"{name}.rrf_k", entry.rrf_k),
                          depth=entry.depth)
    if len(components) == 2:
        first = choose(f"{name}.weight", entry.weight)
        weights = [first, 1.0 - first]
    else:
        raw = [choose(f"{name}.weight.{c}", entry.weight) for c in entry.retrievers]
        weights = [w / sum(raw) for w in raw] if sum(raw) > 0 else [1.0 / len(raw)] * len(raw)
    return HybridSpec(retrievers=components, fusion="convex", normalization=choose(f"{name}.normalization",
                      entry.normalization), weights=weights, depth=entry.depth)


def optuna_chooser(trial: optuna.Trial) -> Chooser:
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
        values = options.grid() if isinstance(options, (FloatRange, IntRange)) else options
        index = self.path[len(self.sizes)] if len(self.sizes) < len(self.path) else 0
        self.sizes.append(len(values))
        if len(values) > 1:
            self.params[name] = values[index]
        return values[index]


def enumerate_space(config: Config) -> list[dict[str, Any]]:
    """Every distinct pipeline of the space, as Optuna parameter dicts, by replaying the walk
    with an odometer over the decisions it meets (later decisions depend on earlier ones)."""
    found: list[dict[str, Any]] = []
    path: list[int] = []
    while True:
        replay = _Replay(path)
        suggest_pipeline(config, replay)
        found.append(replay.params)
        if len(found) > MAX_GRID:
            raise ConfigError(f"the grid has more than {MAX_GRID} pipelines; use sampler: tpe, or fewer values")
        sizes = replay.sizes
        path = [path[i] if i < len(path) else 0 for i in range(len(sizes))]
        last = len(sizes) - 1
        while last >= 0 and path[last] + 1 >= sizes[last]:
            last -= 1
        if last < 0:
            return found
        path = path[:last] + [path[last] + 1]
