"""What a trial computes: its pipeline's scores on the QA set, its seconds per question, and the
record it stores; and the fingerprint a stored study must share to be resumed."""

from __future__ import annotations

import time

import numpy as np
import optuna
from tqdm.auto import tqdm

from ragopt.stages.cache import cache_key
from ragopt.search.config import Config
from ragopt.scoring.evaluation import Evaluator
from ragopt.study.records import RECORD, TrialRecord
from ragopt.study.runs import RankingStore
from ragopt.search.space import optuna_chooser, suggest_pipeline
from ragopt.stages.spec import PipelineSpec
from ragopt.study.data import StudyData
from ragopt.study.workers import GRID, SKIPPED, one_too_many
from ragopt.tune.crossfit import Tuner

FAILURE = "ragopt_failure"
"""The user attribute of a failed trial: its pipeline and the error that failed it."""
LATENCY_QUESTIONS = 16
"""Questions a pipeline is timed on, as one batch, with nothing query-side cached."""


def space_fingerprint(config: Config, data: StudyData, held: np.ndarray) -> str:
    """What a stored study must share with this run to be resumed: the space, the data content,
    the questions trials are selected on (the held-out ones, when any) and the objectives."""
    space = config.model_dump(mode="json", include={"chunkers", "retrievers", "rerankers", "top_k", "optimize"})
    if not config.chunkers:
        del space["chunkers"]  # a study started before chunkers existed resumes
    split = np.flatnonzero(held).tolist() if held.any() else []
    qa = data.qa
    return cache_key(space, data.key, qa.queries.key, qa.qids, split, config.study.latency == "pareto")


def latency_rows(n_questions: int, seed: int) -> np.ndarray:
    """The questions every pipeline's seconds per question are measured on: a seeded sample."""
    return np.sort(np.random.default_rng(seed).permutation(n_questions)[:LATENCY_QUESTIONS])


def warm_up(data: StudyData, config: Config) -> None:
    """Tokenize and encode corpus and queries for every retriever up front, with progress bars,
    so that trials only combine cached arrays (over one corpus: a chunking is made when a trial
    first asks for it)."""
    if data.chunkings is not None:
        return
    for entry in config.retrievers:
        for spec in entry.warm_up_specs():
            data.engine.retrieve(spec, data.qa.queries, 1)


class TrialObjective:
    """The function Optuna calls for each trial: suggest a pipeline, score it (pruned on growing
    subsets of questions when asked), time it, store its record; one pipeline's failure fails its
    trial, recorded, and the study goes on.

    On a shared study (`shared`), a trial beyond the study's total stops the study, and the retry
    of a queued grid trial whose worker died queues its pipeline again.

    A pipeline with a tuned model is scored as the `tuner` plans it (each question by a model that
    never trained on it), timed with its first model (every fold's model costs the same), and
    measured on generated questions only when none trained it."""

    def __init__(self, config: Config, data: StudyData, evaluator: Evaluator, rankings: RankingStore,
                 grid: bool, total: int, shared: bool, progress: bool, tuner: Tuner | None = None) -> None:
        self.config, self.data, self.evaluator, self.rankings = config, data, evaluator, rankings
        self.grid, self.total, self.shared, self.progress = grid, total, shared, progress
        self.tuner = tuner
        self.probe = latency_rows(len(data.qa), config.study.seed)
        self.durations: list[float] = []
        generated = data.generated
        self.generated = None if generated is None else Evaluator(
            generated.target, generated.qa, config.top_k, config.optimize, config.study.seed,
            plan=None if tuner is None else lambda spec: [(self.served(spec), np.arange(len(generated.qa)))])
        """Scores each pipeline on the generated questions too (a measurement; Optuna never sees it)."""

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        start = time.perf_counter()
        study = trial.study
        if self.shared and one_too_many(study, trial, self.grid, self.total):
            study.stop()
            trial.set_user_attr(SKIPPED, True)
            raise optuna.TrialPruned()
        spec = suggest_pipeline(self.config, optuna_chooser(trial))
        queued = trial.user_attrs.get(GRID)
        if self.shared and isinstance(queued, dict) and trial.params != queued:
            # a retry of a trial whose worker died before storing the queued pipeline: queue it again
            study.enqueue_trial(queued, user_attrs={GRID: queued})
            trial.set_user_attr(SKIPPED, True)
            raise optuna.TrialPruned()
        try:
            if self.config.study.pruner == "none":
                scored, reused = self.evaluator.evaluate(spec)
            else:
                scored, reused = self.evaluator.evaluate_pruned(spec, trial)
            generated = None
            if self.generated is not None and not self.trained_on_generated(spec):
                generated = self.generated.per_query_objective(self.generated.evaluate(spec)[0].per_query, spec.top_k)
            value = self.evaluator.objective(scored, spec.top_k)
            if not np.isfinite(value):  # Optuna would fail the trial with no word of why
                raise ValueError(f"the objective is {value}: some question's metrics are not numbers (0 / 0: a "
                                 "question with no relevant passage)")
        except optuna.TrialPruned:
            raise
        except Exception as error:
            failure = {"pipeline": spec.describe(), "error": f"{type(error).__name__}: {error}"}
            trial.set_user_attr(FAILURE, failure)
            if self.progress:
                tqdm.write(f"trial {trial.number} failed ({failure['pipeline']}): {failure['error']}; going on")
            raise
        study_config = self.config.study
        seconds = (self.data.target(spec).engine.seconds_per_query(self.served(spec), self.data.qa.queries, self.probe)
                   if study_config.latency != "off" else np.nan)
        if study_config.latency_budget is not None:
            trial.set_constraint("seconds_over_budget", seconds - study_config.latency_budget)
        self.durations.append(time.perf_counter() - start)
        per_corpus = self.data.chunkings is not None
        depth = max(self.config.top_k)  # a ranking scored deeper to fill the token budgets is kept to the largest k
        record = TrialRecord.of(spec, scored.gains[:, :depth], reused, seconds,
                                self.rankings.save(scored.ranking.ids[:, :depth]),
                                scored.n_rel if per_corpus else None,
                                {name: scored.per_query[name] for name in scored.extra}, generated)
        trial.set_user_attr(RECORD, record.to_attr())
        return (value, seconds) if study_config.latency == "pareto" else value

    def served(self, spec: PipelineSpec) -> PipelineSpec:
        """The concrete pipeline that stands for a trial's in timings and on generated questions:
        itself, or the first of its tuned models (they differ only in weights)."""
        return spec if self.tuner is None else self.tuner.plan(spec)[0][0]

    def trained_on_generated(self, spec: PipelineSpec) -> bool:
        """Whether generated questions trained one of its models (its generated scores would flatter it)."""
        return self.tuner is not None and any(d.finetune.questions != "selection" for d in self.tuner.tuned(spec))
