"""Several processes on one study: starting workers, one process per output folder, queueing a
grid once, and the trials of workers that died."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock, Timeout

from ragopt.search.config import Config
from ragopt.errors import StudyError
from ragopt.search.space import enumerate_space, small_space


GRID = "ragopt_grid"
"""The user attribute of a trial queued as one of the grid's pipelines: its parameters."""


SKIPPED = "ragopt_skipped"
"""The user attribute of a trial a worker stopped before it did anything (the study was done)."""


ORPHAN_SECONDS = 120.0
"""A trial RUNNING this long with no parameters lost its worker between being handed out and its
first suggestion: no heartbeat was ever recorded for it, so Optuna never finds it stale."""


def fail_orphans(study: optuna.Study) -> None:
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


def one_too_many(study: optuna.Study, trial: optuna.Trial, grid: bool, total: int) -> bool:
    """On a shared study, whether this trial is one too many: a grid trial that is not one of the
    queued pipelines (the queue ran dry under another worker), or a trial beyond `total` counting
    the finished and running trials that started before it."""
    if grid:
        return GRID not in trial.user_attrs
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    return sum(t.number < trial.number for t in study.get_trials(deepcopy=False, states=states)) >= total


def trials_left(study: optuna.Study, grid: bool, total: int) -> int:
    """What the study still has to run: queued grid pipelines, or trials up to `total`."""
    if grid:
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    return max(0, total - len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))))


def grid_pipelines(config: Config, total: int) -> list[dict[str, Any]] | None:
    """The space's pipelines when the study runs it as a grid (asked to, or a finite space with no
    more pipelines than `total`, rather than sampling the same pipelines again); else None."""
    if not config.finite:
        return None
    if config.study.sampler == "grid":
        return enumerate_space(config)
    return small_space(config, total)


def queue_grid(study: optuna.Study, pipelines: list[dict[str, Any]]) -> None:
    """Queue the grid's pipelines not queued or run yet, each carrying its parameters (so that a
    retried trial that lost them can queue its pipeline again)."""
    for params in pipelines:
        study.enqueue_trial(params, user_attrs={GRID: params}, skip_if_exists=True)


STORAGE_VARIABLE = "RAGOPT_STORAGE"
"""The environment variable --storage reads: how worker processes get the URL, password included."""


def start_workers(count: int, config_path: Path, output: Path, n_trials: int | None, storage: str
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
def only_run(output: Path, storage: str | None) -> Iterator[None]:
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
