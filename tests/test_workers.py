"""Several processes on one study through a shared storage (PostgreSQL, started by tests/postgres.py,
and the default SQLite file): the grid runs each pipeline once, the total number of trials holds
across workers, and a worker killed mid-trial loses only that trial, which a rerun retries."""

import functools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import write_config
from postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)
from ragopt.errors import StudyError
from ragopt.study import SKIPPED, optimize, shown

GRID = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, {type: char_ngram, n: 2}], method: [lucene, bm25+],
     k1: [0.9, 1.2, 1.5, 1.8], b: [0.5, 0.75]}
top_k: [1, 3]
study: {sampler: grid, heartbeat: 1, latency: off}
"""


def worker(config: Path, storage: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ragopt", "optimize", str(config), "--storage", storage,
                             "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@functools.cache
def opened(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per URL for the whole test session: loading a study by
    URL opens a new pool each time, and polling that way exhausts PostgreSQL's connections."""
    return optuna.storages.RDBStorage(url.replace("postgresql://", "postgresql+psycopg://"))


def load(url: str, name: str = "grid") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=opened(url))


def states(storage: str, name: str) -> Counter:
    """Trials by state, leaving out those a worker stopped before they began (the queue was empty)."""
    trials = load(storage, name).trials
    return Counter(t.state.name for t in trials if SKIPPED not in t.user_attrs)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> tuple[pd.DataFrame, object]:
    """The grid's trials and winner from one process alone, to compare the workers' with."""
    folder = tmp_path_factory.mktemp("alone")
    alone = optimize(write_config(folder / "grid.yaml", GRID), folder / "out", progress=False)
    return _by_pipeline(alone.output), alone.best_spec


def _by_pipeline(output: Path) -> pd.DataFrame:
    frame = pd.read_csv(output / "trials.csv")[["pipeline", "value", "ndcg@3", "f1@1"]]
    return frame.sort_values("pipeline").reset_index(drop=True)


@pytest.mark.parametrize("kind, workers", [("sqlite", 3), ("postgresql", 4)])
def test_workers_run_each_grid_pipeline_once_and_match_one_worker(tmp_path, request, one_worker, kind, workers):
    config = write_config(tmp_path / "grid.yaml", GRID)
    url = request.getfixturevalue("postgres_url") if kind == "postgresql" else None  # None: study.db in the output
    outcome = optimize(config, tmp_path / "shared", progress=False, storage=url, workers=workers)
    storage = url or f"sqlite:///{outcome.output / 'study.db'}"
    study = load(storage)
    assert states(storage, "grid") == Counter({"COMPLETE": 64})
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 64
    pd.testing.assert_frame_equal(_by_pipeline(outcome.output), one_worker[0])
    assert outcome.best_spec == one_worker[1]


