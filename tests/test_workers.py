"""Several processes on one study through a shared storage (PostgreSQL, started by tests/postgres.py,
and the default SQLite file): the grid runs each pipeline once, the total number of trials holds
across workers, and a worker killed mid-trial (or before its trial began) loses only that trial,
which a rerun retries."""

import functools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import write_config
from ragopt.errors import StudyError
from ragopt.study import GRID as QUEUED
from ragopt.study import ORPHAN_SECONDS, SKIPPED, driver_url, optimize, shown

GRID = """
data: {qa: "@KO_MINI@/qa.jsonl", corpus: "@KO_MINI@/corpus.jsonl"}
retrievers:
  - {name: bm25, type: bm25, tokenizer: [whitespace, {type: char_ngram, n: 2}], method: [lucene, bm25+],
     k1: [0.9, 1.2, 1.5, 1.8], b: [0.5, 0.75]}
top_k: [1, 3]
study: {sampler: grid, heartbeat: 1, latency: off}
"""
"""64 pipelines: what the issue's four PostgreSQL workers must each run once."""
SMALL_GRID = GRID.replace("k1: [0.9, 1.2, 1.5, 1.8], b: [0.5, 0.75]", "k1: [0.9, 1.5], b: [0.75]")
"""16 pipelines, for the tests that need a grid but not a large one."""


