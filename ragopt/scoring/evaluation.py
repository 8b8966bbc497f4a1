"""Scoring pipelines on a QA set, independent of the study that drives it: every metric at
every k per question, pipelines that differ only in top_k scored once (a smaller k is a slice),
and optionally on growing chunks of questions for Wilcoxon pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ragopt.stages.cache import Memo
from ragopt.data.qa import QASet, Queries
from ragopt.stages.engine import Engine
from ragopt.scoring.metrics import METRICS, at_k, relevance
from ragopt.stages.ranking import Ranking
from ragopt.stages.spec import PipelineSpec

if TYPE_CHECKING:
    import optuna

SCORED_KEPT = 1024
SCORED_BYTES = 1 << 30
"""Scored pipelines kept in memory: at most this many, holding at most this many bytes."""


Extra = Callable[[np.ndarray, np.ndarray, list[int]], dict[str, np.ndarray]]
"""Metrics beyond the gains' (the evidence metrics of span-labelled questions): per-question
values, keyed 'name@k', of a ranking (corpus rows, questions x depth) of the QA set's rows `rows`."""


Plan = Callable[[PipelineSpec], list[tuple[PipelineSpec, np.ndarray]]]
"""Which concrete pipeline answers which questions (QA rows): a pipeline with a tuned model is
answered per question by a model that never trained on it (ragopt.tune.crossfit)."""


@dataclass(frozen=True)
class Target:
    """What a pipeline is scored against: the engine over its corpus (one chunking of the
    documents, or the given corpus), each question's relevant passages there as ground-truth
    groups, and the metrics that need more than the gains."""

    engine: Engine
    groups: list[list[list[int]]]
    extra: Extra | None = None
    depth: int = 0
    """The depth rankings are scored to beyond the largest k (to fill the token budgets)."""

    def score(self, ranked: np.ndarray, rows: np.ndarray, ks: list[int]) -> tuple[np.ndarray, np.ndarray,
                                                                                   dict[str, np.ndarray]]:
        """Gains, relevant counts and every metric per question, for the QA set's rows `rows`."""
        gains, n_rel = relevance(ranked, [self.groups[i] for i in rows], len(self.engine.corpus))
        per_query = at_k(gains, n_rel, ks, METRICS)
        if self.extra is not None:
            per_query.update(self.extra(ranked, rows, ks))
        return gains, n_rel, per_query


@dataclass
class Scored:
    """A pipeline's ranking at the deepest k, its relevance gains (questions x depth), each
    question's number of relevant passages, every metric per question, and the names of those
    that the gains cannot give back."""

    ranking: Ranking
    gains: np.ndarray
    n_rel: np.ndarray
    per_query: dict[str, np.ndarray]
    extra: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        return self.ranking.nbytes + self.gains.nbytes + sum(v.nbytes for v in self.per_query.values())