def test_the_total_number_of_trials_holds_across_workers(tmp_path, postgres_url):  # noqa: F811
    config = write_config(tmp_path / "tpe.yaml", GRID.replace("k1: [0.9, 1.2, 1.5, 1.8], b: [0.5, 0.75]",
                                                              "k1: {low: 0.5, high: 2.0}, b: {low: 0.3, high: 1.0}")
                          .replace("sampler: grid", "sampler: tpe, n_trials: 30"))
    storage = postgres_url
    processes = [worker(config, storage, "--worker") for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    assert states(storage, "tpe")["COMPLETE"] == 30


SLOW = """
import time
import ragopt.evaluation

evaluate = ragopt.evaluation.Evaluator.evaluate


def slow(self, spec):
    time.sleep(3.0)
    return evaluate(self, spec)


ragopt.evaluation.Evaluator.evaluate = slow
"""
"""A sitecustomize for the worker to be killed: every trial takes at least 3 s."""


def test_a_worker_killed_mid_trial_loses_only_that_trial(tmp_path, postgres_url):  # noqa: F811
    config = write_config(tmp_path / "grid.yaml", GRID)
    storage = postgres_url
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "slow")}
    process = subprocess.Popen([sys.executable, "-m", "ragopt", "optimize", str(config), "--storage", storage,
                                "--quiet", "--worker"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.05)
        try:
            study = load(storage)
        except KeyError:  # the worker has not created the study yet
            continue
        running = [t for t in study.trials if t.state.name == "RUNNING"]
        done = sum(t.state.name == "COMPLETE" for t in study.trials)
        if done >= 2 and running and running[0].params and (
                datetime.now() - running[0].datetime_start).total_seconds() > 1.2:
            os.kill(process.pid, signal.SIGKILL)  # mid-trial, after its first heartbeats
            break
    else:
        pytest.fail(f"the worker never ran a trial: {process.stderr.read() if process.poll() else ''}")
    process.wait()
    running = states(storage, "grid")["RUNNING"]  # the killed trial (rarely, the kill lands just after it)
    assert running <= 1
    time.sleep(5.5)  # the grace period (at least 5 s) has passed: the trial is stale
    outcome = optimize(config, tmp_path / "out", storage=storage, progress=False)
    final = states(storage, "grid")
    every = load(storage).trials
    detail = [(t.number, t.state.name, t.user_attrs.keys(), t.system_attrs.get("failed_trial")) for t in every
              if t.state.name != "COMPLETE"]
    assert final["COMPLETE"] == 64 == outcome.n_trials and final["FAIL"] == running and not final["RUNNING"], detail
    study = load(storage)
    assert len({tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"}) == 64


def test_a_storage_password_is_never_shown(tmp_path):
    url = "postgresql://alice:s3cret@127.0.0.1:1/ragopt"
    config = write_config(tmp_path / "grid.yaml", GRID)
    with pytest.raises(StudyError) as caught:
        optimize(config, progress=False, storage=url)
    assert "s3cret" not in str(caught.value) and "postgresql://alice:***@127.0.0.1:1/ragopt" in str(caught.value)
    assert shown(url) == "postgresql://alice:***@127.0.0.1:1/ragopt"
    from typer.testing import CliRunner

    from ragopt.cli import app

    result = CliRunner().invoke(app, ["optimize", str(config), "--storage", url, "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "s3cret" not in result.output
    assert "server runs and the URL, user and password are right" in " ".join(result.output.split())


def test_a_retry_without_parameters_queues_its_grid_pipeline_again(tmp_path, monkeypatch):
    from ragopt import study as study_module
    from ragopt.space import enumerate_space

    config = write_config(tmp_path / "grid.yaml", GRID)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    grid = enumerate_space(study_module.load_config(config)[0])
    monkeypatch.setattr(study_module, "enumerate_space", lambda config: grid[:-1])
    optimize(config, tmp_path / "first", storage=storage, progress=False)  # 63 pipelines
    stored = load(storage)
    # what RetryHeartbeatStaleTrialCallback queues for a trial killed before it stored its parameters
    stored.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING,
                                         user_attrs={study_module.GRID: grid[-1]}, system_attrs={"failed_trial": 0}))
    monkeypatch.undo()
    optimize(config, tmp_path / "second", storage=storage, progress=False)
    trials = load(storage).trials
    complete = [tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 64 and tuple(sorted(grid[-1].items())) in complete


def test_a_storage_password_is_never_printed_or_written(tmp_path, postgres_url):  # noqa: F811
    from typer.testing import CliRunner

    from ragopt.cli import app

    url = postgres_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret-pw@")  # trust: any password
    config = write_config(tmp_path / "small.yaml", GRID.replace("k1: [0.9, 1.2, 1.5, 1.8], b: [0.5, 0.75]",
                                                                "k1: [1.2], b: [0.75]"))
    result = CliRunner().invoke(app, ["optimize", str(config), "--storage", url, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output and "postgres:***@" in (tmp_path / "out" / "study.json").read_text()
    written = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert len(written) > 5 and not [path for path in written if b"s3cret-pw" in path.read_bytes()]
