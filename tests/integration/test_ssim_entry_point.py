"""``mlflow run . -e ssim`` end to end: the run leaves the whole contract, and its detector reloads elsewhere."""

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
REGISTERED_NAME = "defectlab-ssim-carpet"
CONTRACT_METRICS = (
    "test_image_auroc", "test_tpr_tnr_best", "test_tpr_at_best", "test_tnr_at_best",
    "test_threshold_best", "test_tpr_at_val_threshold", "test_tnr_at_val_threshold",
    "test_pixel_auroc", "test_aupro", "val_image_auroc",
    "train_seconds", "train_images_per_second", "score_seconds", "train_loss",
)
CONTRACT_ARTIFACTS = (
    "scores.csv", "plots/roc.png", "plots/score_hist.png", "ranking/top_defects.png",
    "ranking/hard_defects.png", "ranking/false_alarms.png", "heatmaps/top_defects.png",
    "heatmaps/hard_defects.png", "heatmaps/false_alarms.png",
)
# Loads the detector in a process that never saw the training run and prints its scores.
RELOAD_SCRIPT = """
import json, sys
import mlflow, pandas as pd
detector = mlflow.pyfunc.load_model(sys.argv[1])
images = pd.DataFrame({"image": json.loads(sys.argv[2])})
plain = detector.predict(images)
with_maps = detector.predict(images.head(2), params={"return_maps": True})
print(json.dumps({
    "scores": plain["score"].tolist(),
    "is_anomaly": plain["is_anomaly"].tolist(),
    "map_shape": [len(with_maps["anomaly_map"][0]), len(with_maps["anomaly_map"][0][0])],
}))
"""


def test_ssim_entry_point_leaves_the_contract_and_a_reloadable_detector(tracking_uri, tiny_dataset_root):
    completed = run_entry_point(PROJECT_ROOT, "ssim", {
        "data_dir": tiny_dataset_root, "category": "carpet", "image_size": 64, "epochs": 1,
        "augment_to": 64, "batch_size": 16, "latent_dim": 16, "register_as": REGISTERED_NAME,
    }, tracking_uri)
    assert completed.returncode == 0, completed.stderr[-4000:]

    run = the_one_finished_run(CONTRACT_METRICS)
    assert 0.0 <= run.data.metrics["test_aupro"] <= 1.0
    assert any(key.startswith("test_auroc_") for key in run.data.metrics)
    assert {key: run.data.tags[key] for key in ("method", "category", "dataset", "ensemble_size")} == {
        "method": "ssim_ae", "category": "carpet", "dataset": Path(tiny_dataset_root).name,
        "ensemble_size": "1",
    }
    assert run.data.params["image_size"] == "64" and run.data.params["grayscale"] == "True"

    client = mlflow.MlflowClient()
    assert set(CONTRACT_ARTIFACTS) <= run_artifact_paths(run.info.run_id, ("", "plots", "ranking", "heatmaps"))
    logged_models = logged_models_of_run(run)
    assert {"model", "detector"} <= set(logged_models)
    assert client.get_registered_model(REGISTERED_NAME).latest_versions

    scores = pd.read_csv(client.download_artifacts(run.info.run_id, "scores.csv"))
    assert list(scores.columns) == ["path", "label", "defect_type", "score", "split"]
    test_rows = scores[scores["split"] == "test"]
    reloaded = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, logged_models["detector"].model_uri,
         json.dumps(test_rows["path"].tolist())],
        env=subprocess_environment(tracking_uri), capture_output=True, text=True, timeout=300,
    )
    assert reloaded.returncode == 0, reloaded.stderr[-4000:]
    predictions = json.loads(reloaded.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(predictions["scores"], test_rows["score"].to_numpy(), rtol=1e-4, atol=1e-6)
    assert predictions["map_shape"] == [64, 64]
