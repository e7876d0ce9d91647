"""``mlflow run . -e patch`` end to end, and a patch run on the backbone of a finished metric run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from .conftest import (
    logged_models_of_run, run_artifact_paths, run_entry_point, subprocess_environment, the_one_finished_run,
)

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGISTERED_NAME = "defectlab-patch-carpet"
CONTRACT_METRICS = (
    "test_image_auroc", "test_tpr_tnr_best", "test_tpr_at_best", "test_tnr_at_best",
    "test_threshold_best", "test_tpr_at_val_threshold", "test_tnr_at_val_threshold",
    "test_pixel_auroc", "test_aupro", "val_image_auroc", "train_seconds", "score_seconds",
    "fit_seconds", "memory_bank_patches", "memory_bank_bytes",
)
CONTRACT_ARTIFACTS = (
    "scores.csv", "plots/roc.png", "plots/score_hist.png", "ranking/top_defects.png",
    "ranking/hard_defects.png", "ranking/false_alarms.png", "heatmaps/top_defects.png",
    "heatmaps/hard_defects.png", "heatmaps/false_alarms.png",
)
# Loads the detector in a process that never saw the training run: scores and maps of given images.
RELOAD_SCRIPT = """
import json, sys
import mlflow, numpy as np, pandas as pd
detector = mlflow.pyfunc.load_model(sys.argv[1])
images = pd.DataFrame({"image": json.loads(sys.argv[2])})
plain = detector.predict(images)
with_maps = detector.predict(images, params={"return_maps": True})
maps = np.asarray(with_maps["anomaly_map"].tolist())
print(json.dumps({"scores": plain["score"].tolist(), "map_shape": list(maps.shape),
                  "map_maxima": maps.reshape(len(maps), -1).max(axis=1).tolist()}))
"""


def test_patch_entry_point_leaves_the_contract_and_a_reloadable_detector(tracking_uri, tiny_dataset_root):
    completed = run_entry_point(PROJECT_ROOT, "patch", {
        "data_dir": tiny_dataset_root, "category": "carpet", "image_size": 64, "backbone": "none",
        "register_as": REGISTERED_NAME,
    }, tracking_uri)
    assert completed.returncode == 0, completed.stderr[-4000:]

    run = the_one_finished_run(CONTRACT_METRICS)
    assert {key: run.data.tags[key] for key in ("method", "category", "ensemble_size", "backbone")} == {
        "method": "patch", "category": "carpet", "ensemble_size": "1", "backbone": "none",
    }
    # The coreset keeps the requested tenth of the good patches.
    metrics = run.data.metrics
    assert metrics["memory_bank_patches"] == np.ceil(0.1 * metrics["memory_bank_patches_before_coreset"])
    # A random backbone still localises the synthetic defects far above chance.
    assert metrics["test_pixel_auroc"] > 0.8
    assert set(CONTRACT_ARTIFACTS) <= run_artifact_paths(run.info.run_id, ("", "plots", "ranking", "heatmaps"))
    logged_models = logged_models_of_run(run)
    assert {"model", "detector"} <= set(logged_models)
    assert mlflow.MlflowClient().get_registered_model(REGISTERED_NAME).latest_versions

    scores = pd.read_csv(mlflow.MlflowClient().download_artifacts(run.info.run_id, "scores.csv"))
    test_rows = scores[scores["split"] == "test"].head(6)
    reloaded = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, logged_models["detector"].model_uri,
         json.dumps(test_rows["path"].tolist())],
        env=subprocess_environment(tracking_uri), capture_output=True, text=True, timeout=300,
    )
    assert reloaded.returncode == 0, reloaded.stderr[-4000:]
    predictions = json.loads(reloaded.stdout.strip().splitlines()[-1])
    # Float32 features of a batch of 6 against the run's batches: the kernels may round differently.
    np.testing.assert_allclose(predictions["scores"], test_rows["score"].to_numpy(), rtol=1e-3, atol=1e-6)
    assert predictions["map_shape"] == [len(test_rows), 64, 64]
    # The image score is the map's maximum, scaled by a reweighting factor in [1 - 1/b, 1).
    ratio = np.asarray(predictions["scores"]) / np.asarray(predictions["map_maxima"])
    assert np.all((ratio > 1 - 1 / 9 - 1e-6) & (ratio <= 1 + 1e-6))


def test_a_finished_metric_runs_backbone_gets_maps(tracking_uri, tiny_dataset_root):
    from defectlab.methods.metric import MetricConfig
    from defectlab.methods.patch import PatchConfig
    from defectlab.runner import run_training

    metric_run = run_training(MetricConfig(
        data_dir=str(tiny_dataset_root), image_size=64, epochs=1, batch_size=16, weights="none",
    ))
    patch_run = run_training(PatchConfig(
        data_dir=str(tiny_dataset_root), image_size=64, backbone=f"run:{metric_run.run_id}",
    ))
    tags = mlflow.get_run(patch_run.run_id).data.tags
    assert tags["backbone"] == f"run:{metric_run.run_id}"
    assert 0.0 <= patch_run.metrics["test_pixel_auroc"] <= 1.0
