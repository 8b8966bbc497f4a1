"""The Optuna study: sampler, storage, objective, resume, and the files it writes.

Every trial's record (pipeline, metrics, relevance gains, timing) is stored in the study's
storage, and the output files are derived from it, so a resumed or shared study reports all of
its trials. A study remembers the data and space it was started with and the revisions of the
models and tokenizers it ran, and refuses to mix in trials from others.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from ragopt.cache import Cache, cache_key
from ragopt.config import Config, corpus_warnings, load_config
from ragopt.data import Corpus, QASet, load_dataset
from ragopt.engine import Engine
from ragopt.errors import StudyError
from ragopt.evaluation import Evaluator
from ragopt.compare import ALL, Settings, StudyResults, winners
from ragopt.export import Exported, write_best
from ragopt.files import atomic_write, safe_name, write_text
from ragopt.models import device_type, require_available
from ragopt.provenance import install_command, library_versions
from ragopt.records import RECORD, TrialRecord, finished, per_question_table, trials_table
from ragopt.runs import RUNS, RankingStore, write_best_run, write_index
from ragopt.selection import FoldSelection, best_index, cost_ranks, feasible, kfold_selection, pareto_front
from ragopt.space import enumerate_space, optuna_chooser, small_space, suggest_pipeline
from ragopt.spec import PipelineSpec
from ragopt.splits import study_splits
from ragopt.stats import bootstrap_ci
from ragopt.summary import write_summary
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
    failures: list[dict[str, Any]] = field(default_factory=list)
    """The failed trials: number, pipeline and error."""
    holdout_value: float | None = None
    """The winner's objective on the held-out questions (None without a holdout)."""
    folds_value: float | None = None
    """The k-fold estimate of the selection's held-out objective (None without folds)."""


STUDY_FORMAT = 3
"""The format of a study's records and scoring conventions; a stored study of another format
(made by an earlier ragopt, its trials scored or timed under other conventions) is not resumed.
3: seconds per question measured by a latency probe, not the trial's cached cost."""
GRID = "ragopt_grid"
"""The user attribute of a trial queued as one of the grid's pipelines: its parameters."""
SKIPPED = "ragopt_skipped"
"""The user attribute of a trial a worker stopped before it did anything (the study was done)."""
FAILURE = "ragopt_failure"
"""The user attribute of a failed trial: its pipeline and the error that failed it."""
LATENCY_QUESTIONS = 16
"""Questions a pipeline is timed on, as one batch, with nothing query-side cached."""


def default_output(config_path: Path) -> Path:
    return config_path.resolve().parent / f"{config_path.stem}-output"


def _space_fingerprint(config: Config, qa: QASet, corpus: Corpus, held: np.ndarray) -> str:
    """What a stored study must share with this run to be resumed: the space, the data content,
    the questions trials are selected on (the held-out ones, when any) and the objectives."""
    space = config.model_dump(mode="json", include={"retrievers", "rerankers", "top_k", "optimize"})
    split = np.flatnonzero(held).tolist() if held.any() else []
    return cache_key(space, corpus.key, qa.queries.key, qa.qids, qa.groups, split, config.study.latency == "pareto")


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The models and tokenizers whose revision or versions changed since the study started."""
    lines = []
    for group in ("models", "tokenizers"):
        before, now = stored.get(group, {}), current.get(group, {})
        for name in sorted(set(before) | set(now)):
            if name in before and name in now and before[name] != now[name]:
                lines.append(f"  {group[:-1]} {name!r}: {before[name]} -> {now[name]}")
    return lines


def shown(url: str) -> str:
    """A storage URL as it may be printed: without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://")[0] + "://..."


def driver_url(url: str) -> str:
    """A postgresql:// URL with no driver named gets psycopg 3 (ragopt[postgres] installs it),
    whatever SQLAlchemy's default for the version installed (psycopg2 before 2.1)."""
    return "postgresql+psycopg:" + url.removeprefix("postgresql:") if url.startswith("postgresql:") else url


MIN_GRACE_SECONDS = 60
"""The least time a trial's worker may be silent before the trial is failed and queued again: a
live worker's heartbeats can come seconds late on a loaded machine, and failing its trial then
runs the pipeline twice."""


