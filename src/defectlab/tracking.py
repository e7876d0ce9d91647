"""Every MLflow call of defectlab lives here.

A training run logs ``dataclasses.asdict(config)`` as parameters, the
contract's tags, per-epoch ``train_loss``/``train_accuracy``, the final
metrics, ``scores.csv``, the ranked grids and plots, and the logged models
``model`` (Keras) and ``detector`` (pyfunc).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np

from defectlab import report

DETECTOR_NAME = "detector"
KERAS_MODEL_NAME = "model"
# Where a run's results go when the tracking server is lost after training.
RECOVERY_DIR_VARIABLE = "DEFECTLAB_RECOVERY_DIR"
DEFAULT_RECOVERY_DIR = "defectlab-recovery"

logger = logging.getLogger(__name__)


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached."""


class ArtifactStoreError(RuntimeError):
    """The run's artifact store (e.g. an S3 bucket) cannot be used; raised before training."""


class RunNotLoggedError(RuntimeError):
    """Training finished but logging the run failed; the results were saved in a local folder."""


def tracking_uri() -> str:
    """The tracking URI in force (``MLFLOW_TRACKING_URI`` or MLflow's default)."""
    return mlflow.get_tracking_uri()


def check_tracking_server(timeout_seconds: float = 10.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    health_url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health_url, timeout=timeout_seconds) as response:
            if response.status != 200:
                raise TrackingUnavailableError(
                    f"MLflow tracking server {uri} answered {response.status} at /health"
                )
    except (urllib.error.URLError, OSError) as error:
        raise TrackingUnavailableError(
            f"cannot reach the MLflow tracking server at {uri} ({error}); start it or set "
            "MLFLOW_TRACKING_URI to a reachable server (or unset it for the local sqlite:///mlflow.db)"
        ) from error


