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
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from sqlalchemy import DateTime, bindparam, text

from conftest import write_config
from ragopt.study import storage as storage_module
from ragopt.study import workers as workers_module
from ragopt.search.config import load_config
from ragopt.errors import StudyError
from ragopt.study import optimize
from ragopt.study.storage import STUDY_FORMAT, driver_url, grace_seconds, shown
from ragopt.study.workers import GRID as QUEUED
from ragopt.study.workers import ORPHAN_SECONDS, SKIPPED

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


def wait_for(condition: Callable[[], bool], what: str, limit: float = 300.0) -> None:
    """Poll until `condition` holds, however loaded the machine; fail after `limit` seconds, saying what never came."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit:.0f} s for {what}")
        time.sleep(0.05)


def heartbeat_of(storage: str, trial_id: int) -> datetime | None:
    """A trial's last heartbeat as its storage holds it (Optuna's trial_heartbeats table); None before the first."""
    query = text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :trial").columns(heartbeat=DateTime)
    with opened(storage).engine.connect() as connection:
        return connection.execute(query, {"trial": trial_id}).scalar()


def silence(storage: str, trial_id: int, seconds: float) -> None:
    """Move a trial's last heartbeat `seconds` back: as if its worker had been silent that much longer."""
    update = text("UPDATE trial_heartbeats SET heartbeat = :moved WHERE trial_id = :trial").bindparams(
        bindparam("moved", type_=DateTime))
    with opened(storage).engine.begin() as connection:
        connection.execute(update, {"moved": heartbeat_of(storage, trial_id) - timedelta(seconds=seconds),
                                    "trial": trial_id})


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
    processes = [worker(config, storage, "--worker") for _ in range(2)]  # one creates the study, one joins it
    for process in processes:
        errors = process.communicate(timeout=600)[1]
        assert process.returncode == 0, errors
    assert states(storage, "tpe")["COMPLETE"] == 30


SLOW = """
import os
import time
import ragopt.scoring.evaluation

evaluate = ragopt.scoring.evaluation.Evaluator.evaluate
begun = []


def stopping(self, spec):
    begun.append(spec)
    if len(begun) == 3:  # two trials done, the third under way: say so, and never finish it
        open(os.environ["KILL_ME"], "w").close()
        time.sleep(600)
    return evaluate(self, spec)


ragopt.scoring.evaluation.Evaluator.evaluate = stopping
"""
"""A sitecustomize for the worker to be killed: its third trial says when it has begun, and lasts."""