def grace_seconds(heartbeat: float) -> int:
    """How long a trial's worker may send no heartbeat before its trial counts as stale: three
    intervals, and at least MIN_GRACE_SECONDS."""
    return int(max(3 * heartbeat, MIN_GRACE_SECONDS))


def _storage(url: str, heartbeat: float) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL; a shared (RDB) one sends heartbeats, so that a trial whose
    worker died is failed after three silent intervals (at least a minute) and retried with the
    same parameters.
    Workers that start together may race to create the database's tables: they try again."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise StudyError(f"study.storage {shown(url)!r}: give a sqlite:///, postgresql:// or mysql:// URL")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 30}  # an unreachable server fails in seconds, not minutes
    connect = driver_url(url)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    connect, engine_kwargs=kwargs, heartbeat_interval=int(heartbeat),
                    grace_period=grace_seconds(heartbeat),
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        except (IntegrityError, OperationalError, ProgrammingError) as error:
            if attempt == 4 or (not isinstance(error, IntegrityError) and not any(
                    word in str(error) for word in ("locked", "already exists"))):
                failure: Exception = error
                break
            time.sleep(0.5 + attempt)
        except ImportError:
            driver = (install_command("postgres") if url.startswith("postgresql:")
                      else "pip install the driver the URL names")
            raise StudyError(f"cannot open the study storage {shown(url)}: {driver}") from None
        except (SQLAlchemyError, ValueError) as error:
            failure = error
            break
    reason = str(failure).splitlines()[0][:300].replace(connect, shown(url)).replace(url, shown(url))
    raise StudyError(f"cannot open the study storage {shown(url)}: {type(failure).__name__}: {reason}. Check that "
                     "the database server runs and the URL, user and password are right.") from None


def _open_study(config: Config, output: Path, name: str, fresh: bool, fingerprint: str, provenance: dict[str, Any]
                ) -> tuple[optuna.Study, optuna.Study | None, bool]:
    """The study trials run in, the durable one to copy each finished trial to (or None), and
    whether this process created the study (and so queues a grid: exactly one process does).

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
    url = config.study.storage or f"sqlite:///{output / 'study.db'}"
    storage = _storage(url, config.study.heartbeat) if config.study.storage else url
    if fresh:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
    directions = ["maximize", "minimize"] if config.study.latency == "pareto" else ["maximize"]
    try:
        durable = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                      directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        durable = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    attrs = _attrs_of(durable, created)
    if created or (not attrs and not durable.trials):
        durable.set_user_attr("format", STUDY_FORMAT)
        durable.set_user_attr("space", fingerprint)
        durable.set_user_attr("provenance", provenance)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            durable.set_metric_names(["quality", "seconds_per_query"][:len(directions)])
    elif attrs.get("format") != STUDY_FORMAT:
        raise StudyError(f"study {name!r} in {shown(url)} was made by another version of ragopt, whose trials were "
                         "scored under other conventions. Rerun with --fresh to start over, or give another --output.")
    elif attrs.get("space") != fingerprint:
        raise StudyError(f"study {name!r} in {shown(url)} was started with a different data set or search space. "
                         f"Rerun with --fresh to start over, or give another --output.")
    elif changed := _differences(attrs.get("provenance", {}), provenance):
        raise StudyError(f"study {name!r} in {shown(url)} was run with other model weights or tokenizers; its trials "
                         "cannot be mixed with new ones:\n" + "\n".join(changed)
                         + "\nRerun with --fresh to start over, or give another --output.")
    if config.study.storage:
        return durable, None, created
    working = optuna.create_study(study_name=name, sampler=sampler, pruner=pruner, directions=directions)
    working.add_trials([t for t in durable.get_trials(deepcopy=False) if t.state.is_finished()])
    return working, durable, True


STUDY_ATTRS = ("format", "space", "provenance")
"""The user attributes the process that creates a study writes, one at a time, before any trial."""
JOIN_SECONDS = 300.0
"""How long a worker that joins a study another one is creating waits for all of STUDY_ATTRS."""


def _attrs_of(study: optuna.Study, created: bool) -> dict[str, Any]:
    """The study's ragopt attributes; a worker that joins a study another one is creating waits
    for all of them to be written, however slowly a loaded machine runs the creator."""
    deadline = time.monotonic() + JOIN_SECONDS
    while True:
        attrs = study.user_attrs
        if created or all(name in attrs for name in STUDY_ATTRS) or study.trials or time.monotonic() > deadline:
            return attrs
        time.sleep(0.5)


def _latency_rows(qa: QASet, seed: int) -> np.ndarray:
    """The questions every pipeline's seconds per question are measured on: a seeded sample."""
    return np.sort(np.random.default_rng(seed).permutation(len(qa))[:LATENCY_QUESTIONS])


