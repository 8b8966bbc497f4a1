"""The Optuna study: sampler, storage, objective, resume, and the files it writes.

Every trial's record (pipeline, metrics, timing) is stored in the study's storage, and the output
files are derived from it, so a resumed or shared study reports all of its trials.
"""

from __future__ import annotations

import shutil
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from tqdm.auto import tqdm

from ragopt.cache import Cache, Memo, cache_key
from ragopt.config import Config, load_config
from ragopt.data import Corpus, QASet, load_dataset
from ragopt.export import write_best
from ragopt.metrics import METRICS, at_k, relevance
from ragopt.pipeline import Engine
from ragopt.report import TrecWriter, domain_means, trials_table, write_summary
from ragopt.retrievers._base import Ranking
from ragopt.space import enumerate_space, optuna_chooser, suggest_pipeline
from ragopt.spec import BM25Spec, PipelineSpec

RECORD = "ragopt"
SCORED_KEPT = 1024


class StudyError(RuntimeError):
    """A study that cannot continue as asked (e.g. its config changed since it started)."""


@dataclass
class Scored:
    """A pipeline's ranking at the deepest k and every metric per query."""

    ranking: Ranking
    per_query: dict[str, np.ndarray]

    def mean(self, name: str) -> float:
        return float(self.per_query[name].mean())

    def means(self, metrics: list[str]) -> dict[str, float]:
        """Means of the named metrics at every k, keyed 'metric@k'."""
        return {key: self.mean(key) for key in self.per_query if key.split("@")[0] in metrics}


class Evaluator:
    """Scores pipelines on a QA set. Pipelines that differ only in top_k share one ranking (a
    smaller k is a slice), and a pipeline seen before is not recomputed."""

    def __init__(self, engine: Engine, qa: QASet, config: Config) -> None:
        self.engine, self.qa, self.config = engine, qa, config
        self.depth = max(config.top_k)
        self._seen: Memo[Scored] = Memo(SCORED_KEPT)
        order = np.random.default_rng(config.study.seed).permutation(len(qa))
        self.chunks = np.array_split(order, min(config.study.prune_steps, len(qa)))

    def evaluate(self, spec: PipelineSpec) -> tuple[Scored, bool]:
        """The scores of a pipeline, and whether they were reused from an earlier trial."""
        return self._seen.get(spec.model_copy(update={"top_k": self.depth}).key(), lambda: self._score(spec))

    def _score(self, spec: PipelineSpec) -> Scored:
        ranking = self.engine.run(spec, self.qa.queries, self.depth)
        gains, n_rel = relevance(ranking.ids, self.qa.groups, len(self.engine.corpus))
        return Scored(ranking, at_k(gains, n_rel, self.config.top_k, METRICS))

    def evaluate_pruned(self, spec: PipelineSpec, trial: optuna.Trial) -> tuple[Scored, bool]:
        """Like evaluate, but a reranking pipeline is first scored on growing subsets of the
        questions; each question's objective value is reported to the trial (its step is the
        question's row), and the trial stops with TrialPruned as soon as the pruner, comparing
        with the best trial on the same questions, finds it cannot win. Other pipelines cost
        little per question and are scored whole, then reported the same way."""
        key = spec.model_copy(update={"top_k": self.depth}).key()
        if spec.reranker is not None and key not in self._seen:
            for rows in self.chunks:
                ranking = self.engine.rerank_rows(spec, self.qa.queries, rows, self.depth)
                gains, n_rel = relevance(ranking.ids, [self.qa.groups[i] for i in rows], len(self.engine.corpus))
                self._report(trial, rows, self.per_query_objective(at_k(gains, n_rel, self.config.top_k, METRICS),
                                                                     spec.top_k))
                if trial.should_prune():
                    raise optuna.TrialPruned()
        scored, reused = self.evaluate(spec)
        if spec.reranker is None or reused:
            self._report(trial, np.arange(len(self.qa)), self.per_query_objective(scored.per_query, spec.top_k))
        return scored, reused

    @staticmethod
    def _report(trial: optuna.Trial, rows: np.ndarray, values: np.ndarray) -> None:
        for row, value in zip(rows.tolist(), values.tolist()):
            trial.report(value, row)

    def per_query_objective(self, per_query: dict[str, np.ndarray], top_k: int) -> np.ndarray:
        """Each question's weighted mean of the optimized metrics; a bare name is taken at the trial's k."""
        weights = self.config.optimize
        total = sum(w * per_query[name if "@" in name else f"{name}@{top_k}"] for name, w in weights.items())
        return total / sum(weights.values())

    def objective(self, scored: Scored, top_k: int) -> float:
        """The mean over questions of the per-question objective."""
        return float(self.per_query_objective(scored.per_query, top_k).mean())