def test_a_worker_killed_mid_trial_loses_only_that_trial(tmp_path, postgres_url):
    config = write_config(tmp_path / "grid.yaml", SMALL_GRID)
    storage, marker = postgres_url, tmp_path / "kill-me"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "slow"), "KILL_ME": str(marker)}
    process = subprocess.Popen([sys.executable, "-m", "ragopt", "optimize", str(config), "--storage", storage,
                                "--quiet", "--worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: marker.exists() or process.poll() is not None, "the worker to begin its third trial")
        assert marker.exists(), f"the worker ended before its third trial: {process.communicate(timeout=300)[1]!r}"
        (trial,) = load(storage).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        wait_for(lambda: heartbeat_of(storage, trial._trial_id) is not None, "the third trial's first heartbeat")
    finally:
        process.kill()  # SIGKILL: no cleanup, no last heartbeat
        process.communicate(timeout=300)
    assert states(storage, "grid") == Counter({"COMPLETE": 2, "RUNNING": 1, "WAITING": 13})
    silence(storage, trial._trial_id, grace_seconds(1) + 1)  # its worker silent past the grace period: stale
    outcome = optimize(config, tmp_path / "out", storage=storage, progress=False)
    assert states(storage, "grid") == Counter({"COMPLETE": 16, "FAIL": 1}) and outcome.n_trials == 16
    study = load(storage)
    assert len({tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"}) == 16
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.number == trial.number and [t.params for t in study.trials if t.state.name == "COMPLETE"].count(
        failed.params) == 1  # the killed trial's pipeline ran again, once


def test_a_worker_whose_heartbeats_come_late_keeps_its_trial(tmp_path):
    """A trial is failed and queued again only once its worker has been silent for three heartbeat
    intervals and at least a minute: a live worker's heartbeats can be seconds late on a loaded machine."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage")  # trials asked outside Study.optimize
        study = optuna.create_study(study_name="late", storage=storage_module.open_storage(url, heartbeat=1))
        trial = study.ask({"k1": optuna.distributions.FloatDistribution(0.5, 2.0)})
        study._storage.record_heartbeat(trial._trial_id)
        silence(url, trial._trial_id, 10)  # ten intervals late, well within the grace period
        optuna.storages.fail_stale_trials(study)
        assert [t.state.name for t in study.trials] == ["RUNNING"]
        silence(url, trial._trial_id, grace_seconds(1))  # now silent longer than the grace period
        optuna.storages.fail_stale_trials(study)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert study.trials[1].params == study.trials[0].params == trial.params
    assert (grace_seconds(1), grace_seconds(30), grace_seconds(60)) == (60, 90, 180)


def test_a_worker_joining_a_study_still_being_created_waits_for_all_of_it(tmp_path, monkeypatch):
    """A worker that joins a study while the worker creating it has stored only some of its
    attributes waits for the rest, however slowly the creator writes them."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    config, _ = load_config(write_config(tmp_path / "grid.yaml", SMALL_GRID))
    config = config.model_copy(update={"study": config.study.model_copy(update={"storage": url})})
    creating = optuna.create_study(study_name="grid", storage=url)
    creating.set_user_attr("format", STUDY_FORMAT)  # the creator has come this far

    def creator_goes_on(seconds: float) -> None:
        creating.set_user_attr("space", "the space")
        creating.set_user_attr("provenance", {"models": {}})

    monkeypatch.setattr(storage_module, "time", SimpleNamespace(sleep=creator_goes_on, monotonic=time.monotonic))
    durable, _, created = storage_module.open_study(config, tmp_path, "grid", False, "the space", {"models": {}})
    assert not created and durable.user_attrs == {"format": STUDY_FORMAT, "space": "the space",
                                                  "provenance": {"models": {}}}


def all_but_the_last(tmp_path: Path, monkeypatch) -> tuple[Path, str, list[dict]]:
    """The small grid's study run on all but its last pipeline: the config, the storage, the grid."""
    from ragopt.search.space import enumerate_space

    config = write_config(tmp_path / "grid.yaml", SMALL_GRID)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    grid = enumerate_space(load_config(config)[0])
    with monkeypatch.context() as patch:
        patch.setattr(workers_module, "enumerate_space", lambda config: grid[:-1])
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
import time
import ragopt.scoring.evaluation


def waiting(self, spec):
    open(os.path.join(os.environ["BEGUN"], str(os.getpid())), "w").close()
    time.sleep(600)  # a trial that lasts until Ctrl-C


ragopt.scoring.evaluation.Evaluator.evaluate = waiting
"""
"""A sitecustomize whose trials never finish in time: each process says when its first has begun."""


INTERRUPTIBLE = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                 "os.execv(sys.argv[1], sys.argv[1:])")
"""Runs the command with Ctrl-C's default action, as a terminal does: a test run started where SIGINT is ignored
(a background job of a script, `cmd &`) passes that on to its children, and Python then never raises
KeyboardInterrupt, so the command would wait out its trial."""


def test_ctrl_c_with_workers_before_any_trial_finished_is_one_line(tmp_path):
    config = write_config(tmp_path / "grid.yaml", SMALL_GRID)
    (tmp_path / "wait").mkdir()
    (tmp_path / "wait" / "sitecustomize.py").write_text(WAIT)
    begun = tmp_path / "begun"
    begun.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "wait"), "BEGUN": str(begun)}
    command = [sys.executable, "-m", "ragopt", "optimize", str(config), "-w", "2", "-q"]
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, *command], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: len(list(begun.iterdir())) == 2 or process.poll() is not None,
                 "both worker processes to begin a trial")
        assert len(list(begun.iterdir())) == 2, process.communicate(timeout=300)[1]
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        out, errors = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in errors, errors
    assert "interrupted before any trial finished" in " ".join(errors.split()) and "worker" not in errors