def _warm_up(engine: Engine, config: Config, qa: QASet) -> None:
    """Tokenize and encode corpus and queries for every retriever up front, with progress bars,
    so that trials only combine cached arrays."""
    for entry in config.retrievers:
        for spec in entry.warm_up_specs():
            engine.retrieve(spec, qa.queries, 1)


ORPHAN_SECONDS = 120.0
"""A trial RUNNING this long with no parameters lost its worker between being handed out and its
first suggestion: no heartbeat was ever recorded for it, so Optuna never finds it stale."""


def _fail_orphans(study: optuna.Study) -> None:
    """Fail the trials of workers killed before their trial began, and queue a grid pipeline again."""
    now = datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        age = (now - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0
        if trial.params or age < ORPHAN_SECONDS:
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it began after all, or another worker failed it first
        queued = trial.user_attrs.get(GRID)
        if isinstance(queued, dict):
            study.enqueue_trial(queued, user_attrs={GRID: queued})


def _enough(study: optuna.Study, trial: optuna.Trial, grid: bool, total: int) -> bool:
    """On a shared study, whether this trial is one too many: a grid trial that is not one of the
    queued pipelines (the queue ran dry under another worker), or a trial beyond `total` counting
    the finished and running trials that started before it."""
    if grid:
        return GRID not in trial.user_attrs
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    return sum(t.number < trial.number for t in study.get_trials(deepcopy=False, states=states)) >= total


def _left(study: optuna.Study, grid: bool, total: int) -> int:
    """What the study still has to run: queued grid pipelines, or trials up to `total`."""
    if grid:
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    return max(0, total - len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))))


def _grid(config: Config, total: int) -> list[dict[str, Any]] | None:
    """The space's pipelines when the study runs it as a grid (asked to, or a finite space with no
    more pipelines than `total`, rather than sampling the same pipelines again); else None."""
    if not config.finite:
        return None
    if config.study.sampler == "grid":
        return enumerate_space(config)
    return small_space(config, total)


def _queue(study: optuna.Study, pipelines: list[dict[str, Any]]) -> None:
    """Queue the grid's pipelines not queued or run yet, each carrying its parameters (so that a
    retried trial that lost them can queue its pipeline again)."""
    for params in pipelines:
        study.enqueue_trial(params, user_attrs={GRID: params}, skip_if_exists=True)


def optimize(config_path: str | Path, output: str | Path | None = None, n_trials: int | None = None,
             fresh: bool = False, progress: bool = True, per_domain: bool = False, storage: str | None = None,
             workers: int = 1, write: bool = True) -> Outcome | None:
    """Run (or resume) the study a config describes and write its output folder. `per_domain`
    turns on study.per_domain; `storage` overrides study.storage (a database several processes
    share); `workers` > 1 runs that many processes on it (the default storage's SQLite file when
    none is given), this one included; `write=False` runs trials only (a worker of another
    process, which writes the outputs)."""
    config_path = Path(config_path)
    config, _ = load_config(config_path)
    if n_trials is not None and n_trials < 1:
        raise StudyError(f"n_trials (--n-trials) must be at least 1; got {n_trials}: leave it out to run the "
                         f"config's study.n_trials ({config.study.n_trials} trials)")
    if workers < 1:
        raise StudyError(f"--workers must be at least 1; got {workers}")
    qa, corpus = load_dataset(**config.data.model_dump())  # the data, then every model, checked before any file
    require_available(config.models())
    output = Path(output) if output is not None else default_output(config_path)
    output.mkdir(parents=True, exist_ok=True)
    shared = storage or config.study.storage or (f"sqlite:///{output.resolve() / 'study.db'}" if workers > 1 else None)
    config = config.model_copy(update={"study": config.study.model_copy(update={
        "per_domain": per_domain or config.study.per_domain, "storage": shared})})
    with _only_run(output, storage or config.study.storage):
        return _optimize(config, config_path, output, qa, corpus, n_trials, fresh, progress, workers, write)