@dataclass
class Outcome:
    """Where a study wrote its files and what won."""

    output: Path
    best_spec: PipelineSpec
    best_value: float
    best_metrics: dict[str, float]
    n_trials: int
    interrupted: bool = False
    n_pruned: int = 0


def default_output(config_path: Path) -> Path:
    return config_path.resolve().parent / f"{config_path.stem}-output"


def _space_fingerprint(config: Config, qa: QASet, corpus: Corpus) -> str:
    """What a stored study must share with this run to be resumed: the space and the data content."""
    space = config.model_dump(mode="json", include={"retrievers", "rerankers", "top_k", "optimize"})
    return cache_key(space, corpus.key, qa.queries.key, qa.qids, qa.groups)


def _open_study(config: Config, output: Path, name: str, fresh: bool, fingerprint: str
                ) -> tuple[optuna.Study, optuna.Study | None]:
    """The study trials run in, and the durable one to copy each finished trial to (or None).

    With the default SQLite file, sampling runs on an in-memory copy of the stored trials and each
    finished trial is written to the file in one transaction: Optuna reading and writing SQLite at
    every suggestion would cost more than a cached trial itself. An explicit storage URL (e.g.
    PostgreSQL, shared by several workers) is used directly so workers see each other's trials.
    """
    if config.study.sampler == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
                seed=config.study.seed, multivariate=True, group=True)
    else:
        sampler = optuna.samplers.RandomSampler(seed=config.study.seed)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if config.study.pruner == "wilcoxon":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            pruner = optuna.pruners.WilcoxonPruner(p_threshold=config.study.prune_p)
    storage = config.study.storage or f"sqlite:///{output / 'study.db'}"
    if fresh:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
    durable = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                  direction="maximize", load_if_exists=True)
    stored = durable.user_attrs.get("space")
    if stored is None:
        durable.set_user_attr("space", fingerprint)
    elif stored != fingerprint:
        raise StudyError(f"study {name!r} in {storage} was started with a different data set or search space. "
                         f"Rerun with --fresh to start over, or give another --output.")
    if config.study.storage:
        return durable, None
    working = optuna.create_study(study_name=name, sampler=sampler, pruner=pruner, direction="maximize")
    working.add_trials([t for t in durable.get_trials(deepcopy=False) if t.state.is_finished()])
    return working, durable


def _warm_up(engine: Engine, config: Config, qa: QASet) -> None:
    """Tokenize and encode corpus and queries for every retriever up front, with progress bars,
    so that trials only combine cached arrays."""
    for entry in config.retrievers:
        if entry.type == "bm25":
            for tokenizer in entry.tokenizer:
                engine.retrieve(BM25Spec(tokenizer=tokenizer), qa.queries, 1)
        elif entry.type == "dense":
            engine.retrieve(entry.to_spec(), qa.queries, 1)
        elif entry.type == "bge_m3":
            engine.retrieve(entry.to_spec(entry.mode[0]), qa.queries, 1)


def _trials_to_run(study: optuna.Study, config: Config, total: int) -> int:
    """How many trials this run adds: the grid's pipelines not yet run (queued once each), or
    what is missing to reach `total` finished trials. A finite space with no more pipelines than
    `total` is run as a grid too, rather than sampling the same pipelines again."""
    grid = enumerate_space(config) if config.finite else None  # validation makes every grid config finite
    if grid is not None and (config.study.sampler == "grid" or len(grid) <= total):
        for params in grid:
            study.enqueue_trial(params, skip_if_exists=True)
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    return max(0, total - done)


