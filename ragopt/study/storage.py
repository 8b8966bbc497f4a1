"""Opening a study's Optuna storage: the URL, heartbeats and their grace, and the checks that keep
a resumed study from mixing trials of another data set, space or model revision."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from ragopt.search.config import Config
from ragopt.errors import StudyError
from ragopt.provenance import install_command


STUDY_FORMAT = 3
"""The format of a study's records and scoring conventions; a stored study of another format
(made by an earlier ragopt, its trials scored or timed under other conventions) is not resumed.
3: seconds per question measured by a latency probe, not the trial's cached cost."""


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The models, tokenizers and chunking libraries whose revision or version changed since the
    study started."""
    lines = []
    for group, noun in (("models", "model"), ("tokenizers", "tokenizer"), ("chunking", "chunking library")):
        before, now = stored.get(group, {}), current.get(group, {})
        for name in sorted(set(before) | set(now)):
            if name in before and name in now and before[name] != now[name]:
                lines.append(f"  {noun} {name!r}: {before[name]} -> {now[name]}")
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


def open_storage(url: str, heartbeat: float) -> optuna.storages.BaseStorage:
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


def open_study(config: Config, output: Path, name: str, fresh: bool, fingerprint: str, provenance: dict[str, Any]
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
    storage = open_storage(url, config.study.heartbeat) if config.study.storage else url
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
        raise StudyError(f"study {name!r} in {shown(url)} was run with other model weights, tokenizers or chunking "
                         "libraries; its trials cannot be mixed with new ones:\n" + "\n".join(changed)
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