def worker(config: Path, storage: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ragopt", "optimize", str(config), "--storage", storage,
                             "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@functools.cache
def opened(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per URL for the whole test session: loading a study by
    URL opens a new pool each time, and polling that way exhausts PostgreSQL's connections."""
    return optuna.storages.RDBStorage(driver_url(url))


def load(url: str, name: str = "grid") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=opened(url))


def states(storage: str, name: str) -> Counter:
    """Trials by state, leaving out those a worker stopped before they began (the queue was empty)."""
    trials = load(storage, name).trials
    return Counter(t.state.name for t in trials if SKIPPED not in t.user_attrs)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """A grid's trials and winner from one process alone, to compare the workers' with."""
    @functools.cache
    def run(text: str) -> tuple[pd.DataFrame, object]:
        folder = tmp_path_factory.mktemp("alone")
        alone = optimize(write_config(folder / "grid.yaml", text), folder / "out", progress=False)
        return _by_pipeline(alone.output), alone.best_spec

    return run


def _by_pipeline(output: Path) -> pd.DataFrame:
    frame = pd.read_csv(output / "trials.csv")[["pipeline", "value", "ndcg@3", "f1@1"]]
    return frame.sort_values("pipeline").reset_index(drop=True)


@pytest.mark.parametrize("kind, workers, text, size", [("sqlite", 3, SMALL_GRID, 16), ("postgresql", 4, GRID, 64)])
def test_workers_run_each_grid_pipeline_once_and_match_one_worker(tmp_path, request, one_worker, kind, workers,
                                                                  text, size):
    config = write_config(tmp_path / "grid.yaml", text)
    url = request.getfixturevalue("postgres_url") if kind == "postgresql" else None  # None: study.db in the output
    outcome = optimize(config, tmp_path / "shared", progress=False, storage=url, workers=workers)
    storage = url or f"sqlite:///{outcome.output / 'study.db'}"
    study = load(storage)
    assert states(storage, "grid") == Counter({"COMPLETE": size})
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == size
    alone, best = one_worker(text)
    pd.testing.assert_frame_equal(_by_pipeline(outcome.output), alone)
    assert outcome.best_spec == best


def test_the_total_number_of_trials_holds_across_workers(tmp_path, postgres_url):
    config = write_config(tmp_path / "tpe.yaml", GRID.replace("k1: [0.9, 1.2, 1.5, 1.8], b: [0.5, 0.75]",
                                                              "k1: {low: 0.5, high: 2.0}, b: {low: 0.3, high: 1.0}")
                          .replace("sampler: grid", "sampler: tpe, n_trials: 30"))
    storage = postgres_url
    processes = [worker(config, storage, "--worker") for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    assert states(storage, "tpe")["COMPLETE"] == 30


SLOW = """
import os
import signal
import time
import ragopt.evaluation

evaluate = ragopt.evaluation.Evaluator.evaluate
begun = []


def slow(self, spec):
    begun.append(spec)
    time.sleep(1.5)  # the trial's heartbeats (every second) have begun
    if len(begun) == 3:
        open(os.environ["KILL_ME"], "w").close()  # two trials done, the third under way: kill now
    time.sleep(1.0)
    return evaluate(self, spec)


ragopt.evaluation.Evaluator.evaluate = slow
"""
"""A sitecustomize for the worker to be killed: trials take 2.5 s, and the third says when it is
half done."""


def test_a_worker_killed_mid_trial_loses_only_that_trial(tmp_path, postgres_url):
    config = write_config(tmp_path / "grid.yaml", SMALL_GRID)
    storage, marker = postgres_url, tmp_path / "kill-me"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "slow"), "KILL_ME": str(marker)}
    process = subprocess.Popen([sys.executable, "-m", "ragopt", "optimize", str(config), "--storage", storage,
                                "--quiet", "--worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not marker.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the worker never began its third trial: {process.communicate(timeout=10)[1]!r}"
    finally:
        process.kill()  # SIGKILL: no cleanup, no last heartbeat
        process.communicate(timeout=60)
    assert states(storage, "grid") == Counter({"COMPLETE": 2, "RUNNING": 1, "WAITING": 13})
    time.sleep(5.5)  # the grace period (at least 5 s) has passed: the trial is stale
    outcome = optimize(config, tmp_path / "out", storage=storage, progress=False)
    assert states(storage, "grid") == Counter({"COMPLETE": 16, "FAIL": 1}) and outcome.n_trials == 16
    study = load(storage)
    assert len({tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"}) == 16


def all_but_the_last(tmp_path: Path, monkeypatch) -> tuple[Path, str, list[dict]]:
    """The small grid's study run on all but its last pipeline: the config, the storage, the grid."""
    from ragopt import study as study_module
    from ragopt.space import enumerate_space

    config = write_config(tmp_path / "grid.yaml", SMALL_GRID)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    grid = enumerate_space(study_module.load_config(config)[0])
    with monkeypatch.context() as patch:
        patch.setattr(study_module, "enumerate_space", lambda config: grid[:-1])
        optimize(config, tmp_path / "first", storage=storage, progress=False)  # 15 pipelines
    return config, storage, grid


def ran_the_whole_grid(storage: str, grid: list[dict]) -> bool:
    """Whether every pipeline of the grid completed exactly once, the last one included."""
    complete = [tuple(sorted(t.params.items())) for t in load(storage).trials if t.state.name == "COMPLETE"]
    return len(complete) == len(set(complete)) == len(grid) and tuple(sorted(grid[-1].items())) in complete


def test_a_worker_killed_before_its_trial_began_loses_nothing(tmp_path, monkeypatch):
    config, storage, grid = all_but_the_last(tmp_path, monkeypatch)
    # the last pipeline, handed to a worker killed before its first heartbeat or suggestion
    started = datetime.now() - timedelta(seconds=ORPHAN_SECONDS + 1)
    orphan = optuna.trial.FrozenTrial(number=0, state=optuna.trial.TrialState.RUNNING, value=None,
                                      datetime_start=started, datetime_complete=None, params={}, distributions={},
                                      user_attrs={QUEUED: grid[-1]}, system_attrs={}, intermediate_values={},
                                      trial_id=0)
    opened(storage).create_new_trial(load(storage)._study_id, template_trial=orphan)
    assert states(storage, "grid") == Counter({"COMPLETE": 15, "RUNNING": 1})  # Optuna never finds it stale
    optimize(config, tmp_path / "second", storage=storage, progress=False)
    assert states(storage, "grid") == Counter({"COMPLETE": 16, "FAIL": 1}) and ran_the_whole_grid(storage, grid)


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
    config, storage, grid = all_but_the_last(tmp_path, monkeypatch)
    stored = load(storage)
    # what RetryHeartbeatStaleTrialCallback queues for a trial killed before it stored its parameters
    stored.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING,
                                         user_attrs={QUEUED: grid[-1]}, system_attrs={"failed_trial": 0}))
    optimize(config, tmp_path / "second", storage=storage, progress=False)
    assert ran_the_whole_grid(storage, grid)


def test_a_storage_password_is_never_printed_or_written(tmp_path, postgres_url):
    from typer.testing import CliRunner

    from ragopt.cli import app

    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(password="s3cret-pw").render_as_string(hide_password=False)  # trust: any
    config = write_config(tmp_path / "small.yaml", GRID.replace("k1: [0.9, 1.2, 1.5, 1.8], b: [0.5, 0.75]",
                                                                "k1: [1.2], b: [0.75]"))
    result = CliRunner().invoke(app, ["optimize", str(config), "--storage", url, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output and ":***@" in (tmp_path / "out" / "study.json").read_text()
    written = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert len(written) > 5 and not [path for path in written if b"s3cret-pw" in path.read_bytes()]


WAIT = """
import os
import signal
import time
import ragopt.evaluation


def waiting(self, spec):
    open(os.environ["BEGUN"], "w").close()
    time.sleep(60)


ragopt.evaluation.Evaluator.evaluate = waiting
"""
"""A sitecustomize whose trials never finish in time: Ctrl-C lands before any has."""


def test_ctrl_c_with_workers_before_any_trial_finished_is_one_line(tmp_path):
    config = write_config(tmp_path / "grid.yaml", SMALL_GRID)
    (tmp_path / "wait").mkdir()
    (tmp_path / "wait" / "sitecustomize.py").write_text(WAIT)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "wait"), "BEGUN": str(tmp_path / "begun")}
    process = subprocess.Popen([sys.executable, "-m", "ragopt", "optimize", str(config), "-w", "2", "-q"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "begun").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the other worker has started too
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        out, errors = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in errors, errors
    assert "interrupted before any trial finished" in " ".join(errors.split()) and "worker" not in errors