STORAGE_VARIABLE = "RAGOPT_STORAGE"
"""The environment variable --storage reads: how worker processes get the URL, password included."""


def _start_workers(count: int, config_path: Path, output: Path, n_trials: int | None, storage: str
                   ) -> list[subprocess.Popen]:
    """Worker processes on the shared study, one GPU each where there are several."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    processes = []
    for i in range(count):
        env = {**os.environ, STORAGE_VARIABLE: storage}  # not on the command line, where `ps` shows a password
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str((i + 1) % gpus)
        command = [sys.executable, "-m", "ragopt", "optimize", str(config_path), "--output", str(output),
                   "--worker", "--quiet"] + (["--n-trials", str(n_trials)] if n_trials else [])
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return processes


@contextmanager
def _only_run(output: Path, storage: str | None) -> Iterator[None]:
    """With the default storage (a SQLite file in the output folder), one process at a time per
    output folder: a second one would run the trials again and overwrite the first one's files."""
    if storage is not None:
        yield
        return
    lock = FileLock(output / ".ragopt.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StudyError(f"another `ragopt optimize` is running on {output}; wait for it to finish, give another "
                         "--output, or run several workers on one study with a shared study.storage "
                         "(e.g. postgresql://...)") from None
    try:
        yield
    finally:
        lock.release()


OUTPUTS = ("trials.csv", "per_question.parquet", "study.json", "best.yaml", "summary.md", "qrels.trec", RUNS,
           "per_domain", "pareto", "compare", "report.html")
"""What optimize, compare and report write in an output folder, besides the study and the cache."""


