"""Several processes on one study through a shared storage (SQLite here; any Optuna RDB URL):
the grid runs each pipeline once, the total number of trials holds across workers, and a worker
killed mid-trial loses only that trial, which a rerun retries."""

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


def states(storage: str, name: str) -> Counter:
    """Trials by state, leaving out those a worker stopped before they began (the queue was empty)."""
    trials = optuna.load_study(study_name=name, storage=storage).trials
    return Counter(t.state.name for t in trials if SKIPPED not in t.user_attrs)


def test_workers_run_each_grid_pipeline_once_and_match_one_worker(tmp_path):
    config = write_config(tmp_path / "grid.yaml", GRID)
    outcome = optimize(config, tmp_path / "shared", progress=False, workers=3)  # two more processes on study.db
    storage = f"sqlite:///{outcome.output / 'study.db'}"
    study = optuna.load_study(study_name="grid", storage=storage)
    assert states(storage, "grid") == Counter({"COMPLETE": 64})
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 64
    alone = optimize(config, tmp_path / "alone", progress=False)
    columns = ["pipeline", "value", "ndcg@3", "f1@1"]
    shared = pd.read_csv(outcome.output / "trials.csv")[columns].sort_values("pipeline").reset_index(drop=True)
    single = pd.read_csv(alone.output / "trials.csv")[columns].sort_values("pipeline").reset_index(drop=True)
    pd.testing.assert_frame_equal(shared, single)
    assert outcome.best_spec == alone.best_spec


def test_the_total_number_of_trials_holds_across_workers(tmp_path):
    config = write_config(tmp_path / "tpe.yaml", GRID.replace("k1: [0.9, 1.2, 1.5, 1.8], b: [0.5, 0.75]",
                                                              "k1: {low: 0.5, high: 2.0}, b: {low: 0.3, high: 1.0}")
                          .replace("sampler: grid", "sampler: tpe, n_trials: 30"))
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
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


def test_a_worker_killed_mid_trial_loses_only_that_trial(tmp_path):
    config = write_config(tmp_path / "grid.yaml", GRID)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "slow")}
    process = subprocess.Popen([sys.executable, "-m", "ragopt", "optimize", str(config), "--storage", storage,
                                "--quiet", "--worker"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.05)
        try:
            study = optuna.load_study(study_name="grid", storage=storage)
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
    every = optuna.load_study(study_name="grid", storage=storage).trials
    detail = [(t.number, t.state.name, t.user_attrs.keys(), t.system_attrs.get("failed_trial")) for t in every
              if t.state.name != "COMPLETE"]
    assert final["COMPLETE"] == 64 == outcome.n_trials and final["FAIL"] == running and not final["RUNNING"], detail
    study = optuna.load_study(study_name="grid", storage=storage)
    assert len({tuple(sorted(t.params.items())) for t in study.trials if t.state.name == "COMPLETE"}) == 64


def test_a_storage_password_is_never_shown(tmp_path):
    url = "postgresql://alice:s3cret@127.0.0.1:1/ragopt"
    config = write_config(tmp_path / "grid.yaml", GRID)
    with pytest.raises(StudyError) as caught:
        optimize(config, progress=False, storage=url)
    assert "s3cret" not in str(caught.value) and "postgresql://alice:***@127.0.0.1:1/ragopt" in str(caught.value)
    assert shown(url) == "postgresql://alice:***@127.0.0.1:1/ragopt"


def test_a_retry_without_parameters_queues_its_grid_pipeline_again(tmp_path, monkeypatch):
    from ragopt import study as study_module
    from ragopt.space import enumerate_space

    config = write_config(tmp_path / "grid.yaml", GRID)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    grid = enumerate_space(study_module.load_config(config)[0])
    monkeypatch.setattr(study_module, "enumerate_space", lambda config: grid[:-1])
    optimize(config, tmp_path / "first", storage=storage, progress=False)  # 63 pipelines
    stored = optuna.load_study(study_name="grid", storage=storage)
    # what RetryHeartbeatStaleTrialCallback queues for a trial killed before it stored its parameters
    stored.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING,
                                         user_attrs={study_module.GRID: grid[-1]}, system_attrs={"failed_trial": 0}))
    monkeypatch.undo()
    optimize(config, tmp_path / "second", storage=storage, progress=False)
    trials = optuna.load_study(study_name="grid", storage=storage).trials
    complete = [tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == len(set(complete)) == 64 and tuple(sorted(grid[-1].items())) in complete