class Evaluator:
    """Scores pipelines on a QA set; the objective averages over the `selection` questions only
    (a mask; default all), so held-out questions never steer the search.

    Example:
        evaluator = Evaluator(engine, qa, ks=[1, 3, 5], objective={"ndcg": 1.0})
        scored, reused = evaluator.evaluate(spec)
        print(evaluator.objective(scored, spec.top_k), scored.per_query["ndcg@5"].mean())
    """

    def __init__(self, target: Engine | Callable[[PipelineSpec], Target], qa: QASet, ks: list[int],
                 objective: dict[str, float], seed: int = 0, prune_steps: int = 8,
                 selection: np.ndarray | None = None, plan: Plan | None = None) -> None:
        self.plan = plan
        """Who answers each question (default: the pipeline itself, every question)."""
        self.target = _fixed(Target(target, qa.groups)) if isinstance(target, Engine) else target
        """The engine and relevance a pipeline is scored with (one per chunking of documents)."""
        self.qa, self.ks, self.weights = qa, sorted(ks), objective
        self.depth = max(ks)
        self.selection = np.arange(len(qa)) if selection is None else np.flatnonzero(selection)
        """The rows the objective averages over (the questions not held out)."""
        self._seen: Memo[Scored] = Memo(SCORED_KEPT, SCORED_BYTES, size=lambda s: s.nbytes)
        order = np.random.default_rng(seed).permutation(self.selection)
        self.chunks = np.array_split(order, min(prune_steps, len(order)))

    def key(self, spec: PipelineSpec) -> str:
        """Pipelines that differ only in top_k share one scoring at the deepest k."""
        return spec.model_copy(update={"top_k": self.depth}).key()

    def evaluate(self, spec: PipelineSpec) -> tuple[Scored, bool]:
        """The scores of a pipeline, and whether they were reused from an earlier trial."""
        return self._seen.get(self.key(spec), lambda: self._score(spec))

    def _score(self, spec: PipelineSpec) -> Scored:
        target = self.target(spec)
        depth = max(self.depth, target.depth)
        parts = self._parts(spec)
        if parts is None:
            ranking = target.engine.run(spec, self.qa.queries, depth)
        else:
            ranking = self._stitched(target.engine, spec, parts, depth)
        gains, n_rel, per_query = target.score(ranking.ids, np.arange(len(self.qa)), self.ks)
        extra = tuple(name for name in per_query if name.partition("@")[0] not in METRICS)
        return Scored(ranking, gains, n_rel, per_query, extra)

    def _parts(self, spec: PipelineSpec) -> list[tuple[PipelineSpec, np.ndarray]] | None:
        """The plan's pipelines and the questions each answers; None when the pipeline itself
        answers every question."""
        if self.plan is None:
            return None
        parts = self.plan(spec)
        return None if parts[0][0] is spec else parts

    def _stitched(self, engine: Engine, spec: PipelineSpec, parts: list[tuple[PipelineSpec, np.ndarray]],
                  depth: int) -> Ranking:
        """The ranking of every question by the pipeline its plan gives it, in the QA set's order."""
        texts = self.qa.queries.texts
        parts = [(concrete, rows) for concrete, rows in parts if len(rows)]
        rankings = [engine.run(concrete, Queries([texts[i] for i in rows]), depth) for concrete, rows in parts]
        order = np.concatenate([rows for _, rows in parts])
        if not np.array_equal(np.sort(order), np.arange(len(self.qa))):
            raise ValueError(f"the plan of {spec.describe()} answers some questions twice or not at all")
        return Ranking.concat(rankings).rows(np.argsort(order))

    def evaluate_pruned(self, spec: PipelineSpec, trial: "optuna.Trial") -> tuple[Scored, bool]:
        """Like evaluate, but a reranking pipeline is first scored on growing subsets of the
        questions; each question's objective value is reported to the trial (its step is the
        question's row), and the trial stops with TrialPruned as soon as the pruner, comparing
        with the best trial on the same questions, finds it cannot win. Other pipelines cost
        little per question and are scored whole, then reported the same way."""
        import optuna

        direct = self._parts(spec) is None
        if spec.reranker is not None and self.key(spec) not in self._seen and direct:
            target = self.target(spec)
            for rows in self.chunks:
                ranking = target.engine.rerank_rows(spec, self.qa.queries, rows, max(self.depth, target.depth))
                per_query = target.score(ranking.ids, rows, self.ks)[2]
                self._report(trial, rows, self.per_query_objective(per_query, spec.top_k))
                if trial.should_prune():
                    raise optuna.TrialPruned()
        scored, reused = self.evaluate(spec)
        if spec.reranker is None or reused or not direct:
            values = self.per_query_objective(scored.per_query, spec.top_k)
            self._report(trial, self.selection, values[self.selection])
        return scored, reused

    @staticmethod
    def _report(trial: "optuna.Trial", rows: np.ndarray, values: np.ndarray) -> None:
        for row, value in zip(rows.tolist(), values.tolist()):
            trial.report(value, row)

    def per_query_objective(self, per_query: dict[str, np.ndarray], top_k: int) -> np.ndarray:
        """Each question's weighted mean of the optimized metrics; a bare name is taken at the trial's k."""
        total = sum(w * per_query[name if "@" in name else f"{name}@{top_k}"] for name, w in self.weights.items())
        return total / sum(self.weights.values())

    def objective(self, scored: Scored, top_k: int) -> float:
        """The mean of the per-question objective over the selection questions."""
        return float(self.per_query_objective(scored.per_query, top_k)[self.selection].mean())


def _fixed(target: Target) -> Callable[[PipelineSpec], Target]:
    """One target for every pipeline: a QA set over one corpus."""
    return lambda spec: target