def _short_error(error: BaseException, limit: int = 600) -> str:
    """``Type: message``, cut to ``limit`` characters (MLflow's HTTP errors repeat the URL at length)."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + " ..."


def _server_error_message(error: BaseException) -> str:
    """The ``message`` of an MLflow server's JSON error answer, else the error's own text."""
    response = getattr(error, "response", None)
    if response is not None:
        with contextlib.suppress(ValueError, AttributeError):
            return str(response.json()["message"])
    return _short_error(error)


def check_artifact_store(artifact_uri: str) -> None:
    """Fail before training when the run's artifacts could not be stored.

    Two ways of storing artifacts in S3 are checked; other stores (local
    folders) need no check:

    - ``s3://bucket/...``: this process writes to the bucket itself (boto3,
      ``AWS_*`` credentials, ``MLFLOW_S3_ENDPOINT_URL``); the bucket must answer
      ``head_bucket``.
    - ``mlflow-artifacts:/...``: the server proxies artifacts (``mlflow server
      --serve-artifacts --artifacts-destination s3://...``) with its own
      credentials; it must be able to list the run's (still empty) artifact
      folder. Its error names its bucket. Listing writes nothing, so no probe
      file is left in the run.

    Raises
    ------
    ArtifactStoreError
        Naming the bucket (or the server's own explanation) and what to check.
    """
    if artifact_uri.startswith("s3://"):
        _check_s3_bucket(artifact_uri)
    elif artifact_uri.startswith("mlflow-artifacts:"):
        try:
            mlflow.artifacts.list_artifacts(artifact_uri=artifact_uri)
        except Exception as error:
            raise ArtifactStoreError(
                f"the MLflow server {tracking_uri()} cannot use its artifact store "
                f"({_server_error_message(error)}); check that the bucket of its "
                "--artifacts-destination exists and that the server's AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and MLFLOW_S3_ENDPOINT_URL are right"
            ) from error


def _check_s3_bucket(artifact_uri: str) -> None:
    import boto3
    import botocore.exceptions
    from urllib.parse import urlparse

    bucket = urlparse(artifact_uri).netloc
    endpoint_url = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    try:
        # A new session reads the credentials in force now, not ones cached by an earlier client.
        boto3.session.Session().client("s3", endpoint_url=endpoint_url).head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        if isinstance(error, botocore.exceptions.ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            reason = {
                "404": "it does not exist", "NoSuchBucket": "it does not exist",
                "403": "access denied: wrong credentials or no permission",
            }.get(code, _short_error(error))
        else:
            reason = _short_error(error)
        raise ArtifactStoreError(
            f"cannot store artifacts in the S3 bucket {bucket!r} ({artifact_uri}): {reason}; "
            f"check the bucket name, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and "
            f"MLFLOW_S3_ENDPOINT_URL ({endpoint_url or 'AWS'})"
        ) from error


def recovery_folder(category: str, run_id: str | None) -> Path:
    """A new folder ``<DEFECTLAB_RECOVERY_DIR or ./defectlab-recovery>/<time>-<category>-<run>``."""
    root = Path(os.environ.get(RECOVERY_DIR_VARIABLE) or DEFAULT_RECOVERY_DIR)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{category}-{(run_id or 'norun')[:8]}"
    folder, suffix = root / name, 1
    while folder.exists():
        folder, suffix = root / f"{name}-{suffix}", suffix + 1
    folder.mkdir(parents=True)
    return folder.resolve()


@contextlib.contextmanager
def saving_locally_if_logging_fails(category: str, save_results):
    """Guard a run's logging tail: if it raises, keep the trained results as local files.

    Training is the expensive part; a tracking server or artifact store that
    goes away after it must not lose it. On any exception in the block,
    ``save_results(folder)`` writes the results into a new `recovery_folder`
    (with ``run.json``: run id, tracking URI and the error), the folder is
    logged at once (before MLflow's retries to end the run), and
    `RunNotLoggedError` naming the folder is raised from the original error.
    """
    try:
        yield
    except Exception as error:
        run_id = active_run_id()
        folder = recovery_folder(category, run_id)
        (folder / "run.json").write_text(json.dumps({
            "run_id": run_id,
            "tracking_uri": tracking_uri(),
            "error": _short_error(error, limit=5000),
            "traceback": traceback.format_exc(),
        }, indent=2))
        try:
            save_results(folder)
        except Exception as save_error:
            raise RunNotLoggedError(
                f"logging the run to {tracking_uri()} failed after training ({_short_error(error)}), "
                f"and saving the results in {folder} failed too ({_short_error(save_error)})"
            ) from error
        message = (
            f"logging the run to {tracking_uri()} failed after training ({_short_error(error)}); "
            f"the trained model, the detector bundle and the scores are saved in {folder}"
        )
        logger.error(message)
        raise RunNotLoggedError(message) from error


def _param_value(value) -> str:
    return str(value)


@contextlib.contextmanager
def training_run(config, tags: dict, run_name: str | None = None, nested: bool = False):
    """Start (or join, under ``mlflow run``) a run, log the config and tags, and close it.

    An exception inside the block ends the run FAILED (KILLED for Ctrl-C) with
    the reason in the tag ``failure_reason``, then propagates.
    """
    check_tracking_server()
    with tracked_run(dataclasses.asdict(config), tags, run_name=run_name, nested=nested) as run:
        yield run


@contextlib.contextmanager
def tracked_run(params: dict, tags: dict, run_name: str | None = None, nested: bool = False):
    """Start (or join, under ``mlflow run``) a run, log ``params`` and ``tags``, and close it.

    The same life cycle as `training_run` for runs that have no config
    dataclass (e.g. the ``compare`` report): FINISHED on success, FAILED (KILLED
    for Ctrl-C) with the tag ``failure_reason`` on an exception, which propagates.
    The artifact store is checked first (`check_artifact_store`), so a missing
    bucket ends the run before any work.
    """
    run = mlflow.start_run(run_name=run_name, nested=nested)
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
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
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


class EpochMetricsLogger(keras.callbacks.Callback):
    """Log Keras's per-epoch ``loss``/``accuracy`` as ``<prefix>train_loss``/``train_accuracy``.

    ``step`` is the epoch number (0-based). ``on_epoch`` (optional) is called
    with ``(epoch, logs)`` after logging, e.g. for tuning's pruning.
    """

    KEY_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy"}

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix
        self.logging_failed = False

    def on_epoch_end(self, epoch, logs=None):
        metrics = {
            f"{self.prefix}{self.KEY_NAMES[key]}": float(value)
            for key, value in (logs or {}).items()
            if key in self.KEY_NAMES and math.isfinite(float(value))
        }
        if not metrics or self.logging_failed:
            return
        try:
            mlflow.log_metrics(metrics, step=epoch)
        except Exception as error:
            # Losing the server must not lose the training: train on without per-epoch
            # metrics; the run's tail saves the results locally if the server stays away.
            self.logging_failed = True
            logger.warning(
                "could not log epoch metrics to %s (%s); training goes on without per-epoch logging",
                tracking_uri(), _short_error(error),
            )


def log_figure(figure, artifact_path: str) -> None:
    """Log a matplotlib figure as a PNG artifact and free it."""
    try:
        mlflow.log_figure(figure, artifact_path)
    finally:
        plt.close(figure)


def log_evaluation(evaluation, images: np.ndarray, extra_figures: dict | None = None) -> None:
    """The one logging path of every method: metrics, ``scores.csv``, plots, ranked grids.

    Parameters
    ----------
    evaluation : defectlab.evaluation.Evaluation
        Scored table (rows of the threshold/val/test splits), threshold and metrics.
    images : numpy.ndarray
        Images aligned with ``evaluation.scored_table`` rows, for the ranked grids.
    extra_figures : dict of {artifact_path: Figure}, optional
        Method-specific figures (e.g. ``heatmaps/...``).
    """
    log_metrics(evaluation.metrics)
    with tempfile.TemporaryDirectory() as folder:
        scores_path = Path(folder) / "scores.csv"
        evaluation.scores_frame().to_csv(scores_path, index=False)
        mlflow.log_artifact(str(scores_path))

    test = evaluation.test_rows()
    labels = evaluation.scored_table["label"].to_numpy()[test]
    scores = evaluation.scored_table["score"].to_numpy()[test]
    defect_types = evaluation.scored_table["defect_type"].to_numpy()[test]
    test_images = images[test]
    log_figure(report.roc_figure(labels, scores), "plots/roc.png")
    log_figure(
        report.score_histogram_figure(labels, scores, evaluation.threshold), "plots/score_hist.png"
    )
    for grid_name, indices in report.ranked_indices(labels, scores).items():
        log_figure(
            report.ranked_grid_figure(
                test_images[indices], scores[indices], defect_types[indices],
                report.RANKED_TITLES[grid_name],
            ),
            f"ranking/{grid_name}.png",
        )
    for artifact_path, figure in (extra_figures or {}).items():
        log_figure(figure, artifact_path)


def log_keras_model(model: keras.Model, name: str = KERAS_MODEL_NAME):
    """Log the Keras network as the logged model ``model``.

    Requirements are stated, not inferred: MLflow's inference reloads the model
    in a subprocess (a fresh TensorFlow import), 7 s of a 45 s demo run.
    """
    return mlflow.keras.log_model(model, name=name, pip_requirements=_model_requirements())


def log_detector(
    bundle_dir: Path, signature, input_example, name: str = DETECTOR_NAME
):
    """Log the ``detector`` pyfunc as models-from-code over a bundle folder of plain files.

    The package's own source travels in ``code_paths`` so the detector loads in
    any process with MLflow, Keras and scikit-learn installed.
    """
    import defectlab

    package_dir = Path(defectlab.__file__).resolve().parent
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(package_dir / "detector_model.py"),
        artifacts={"bundle": str(bundle_dir)},
        code_paths=[str(package_dir)],
        signature=signature,
        input_example=input_example,
        pip_requirements=_model_requirements(),
    )


def _model_requirements() -> list[str]:
    """Pinned packages a logged model needs (the versions installed here)."""
    from importlib.metadata import version

    packages = ["mlflow", "tensorflow", "keras", "scikit-learn", "numpy", "pandas", "pillow"]
    return [f"{package}=={version(package)}" for package in packages]


def register_model(model_uri: str, name: str):
    """Register ``model_uri`` under ``name``; returns the `ModelVersion`."""
    return mlflow.register_model(model_uri, name)


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


class ExperimentNotFoundError(LookupError):
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


def log_artifacts(folder: Path, artifact_path: str | None = None) -> None:
    """Log every file under ``folder`` as artifacts of the active run."""
    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


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


def log_table(frame, artifact_path: str) -> None:
    """Log a pandas frame as a CSV artifact of the active run."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(artifact_path).name
        frame.to_csv(path, index=False)
        directory = str(Path(artifact_path).parent)
        mlflow.log_artifact(str(path), artifact_path=None if directory == "." else directory)


def log_dict(dictionary: dict, artifact_path: str) -> None:
    """Log a dict as a JSON or YAML artifact (by the file's suffix)."""
    mlflow.log_dict(dictionary, artifact_path)


def log_text(text: str, artifact_path: str) -> None:
    mlflow.log_text(text, artifact_path)


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
