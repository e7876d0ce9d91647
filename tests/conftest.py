"""Shared fixtures: a tiny synthetic dataset, an isolated cache, a throwaway MLflow store."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Offline machines: MLflow's client would otherwise try to reach its telemetry service.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import pytest

TINY_IMAGE_SIZE = 64
TINY_COUNT_SCALE = 0.25
# Settings of a training run small enough for a 2-core CPU in seconds.
TINY_METRIC_OPTIONS = {
    "image_size": TINY_IMAGE_SIZE,
    "epochs": 2,
    "batch_size": 16,
    "weights": "none",
}


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("defectlab-cache")


@pytest.fixture(autouse=True)
def isolated_cache(session_cache_dir, monkeypatch):
    """Every test caches into a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("DEFECTLAB_CACHE", str(session_cache_dir))
    return session_cache_dir


@pytest.fixture(autouse=True)
def forget_active_experiment(monkeypatch):
    """Undo any test's ``mlflow.set_experiment`` when it ends.

    MLflow keeps the chosen experiment id in a process-wide variable that
    outranks ``MLFLOW_EXPERIMENT_NAME``; a later test's fresh store has no
    experiment with that id. monkeypatch restores the variable's value from
    before the test, whatever the test set it to. (Private to MLflow: tests only.)
    """
    import mlflow.tracking.fluent

    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory):
    """The synthetic dataset at 64 px and a quarter of the default counts (all four categories)."""
    from defectlab.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path_factory.mktemp("tiny-mvtec")
    return generate_dataset(root, SyntheticSpec(image_size=TINY_IMAGE_SIZE, count_scale=TINY_COUNT_SCALE))


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store (artifacts under tmp_path) as the tracking URI; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
