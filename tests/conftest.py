"""Shared fixtures: a tiny synthetic dataset, an isolated cache, a throwaway MLflow store."""

from __future__ import annotations

import contextlib
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
    ``set_experiment`` also exports ``MLFLOW_EXPERIMENT_ID`` to the process
    environment, where the next test's runs and child processes would find
    it: it is removed again unless it was there before the test.
    """
    import os

    import mlflow.tracking.fluent

    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    exported_before = {name: os.environ.get(name) for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    yield
    for name, value in exported_before.items():
        if value is None:
            os.environ.pop(name, None)


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


TINY_PATCH_MODEL_NAME = "defectlab-patch-carpet"


@contextlib.contextmanager
def fresh_tracking_store(folder, cache_dir):
    """For a module or session fixture: MLflow at a new SQLite store in ``folder`` (also the cwd); yields its URI."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("DEFECTLAB_CACHE", str(cache_dir))
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield uri


@pytest.fixture(scope="session")
def tiny_patch_store(tmp_path_factory, tiny_dataset_root, session_cache_dir):
    """A SQLite store with one tiny patch run (random backbone, 64 px: seconds, maps), registered and champion.

    Attributes: ``uri`` (tracking URI), ``folder``, ``run_id``, ``detector_uri``
    (``runs:/<id>/detector``), ``model_name``, ``scores`` (the run's ``scores.csv``),
    ``data_root``. Tests that use it must point MLflow at ``uri`` (`use_tiny_patch_store`).
    """
    from types import SimpleNamespace

    import pandas as pd

    from defectlab.methods.patch import PatchConfig
    from defectlab.runner import run_training
    from defectlab.tracking.registry import promote

    folder = tmp_path_factory.mktemp("patch-store")
    with fresh_tracking_store(folder, session_cache_dir) as uri:
        training = run_training(PatchConfig(
            category="carpet", data_dir=str(tiny_dataset_root), image_size=TINY_IMAGE_SIZE,
            backbone="none", register_as=TINY_PATCH_MODEL_NAME,
        ))
        promote(TINY_PATCH_MODEL_NAME)
        scores = pd.read_csv(
            mlflow.artifacts.download_artifacts(run_id=training.run_id, artifact_path="scores.csv")
        )
    return SimpleNamespace(
        uri=uri, folder=folder, run_id=training.run_id, detector_uri=f"runs:/{training.run_id}/detector",
        model_name=TINY_PATCH_MODEL_NAME, scores=scores, data_root=tiny_dataset_root,
    )


@pytest.fixture
def use_tiny_patch_store(tiny_patch_store, monkeypatch):
    """MLflow pointed at `tiny_patch_store` for one test (new runs land there too)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_patch_store.uri)
    # An experiment id left by another test's store would not exist in this one.
    for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(variable, raising=False)
    mlflow.set_tracking_uri(tiny_patch_store.uri)
    mlflow.set_registry_uri(tiny_patch_store.uri)
    yield tiny_patch_store
    while mlflow.active_run():
        mlflow.end_run()
