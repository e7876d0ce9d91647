"""Runs: open one (or join the one ``mlflow run`` started), close it with its status; search, tag and time runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import mlflow

from defectlab.errors import DefectlabError
from defectlab.tracking.preflight import check_artifact_store, check_tracking_server, tracking_uri

logger = logging.getLogger(__name__)

def _param_value(value) -> str:
    return str(value)


class TerminatedError(BaseException):
    """The process received SIGTERM (a ``kill``, a pod eviction, a CI timeout) while a run was open.

    A `BaseException`, like `KeyboardInterrupt`, so that no ``except Exception``
    on the way swallows it: the run ends KILLED with the reason, then the
    process exits.
    """


@contextlib.contextmanager
def _sigterm_raises():
    """While open, SIGTERM raises `TerminatedError` in the main thread (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signal_number, frame):
        raise TerminatedError(f"received SIGTERM (signal {signal_number}): the process was asked to stop")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def tracked_run(params: dict, tags: dict, run_name: str | None = None, nested: bool = False,
                log_system_metrics: bool = False):
    """Start (or join, under ``mlflow run``) a run, log ``params`` and ``tags``, and close it.

    ``log_system_metrics`` samples CPU, memory and (where present) GPU use into
    the run's ``system/*`` metrics while it is open.

    Training runs pass ``dataclasses.asdict(config)`` as ``params``. FINISHED on success, FAILED (KILLED
    for Ctrl-C and SIGTERM) with the tag ``failure_reason`` on an exception, which propagates.
    The artifact store is checked first (`check_artifact_store`), so a missing
    bucket ends the run before any work.
    """
    check_tracking_server()
    run = mlflow.start_run(run_name=run_name, nested=nested, log_system_metrics=log_system_metrics)
    with _sigterm_raises():
        try:
            check_artifact_store(run.info.artifact_uri)
            # Under `mlflow run` the entry point's parameters are already logged, empty strings
            # as the shell-quoted "''": logging "" again would be refused as a changed value.
            already_logged = set(run.data.params)
            mlflow.log_params({
                key: _param_value(value) for key, value in params.items() if key not in already_logged
            })
            mlflow.set_tags({key: str(value) for key, value in tags.items()})
            yield run
        except BaseException as error:
            with contextlib.suppress(Exception):
                mlflow.set_tag("failure_reason", f"{type(error).__name__}: {error}"[:5000])
            status = "KILLED" if isinstance(error, (KeyboardInterrupt, TerminatedError)) else "FAILED"
            with contextlib.suppress(Exception):
                mlflow.end_run(status=status)
            raise
        else:
            mlflow.end_run(status="FINISHED")


def log_tags(tags: dict) -> None:
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


def log_metrics(metrics: dict, step: int | None = None) -> None:
    """Log finite metrics; a non-finite value is a bug upstream and raises."""
    bad = {key: value for key, value in metrics.items() if not math.isfinite(float(value))}
    if bad:
        raise ValueError(f"refusing to log non-finite metrics: {bad}")
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


class Stopwatch:
    """Wall-clock seconds of a block: ``with Stopwatch() as watch: ...; watch.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc_info):
        self.seconds = time.perf_counter() - self.start
        return False


class ExperimentNotFoundError(DefectlabError, LookupError):
    """No MLflow experiment has the given name."""


def search_experiment_runs(experiment_name: str):
    """Every (not deleted) run of one experiment, as ``mlflow.search_runs``'s pandas frame.

    Runs of every status are returned: the caller needs the unfinished ones
    too, to recognise parents whose children did not all finish.
    """
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ExperimentNotFoundError(
            f"no MLflow experiment named {experiment_name!r} at {tracking_uri()}"
        )
    return mlflow.search_runs(
        experiment_ids=[experiment.experiment_id], output_format="pandas"
    )


def use_experiment_for_new_runs(experiment_name: str) -> None:
    """Log the next new run into ``experiment_name`` (created if needed).

    Under ``mlflow run`` the run already exists (``MLFLOW_RUN_ID``) in the
    experiment ``mlflow run`` chose, and MLflow refuses to join it under another
    active experiment, so then this does nothing.
    """
    if os.environ.get("MLFLOW_RUN_ID"):
        return
    mlflow.set_experiment(experiment_name)


# Tuning: a parent run per study invocation, one nested run per trial (see defectlab.tuning).

@contextlib.contextmanager
def sqlite_creation_lock(database_url: str):
    """Hold an exclusive lock beside a SQLite database file (no-op for other URLs).

    Processes started together on a new SQLite database race to create its
    tables, and the loser fails half-way ("table ... already exists"). Taking
    this lock around the first open serialises them: the second finds the
    schema complete.
    """
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or database_url.endswith(":memory:"):
        yield
        return
    import fcntl

    database_path = Path(database_url[len(prefix):].split("?")[0]).expanduser()
    database_path.parent.mkdir(parents=True, exist_ok=True)
    with open(database_path.with_name(database_path.name + ".lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def prepare_tracking_store(attempts: int = 8, backoff_seconds: float = 1.0) -> None:
    """Open the tracking store once, before workers start logging concurrently.

    A new SQLite store is created under `sqlite_creation_lock`; for a database
    server, whose schema migrations can race too, a failed attempt is retried
    once the winner has had time to finish.
    """
    check_tracking_server()
    for attempt in range(1, attempts + 1):
        try:
            with sqlite_creation_lock(tracking_uri()):
                mlflow.search_experiments(max_results=1)
            return
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(backoff_seconds * attempt)


def log_params(params: dict) -> None:
    mlflow.log_params({key: _param_value(value) for key, value in params.items()})


def set_run_tags(run_id: str, tags: dict) -> None:
    """Set tags on any run by id (also one that has ended)."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def end_run_by_id(run_id: str, status: str, tags: dict) -> None:
    """Tag a run and end it with ``status`` (for the run of a worker that died)."""
    set_run_tags(run_id, tags)
    mlflow.MlflowClient().set_terminated(run_id, status)


def child_run_ids(parent_run_id: str, started_after_ms: int) -> list[str]:
    """Ids of the nested runs of ``parent_run_id`` that started at or after ``started_after_ms``."""
    parent = mlflow.get_run(parent_run_id)
    runs = mlflow.MlflowClient().search_runs(
        [parent.info.experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' "
            f"and attributes.start_time >= {int(started_after_ms)}"
        ),
    )
    return [run.info.run_id for run in runs]


def record_failed_run(params: dict, tags: dict, reason: str, run_name: str | None = None,
                      nested: bool = True) -> str:
    """A run that only records a failure that happened before its training run could start.

    Returns the run id. The run ends FAILED with the tag ``failure_reason``.
    """
    run = mlflow.start_run(run_name=run_name, nested=nested)
    try:
        log_params(params)
        mlflow.set_tags({key: str(value) for key, value in {**tags, "failure_reason": reason[:5000]}.items()})
    finally:
        mlflow.end_run(status="FAILED")
    return run.info.run_id
