"""The Optuna study: sampler, storage, objective, resume, and the files it writes.

Every trial's record (pipeline, metrics, relevance gains, timing) is stored in the study's
storage, and the output files are derived from it, so a resumed or shared study reports all of
its trials. A study remembers the data and space it was started with and the revisions of the
models and tokenizers it ran, and refuses to mix in trials from others.
"""

from __future__ import annotations

import shutil
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from ragopt.cache import Cache, cache_key
from ragopt.config import Config, load_config
from ragopt.data import Corpus, QASet, load_dataset
from ragopt.engine import Engine
from ragopt.errors import StudyError
from ragopt.evaluation import Evaluator
from ragopt.export import Exported, write_best
from ragopt.files import atomic_write
from ragopt.provenance import library_versions
from ragopt.records import RECORD, TrialRecord, finished, per_question_table, trials_table
from ragopt.space import enumerate_space, optuna_chooser, suggest_pipeline
from ragopt.spec import PipelineSpec
from ragopt.summary import domain_means, write_summary
from ragopt.trec import TrecWriter


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


STUDY_FORMAT = 2
"""The format of a study's records and scoring conventions; a stored study of another format
(made by an earlier ragopt, its trials scored under other conventions) is not resumed."""


def default_output(config_path: Path) -> Path:
    return config_path.resolve().parent / f"{config_path.stem}-output"


def _space_fingerprint(config: Config, qa: QASet, corpus: Corpus) -> str:
    """What a stored study must share with this run to be resumed: the space and the data content."""
    space = config.model_dump(mode="json", include={"retrievers", "rerankers", "top_k", "optimize"})
    return cache_key(space, corpus.key, qa.queries.key, qa.qids, qa.groups)


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The models and tokenizers whose revision or versions changed since the study started."""
    lines = []
    for group in ("models", "tokenizers"):
        before, now = stored.get(group, {}), current.get(group, {})
        for name in sorted(set(before) | set(now)):
            if name in before and name in now and before[name] != now[name]:
                lines.append(f"  {group[:-1]} {name!r}: {before[name]} -> {now[name]}")
    return lines


def _open_study(config: Config, output: Path, name: str, fresh: bool, fingerprint: str, provenance: dict[str, Any]
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
    attrs = durable.user_attrs
    if not attrs and not durable.trials:
        durable.set_user_attr("format", STUDY_FORMAT)
        durable.set_user_attr("space", fingerprint)
        durable.set_user_attr("provenance", provenance)
    elif attrs.get("format") != STUDY_FORMAT:
        raise StudyError(f"study {name!r} in {storage} was made by another version of ragopt, whose trials were "
                         "scored under other conventions. Rerun with --fresh to start over, or give another --output.")
    elif attrs["space"] != fingerprint:
        raise StudyError(f"study {name!r} in {storage} was started with a different data set or search space. "
                         f"Rerun with --fresh to start over, or give another --output.")
    elif changed := _differences(attrs.get("provenance", {}), provenance):
        raise StudyError(f"study {name!r} in {storage} was run with other model weights or tokenizers; its trials "
                         "cannot be mixed with new ones:\n" + "\n".join(changed)
                         + "\nRerun with --fresh to start over, or give another --output.")
    if config.study.storage:
        return durable, None
    working = optuna.create_study(study_name=name, sampler=sampler, pruner=pruner, direction="maximize")
    working.add_trials([t for t in durable.get_trials(deepcopy=False) if t.state.is_finished()])
    return working, durable


def _warm_up(engine: Engine, config: Config, qa: QASet) -> None:
    """Tokenize and encode corpus and queries for every retriever up front, with progress bars,
    so that trials only combine cached arrays."""
    for entry in config.retrievers:
        for spec in entry.warm_up_specs():
            engine.retrieve(spec, qa.queries, 1)


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
    engine = Engine(corpus, Cache(config.cache_dir or output / "cache"), config.device, progress,
                    config.exact_search_max)
    provenance = engine.provenance(config.models(), config.tokenizers())
    study, durable = _open_study(config, output, config.study.name or config_path.stem, fresh,
                                 _space_fingerprint(config, qa, corpus), provenance)
    evaluator = Evaluator(engine, qa, config.top_k, config.optimize, config.study.seed, config.study.prune_steps)
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
        record = TrialRecord.of(spec, scored.gains, scored.means(config.metrics), reused, elapsed / len(qa))
        trial.set_user_attr(RECORD, record.to_attr())
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
    return _write_outputs(study, config, config_path, output, engine, qa, corpus, seconds, interrupted)


def _write_outputs(study: optuna.Study, config: Config, config_path: Path, output: Path, engine: Engine,
                   qa: QASet, corpus: Corpus, seconds: dict[str, float], interrupted: bool) -> Outcome:
    trials = finished(study)
    if not trials:
        raise StudyError(f"study {study.study_name!r} has no completed trial; raise n_trials or timeout")
    values = [record.per_question(qa, config.top_k, tuple(config.metrics)) for _, record in trials]
    table = trials_table(trials, values)
    atomic_write(output / "trials.csv", lambda tmp: table.to_csv(tmp, index=False))
    per_question = per_question_table(trials, values, qa)
    atomic_write(output / "per_question.parquet", lambda tmp: per_question.to_parquet(tmp, index=False))
    best_trial = study.best_trial
    best = next(i for i, (trial, _) in enumerate(trials) if trial.number == best_trial.number)
    record, per_query = trials[best][1], values[best]
    spec = record.pipeline
    metrics = {name: float(v.mean()) for name, v in per_query.items()}
    write_best(output / "best.yaml", Exported(spec, config.exact_search_max), {
        "study": study.study_name, "trial": best_trial.number, "objective": dict(config.optimize),
        "value": round(float(best_trial.value), 6),
        "metrics_at_k": {k: round(v, 6) for k, v in metrics.items() if k.endswith(f"@{spec.top_k}")}},
        {**engine.provenance(spec.retriever.models() + ([spec.reranker.model] if spec.reranker else []),
                             spec.retriever.tokenizers()),
         "libraries": library_versions()})
    per_domain = domain_means(per_query, qa.domains, config.metrics, spec.top_k) if qa.domains else {}
    write_summary(output / "summary.md", title=config_path.name, qa=qa, corpus=corpus, table=table,
                  best={"trial": best_trial.number, "value": best_trial.value, "description": spec.describe(),
                        "metrics": metrics, "top_k": spec.top_k},
                  names=config.metrics, ks=config.top_k, per_domain=per_domain, objective=dict(config.optimize),
                  seconds=seconds)
    n_pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    return Outcome(output, spec, float(best_trial.value), metrics, len(table), interrupted, n_pruned)
