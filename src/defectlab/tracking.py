"""Every MLflow call of defectlab lives here.

A training run logs ``dataclasses.asdict(config)`` as parameters, the
contract's tags, per-epoch ``train_loss``/``train_accuracy``, the final
metrics, ``scores.csv``, the ranked grids and plots, and the logged models
``model`` (Keras) and ``detector`` (pyfunc).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np

from defectlab import report

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DETECTOR_NAME = "detector"
KERAS_MODEL_NAME = "model"


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached."""


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


def set_experiment(experiment_name: str | None) -> None:
    if experiment_name:
        mlflow.set_experiment(experiment_name)


def _param_value(value) -> str:
    return str(value)


@contextlib.contextmanager
def training_run(config, tags: dict, run_name: str | None = None, nested: bool = False):
    """Start (or join, under ``mlflow run``) a run, log the config and tags, and close it.

    An exception inside the block ends the run FAILED (KILLED for Ctrl-C) with
    the reason in the tag ``failure_reason``, then propagates.
    """
    run = mlflow.start_run(run_name=run_name, nested=nested)
    try:
        params = {key: _param_value(value) for key, value in dataclasses.asdict(config).items()}
        mlflow.log_params(params)
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

    def on_epoch_end(self, epoch, logs=None):
        metrics = {
            f"{self.prefix}{self.KEY_NAMES[key]}": float(value)
            for key, value in (logs or {}).items()
            if key in self.KEY_NAMES and math.isfinite(float(value))
        }
        if metrics:
            mlflow.log_metrics(metrics, step=epoch)


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
    """Log the Keras network as the logged model ``model``."""
    return mlflow.keras.log_model(model, name=name)


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
        pip_requirements=_detector_requirements(),
    )


def _detector_requirements() -> list[str]:
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
