"""`ragopt optimize`: load the data, open (or resume) the study, run its trials in this process
and its workers, then write the outputs."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from tqdm.auto import tqdm

from ragopt.search.config import Config, corpus_warnings, load_config
from ragopt.errors import StudyError
from ragopt.scoring.evaluation import Evaluator
from ragopt.study.records import finished
from ragopt.study.runs import RUNS, RankingStore
from ragopt.analysis.splits import study_splits
from ragopt.study.storage import open_study
from ragopt.study.workers import fail_orphans, grid_pipelines, only_run, queue_grid, start_workers, trials_left
from ragopt.provenance import versions
from ragopt.scoring.chunkings import CHUNKING_LIBRARIES
from ragopt.study.data import StudyData, load_study_data
from ragopt.study.objective import TrialObjective, space_fingerprint, warm_up
from ragopt.study.outputs import Outcome, clear_outputs, write_outputs
from ragopt.study.tuning import study_tuner


def default_output(config_path: Path) -> Path:
    return config_path.resolve().parent / f"{config_path.stem}-output"


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
    output = Path(output) if output is not None else default_output(config_path)
    data = load_study_data(config, config.cache_dir or output / "cache", progress)
    output.mkdir(parents=True, exist_ok=True)
    shared = storage or config.study.storage or (f"sqlite:///{output.resolve() / 'study.db'}" if workers > 1 else None)
    config = config.model_copy(update={"study": config.study.model_copy(update={
        "per_domain": per_domain or config.study.per_domain, "storage": shared})})
    with only_run(output, storage or config.study.storage):
        return _optimize(config, config_path, output, data, n_trials, fresh, progress, workers, write)


def _optimize(config: Config, config_path: Path, output: Path, data: StudyData, n_trials: int | None,
              fresh: bool, progress: bool, workers: int, write: bool) -> Outcome | None:
    if data.chunkings is None:
        for line in corpus_warnings(config_path, config, len(data.engine.corpus)):
            warnings.warn(line, UserWarning, stacklevel=2)
    if fresh:
        clear_outputs(output)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported in one line, not a traceback
    qa = data.qa
    held, folds = study_splits(config.study, qa.domains, len(qa))
    provenance = data.engine.provenance(config.models(), config.tokenizers())
    if config.chunkers:  # the libraries that cut the documents: a stored chunking is only valid under them
        provenance["chunking"] = versions(*CHUNKING_LIBRARIES)
    study, durable, created = open_study(config, output, config.study.name or config_path.stem, fresh,
                                         space_fingerprint(config, data, held), provenance)
    tuner = study_tuner(config, data, held, folds, progress)
    evaluator = Evaluator(data.target, qa, config.top_k, config.optimize, config.study.seed,
                          config.study.prune_steps, selection=~held, plan=tuner.plan if tuner else None)

    started = time.perf_counter()
    warm_up(data, config)
    warm_up_seconds = time.perf_counter() - started
    if durable is None:  # a shared study: fail (and queue again) the trials of workers that died
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        fail_orphans(study)
    total = config.study.n_trials if n_trials is None else n_trials
    pipelines = grid_pipelines(config, total)
    grid = pipelines is not None
    if pipelines is not None and (created or workers > 1):  # one process queues a grid
        queue_grid(study, pipelines)
    target = trials_left(study, grid, total)
    helpers = start_workers(workers - 1, config_path, output, n_trials, config.study.storage) if workers > 1 else []
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if progress and done:
        tqdm.write(f"resuming study {study.study_name!r} from {done} finished trials; {target} to run"
                   if target else f"study {study.study_name!r} already complete ({done} trials); rewriting its outputs")
    objective = TrialObjective(config, data, evaluator, RankingStore(output / RUNS), grid, total, durable is None,
                               progress, tuner)
    durations = objective.durations

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
            # e.g. a dead worker's trial, queued again
            target = trials_left(study, grid, total) if durable is None else 0
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
    seconds = {"first": warm_up_seconds + (durations[0] if durations else 0.0),
               "median": statistics.median(durations[1:]) if len(durations) > 1 else 0.0,
               "total": time.perf_counter() - started}
    return write_outputs(study, config, config_path, output, data, evaluator, held, folds, seconds, interrupted,
                         tuner)