def _clear_outputs(output: Path) -> None:
    """--fresh: delete the previous study's outputs first, so that a new study stopped before it
    writes its own never leaves them beside it (the cache stays: it is keyed by content). Only in
    a folder a study wrote (its qrels.trec or study.json): an --output given by mistake keeps its files."""
    if not ((output / "qrels.trec").exists() or (output / "study.json").exists()):
        return
    for name in OUTPUTS:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _optimize(config: Config, config_path: Path, output: Path, qa: QASet, corpus: Corpus, n_trials: int | None,
              fresh: bool, progress: bool, workers: int, write: bool) -> Outcome | None:
    for line in corpus_warnings(config_path, config, len(corpus)):
        warnings.warn(line, UserWarning, stacklevel=2)
    if fresh:
        _clear_outputs(output)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported in one line, not a traceback
    engine = Engine(corpus, Cache(config.cache_dir or output / "cache"), config.device, progress,
                    config.exact_search_max)
    held, folds = study_splits(config.study, qa.domains, len(qa))
    provenance = engine.provenance(config.models(), config.tokenizers())
    study, durable, created = _open_study(config, output, config.study.name or config_path.stem, fresh,
                                          _space_fingerprint(config, qa, corpus, held), provenance)
    evaluator = Evaluator(engine, qa, config.top_k, config.optimize, config.study.seed, config.study.prune_steps,
                          selection=~held)
    probe = _latency_rows(qa, config.study.seed)
    TrecWriter(qa.qids, corpus.doc_ids).qrels(output / "qrels.trec", qa.groups)
    rankings = RankingStore(output / RUNS)

    started = time.perf_counter()
    _warm_up(engine, config, qa)
    warm_up = time.perf_counter() - started
    if durable is None:  # a shared study: fail (and queue again) the trials of workers that died
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        _fail_orphans(study)
    total = config.study.n_trials if n_trials is None else n_trials
    pipelines = _grid(config, total)
    grid = pipelines is not None
    if pipelines is not None and (created or workers > 1):  # one process queues a grid
        _queue(study, pipelines)
    target = _left(study, grid, total)
    helpers = _start_workers(workers - 1, config_path, output, n_trials, config.study.storage) if workers > 1 else []
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if progress and done:
        tqdm.write(f"resuming study {study.study_name!r} from {done} finished trials; {target} to run"
                   if target else f"study {study.study_name!r} already complete ({done} trials); rewriting its outputs")
    durations: list[float] = []

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        start = time.perf_counter()
        if durable is None and _enough(study, trial, grid, total):
            study.stop()
            trial.set_user_attr(SKIPPED, True)
            raise optuna.TrialPruned()
        spec = suggest_pipeline(config, optuna_chooser(trial))
        queued = trial.user_attrs.get(GRID)
        if durable is None and isinstance(queued, dict) and trial.params != queued:
            # a retry of a trial whose worker died before storing the queued pipeline: queue it again
            study.enqueue_trial(queued, user_attrs={GRID: queued})
            trial.set_user_attr(SKIPPED, True)
            raise optuna.TrialPruned()
        try:
            if config.study.pruner == "none":
                scored, reused = evaluator.evaluate(spec)
            else:
                scored, reused = evaluator.evaluate_pruned(spec, trial)
        except optuna.TrialPruned:
            raise
        except Exception as error:  # one pipeline's failure fails its trial, recorded; the study goes on
            failure = {"pipeline": spec.describe(), "error": f"{type(error).__name__}: {error}"}
            trial.set_user_attr(FAILURE, failure)
            if progress:
                tqdm.write(f"trial {trial.number} failed ({failure['pipeline']}): {failure['error']}; going on")
            raise
        value = evaluator.objective(scored, spec.top_k)
        seconds = engine.seconds_per_query(spec, qa.queries, probe) if config.study.latency != "off" else np.nan
        if config.study.latency_budget is not None:
            trial.set_constraint("seconds_over_budget", seconds - config.study.latency_budget)
        durations.append(time.perf_counter() - start)
        record = TrialRecord.of(spec, scored.gains, reused, seconds, rankings.save(scored.ranking.ids))
        trial.set_user_attr(RECORD, record.to_attr())
        return (value, seconds) if config.study.latency == "pareto" else value

    bar = tqdm(total=target, desc="trials", unit="trial", disable=not progress or target == 0)
    best = [-np.inf]

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if durable is not None:
            durable.add_trial(trial)
        bar.update()
        if trial.state == optuna.trial.TrialState.COMPLETE:
            best[0] = max(best[0], trial.values[0])
            bar.set_postfix(best=f"{best[0]:.4f}", refresh=False)

    interrupted = False
    try:
        for _ in range(3):
            try:
                if target:
                    study.optimize(objective, n_trials=target, timeout=config.study.timeout, callbacks=[report],
                                   catch=(Exception,))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # this trial's heartbeat came late: another worker failed it and queued it again
            except ValueError as error:  # the storage handed this trial to another worker too, which told it first
                if "Cannot tell a" not in str(error):
                    raise
            target = _left(study, grid, total) if durable is None else 0  # e.g. a dead worker's trial, queued again
            if not target:
                break
    except KeyboardInterrupt:
        interrupted = True  # keep the finished trials: write the outputs, a rerun resumes
    finally:
        bar.close()
        errors = [(p.communicate()[1] or b"").decode(errors="replace").strip() for p in helpers]
        failed_workers = [e for p, e in zip(helpers, errors) if p.returncode != 0]
    if failed_workers and not interrupted:  # Ctrl-C reaches the workers too: their exits are not failures
        raise StudyError("a worker process failed:\n" + failed_workers[0][-2000:])
    if interrupted and not finished(study):
        raise KeyboardInterrupt  # nothing to write yet: the command line says what was kept and how to resume
    if not write:
        return None
    seconds = {"first": warm_up + (durations[0] if durations else 0.0),
               "median": statistics.median(durations[1:]) if len(durations) > 1 else 0.0,
               "total": time.perf_counter() - started}
    return _write_outputs(study, config, config_path, output, engine, evaluator, corpus, held, folds, seconds,
                          interrupted)