def optimize(config_path: str | Path, output: str | Path | None = None, n_trials: int | None = None,
             fresh: bool = False, progress: bool = True) -> Outcome:
    """Run (or resume) the study a config describes and write its output folder."""
    config_path = Path(config_path)
    config, _ = load_config(config_path)
    output = Path(output) if output is not None else default_output(config_path)
    qa, corpus = load_dataset(**config.data.model_dump())
    if fresh:
        shutil.rmtree(output / "runs", ignore_errors=True)
    (output / "runs").mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, durable = _open_study(config, output, config.study.name or config_path.stem, fresh,
                                 _space_fingerprint(config, qa, corpus))
    engine = Engine(corpus, Cache(config.cache_dir or output / "cache"), config.device, progress,
                    config.exact_search_max)
    evaluator = Evaluator(engine, qa, config)
    trec = TrecWriter(qa, corpus)
    trec.qrels(output / "qrels.trec")

    started = time.perf_counter()
    _warm_up(engine, config, qa)
    warm_up = time.perf_counter() - started
    target = _trials_to_run(study, config, n_trials or config.study.n_trials)
    durations: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        spec = suggest_pipeline(config, optuna_chooser(trial))
        if config.study.pruner == "none":
            scored, reused = evaluator.evaluate(spec)
        else:
            scored, reused = evaluator.evaluate_pruned(spec, trial)
        value = evaluator.objective(scored, spec.top_k)
        elapsed = time.perf_counter() - start
        durations.append(elapsed)
        trial.set_user_attr(RECORD, {
            "pipeline": spec.model_dump(mode="json"), "description": spec.describe(), "reused": reused,
            "seconds_per_query": elapsed / len(qa),
            "metrics": scored.means(config.metrics)})
        trec.run(output / "runs" / f"{trial.number}.trec", scored.ranking, f"ragopt-{trial.number}")
        return value

    bar = tqdm(total=target, desc="trials", unit="trial", disable=not progress or target == 0)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if durable is not None:
            durable.add_trial(trial)
        bar.update()
        if trial.state == optuna.trial.TrialState.COMPLETE:
            bar.set_postfix(best=f"{study.best_value:.4f}", refresh=False)

    interrupted = False
    try:
        if target:
            study.optimize(objective, n_trials=target, timeout=config.study.timeout, callbacks=[report])
    except KeyboardInterrupt:
        interrupted = True  # keep the finished trials: write the outputs, a rerun resumes
    finally:
        bar.close()
    seconds = {"first": warm_up + (durations[0] if durations else 0.0),
               "median": statistics.median(durations[1:]) if len(durations) > 1 else 0.0,
               "total": time.perf_counter() - started}
    return _write_outputs(study, config, config_path, output, evaluator, qa, corpus, seconds, interrupted)


def _write_outputs(study: optuna.Study, config: Config, config_path: Path, output: Path, evaluator: Evaluator,
                   qa: QASet, corpus: Corpus, seconds: dict[str, float], interrupted: bool) -> Outcome:
    table = trials_table(study, RECORD)
    if table.empty:
        raise StudyError(f"study {study.study_name!r} has no completed trial; raise n_trials or timeout")
    table.to_csv(output / "trials.csv", index=False)
    best_trial = study.best_trial
    record: dict[str, Any] = best_trial.user_attrs[RECORD]
    spec = PipelineSpec.model_validate(record["pipeline"])
    scored, _ = evaluator.evaluate(spec)
    metrics = scored.means(config.metrics)
    write_best(output / "best.yaml", spec, {
        "study": study.study_name, "trial": best_trial.number, "objective": dict(config.optimize),
        "value": round(float(best_trial.value), 6),
        "metrics_at_k": {k: round(v, 6) for k, v in metrics.items() if k.endswith(f"@{spec.top_k}")}})
    per_domain = domain_means(scored.per_query, qa.domains, config.metrics, spec.top_k) if qa.domains else {}
    write_summary(output / "summary.md", title=config_path.name, qa=qa, corpus=corpus, table=table,
                  best={"trial": best_trial.number, "value": best_trial.value, "description": spec.describe(),
                        "metrics": metrics, "top_k": spec.top_k},
                  names=config.metrics, ks=config.top_k, per_domain=per_domain, objective=dict(config.optimize),
                  seconds=seconds)
    n_pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    return Outcome(output, spec, float(best_trial.value), metrics, len(table), interrupted, n_pruned)