def _write_outputs(study: optuna.Study, config: Config, config_path: Path, output: Path, engine: Engine,
                   evaluator: Evaluator, corpus: Corpus, held: np.ndarray, folds: np.ndarray | None,
                   seconds: dict[str, float], interrupted: bool) -> Outcome:
    """Every output file, derived from the stored trials: trials.csv, per_question.parquet,
    runs/index.json, study.json, runs/best.trec, best.yaml (and per domain, and the Pareto front,
    when asked), summary.md."""
    qa, settings = evaluator.qa, Settings(config.study.confidence, seed=config.study.seed)
    trials = finished(study)
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    failures = [{"trial": t.number, **t.user_attrs[FAILURE]} for t in failed if FAILURE in t.user_attrs]
    if not trials:
        reason = f"; the first failure: trial {failures[0]['trial']}, {failures[0]['error']}" if failures else ""
        raise StudyError(f"study {study.study_name!r} has no completed trial{reason}; raise n_trials or timeout, "
                         "or fix what failed")
    seconds = {**seconds, **_study_time(study)}
    values = [record.per_question(qa, config.top_k, tuple(config.metrics)) for _, record in trials]
    objectives = [evaluator.per_query_objective(v, record.pipeline.top_k) for v, (_, record) in zip(values, trials)]
    table = trials_table(trials, values, objectives, held, qa.domains)
    per_question = per_question_table(trials, values, objectives, qa, held, folds)
    budget = config.study.latency_budget
    quality, latency = table["value"].to_numpy(), table["seconds_per_query"].to_numpy()
    table["cost_rank"] = cost = cost_ranks([record.pipeline for _, record in trials])  # the tie rule's order
    front = pareto_front(quality, latency, budget, cost)
    table["pareto"] = front
    if budget is not None:
        table["feasible"] = feasible(latency, budget)
    storage = shown(config.study.storage) if config.study.storage else None  # never a password in the outputs
    manifest = {"study": study.study_name, "config": config_path.name, "storage": storage,
                "objective": dict(config.optimize), "metrics": config.metrics, "top_k": config.top_k,
                "seed": config.study.seed, "confidence": config.study.confidence, "holdout": config.study.holdout,
                "folds": config.study.folds, "latency": config.study.latency, "latency_budget": budget,
                "min_domain_questions": config.study.min_domain_questions}
    atomic_write(output / "trials.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(output / "per_question.parquet", lambda tmp: per_question.to_parquet(tmp, index=False))
    write_index(output, qa.qids, corpus.doc_ids, {t.number: record.ranking for t, record in trials})
    by_speed = config.study.latency == "pareto"
    best = best_index(quality, latency, budget, by_speed, cost)  # raises (after the tables) when none is in budget
    manifest["best_trial"] = int(table["trial"][best])
    write_text(output / "study.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    write_best_run(output, manifest["best_trial"])
    results = StudyResults(table, per_question, manifest)

    objective = np.stack(objectives, axis=1)
    cv = kfold_selection(objective, folds, latency, budget, by_speed, cost) if folds is not None else None
    scoring = _scoring(results, best, objective, cv, settings)
    _export(output / "best.yaml", trials[best], config, engine, scoring, _at_k(values[best], ~held, held))
    if config.study.per_domain:
        _export_domains(output / "per_domain", results, trials, values, config, engine, settings)
    if config.study.latency == "pareto" or budget is not None:
        shutil.rmtree(output / "pareto", ignore_errors=True)
        for i in np.flatnonzero(front):
            _export(output / "pareto" / f"trial-{trials[i][0].number}.yaml", trials[i], config, engine,
                    {"value": round(float(quality[i]), 6), "seconds_per_query": float(latency[i])},
                    _at_k(values[i], ~held, held))
    spec = trials[best][1].pipeline
    metrics = {name: float(v[~held].mean()) for name, v in values[best].items()}
    write_summary(output / "summary.md", title=config_path.name, qa=qa, corpus=corpus, results=results, best=best,
                  scoring=scoring, cv=cv, names=config.metrics, ks=config.top_k, top_k=spec.top_k,
                  seconds=seconds, settings=settings, failures=failures)
    n_pruned = sum(SKIPPED not in t.user_attrs
                   for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    return Outcome(output, spec, float(quality[best]), metrics, len(table), interrupted, n_pruned, failures,
                   scoring.get("holdout", {}).get("value"), cv.score if cv is not None else None)


def _study_time(study: optuna.Study) -> dict[str, float]:
    """The time of the whole study, every run and worker included: its finished trials, the sum
    of their durations, and the span from the first start to the last finish."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.datetime_start
            and t.datetime_complete and SKIPPED not in t.user_attrs]
    if not done:
        return {"trials": 0, "trial_seconds": 0.0, "span": 0.0}
    return {"trials": len(done),
            "trial_seconds": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done),
            "span": (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()}


def _scoring(results: StudyResults, best: int, objective: np.ndarray, cv: FoldSelection | None,
             settings: Settings) -> dict[str, Any]:
    """How the winner scored, for best.yaml: its value on the selection questions with an
    interval, on the held-out questions with one, and the k-fold estimate of the selection."""
    selection, _ = results.sides()
    row = results.trials.iloc[best]
    mean, low, high = bootstrap_ci(objective[selection, best], confidence=settings.confidence, seed=settings.seed)
    scoring: dict[str, Any] = {
        "value": round(float(row["value"]), 6), "interval": [round(float(low), 6), round(float(high), 6)],
        "confidence": settings.confidence, "questions": int(selection.sum()),
        "seconds_per_query": float(row["seconds_per_query"])}
    if results.has_holdout:
        held = ~selection
        mean, low, high = bootstrap_ci(objective[held, best], confidence=settings.confidence, seed=settings.seed)
        scoring["holdout"] = {"value": round(float(mean), 6), "interval": [round(float(low), 6), round(float(high), 6)],
                              "questions": int(held.sum())}
    if cv is not None:
        scoring["folds"] = {"k": len(cv.chosen), "score": round(cv.score, 6),
                            "held_out": [round(v, 6) for v in cv.held_out],
                            "chosen_trials": [int(results.trials["trial"].iloc[i]) for i in cv.chosen]}
    return scoring


def _at_k(values: dict[str, np.ndarray], selection: np.ndarray, held: np.ndarray) -> dict[str, dict[str, float]]:
    """Every metric at every k: the mean on the selection questions and on the held-out ones."""
    sides = {"selection": selection, "holdout": held}
    return {side: {k: round(float(v[rows].mean()), 6) for k, v in values.items()} for side, rows in sides.items()
            if rows.any()}


def _export(path: Path, trial: tuple[optuna.trial.FrozenTrial, TrialRecord], config: Config, engine: Engine,
            evaluation: dict[str, Any], metrics: dict[str, dict[str, float]]) -> None:
    """A best.yaml for one trial, with its scores (the metrics at its k on each side of the
    split) and the provenance of its models."""
    frozen, record = trial
    spec = record.pipeline
    path.parent.mkdir(parents=True, exist_ok=True)
    at_k = {side: {k: v for k, v in means.items() if k.endswith(f"@{spec.top_k}")} for side, means in metrics.items()}
    write_best(path, Exported(spec, config.exact_search_max, device_type(engine.device)), {
        "trial": frozen.number, "objective": dict(config.optimize), **evaluation, "metrics_at_k": at_k},
        {**engine.provenance(spec.retriever.models() + ([spec.reranker.model] if spec.reranker else []),
                             spec.retriever.tokenizers()),
         "libraries": library_versions()}, corpus=engine.corpus.source)


def _export_domains(folder: Path, results: StudyResults, trials: list[tuple[Any, TrialRecord]],
                    values: list[dict[str, np.ndarray]], config: Config, engine: Engine, settings: Settings) -> None:
    """One best config per domain with at least min_domain_questions selection questions."""
    shutil.rmtree(folder, ignore_errors=True)
    table = winners(results, "objective", settings, config.study.min_domain_questions)
    position = {int(t.number): i for i, (t, _) in enumerate(trials)}
    selection, _ = results.sides()
    groups, names = results.groups(), set()
    for row in table[(table["domain"] != ALL) & table["enough"]].itertuples():
        scored_on = "holdout" if results.has_holdout else "selection"
        name = safe_name(row.domain)
        name = next(f"{name}-{i}" for i in range(1, len(groups) + 2) if f"{name}-{i}" not in names) \
            if name in names else name
        names.add(name)
        mask, i = groups[row.domain], position[row.trial]
        _export(folder / f"{name}.yaml", trials[i], config, engine, {
            "domain": row.domain, "questions": int(row.questions), "value": round(float(row.selected), 6),
            scored_on: {"value": round(float(row.score), 6), "interval": [round(float(row.low), 6),
                                                                          round(float(row.high), 6)],
                        "questions": int(row.scored_on)}}, _at_k(values[i], selection & mask, ~selection & mask))
