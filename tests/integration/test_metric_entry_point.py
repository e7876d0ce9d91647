"""``mlflow run . -e metric`` end to end: the whole contract, and a detector that reloads elsewhere."""

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
REGISTERED_NAME = "defectlab-metric-carpet"
CONTRACT_METRICS = (
    "test_image_auroc", "test_tpr_tnr_best", "test_tpr_at_best", "test_tnr_at_best",
    "test_threshold_best", "test_tpr_at_val_threshold", "test_tnr_at_val_threshold",
    "val_image_auroc", "train_seconds", "train_images_per_second", "score_seconds",
    "train_loss", "train_accuracy",
    "test_image_auroc_ci_low", "test_image_auroc_ci_high", "val_image_auroc_ci_low",
    "val_image_auroc_ci_high", "test_tpr_tnr_best_ci_low", "test_tpr_tnr_best_ci_high",
)
CONTRACT_ARTIFACTS = (
    "scores.csv", "plots/roc.png", "plots/score_hist.png",
    "ranking/top_defects.png", "ranking/hard_defects.png", "ranking/false_alarms.png",
    "data/splits.csv",
)
# Scores images through the detector in a process that never saw the training run:
# once from file paths, once from base64 PNG text (what a served request carries).
RELOAD_SCRIPT = """
import base64, json, sys
import mlflow, pandas as pd
detector = mlflow.pyfunc.load_model(sys.argv[1])
paths = json.loads(sys.argv[2])
from_paths = detector.predict(pd.DataFrame({"image": paths}))
encoded = [base64.b64encode(open(path, "rb").read()).decode() for path in paths[:3]]
from_base64 = detector.predict(pd.DataFrame({"image": encoded}))
print(json.dumps({
    "scores": from_paths["score"].tolist(),
    "is_anomaly": from_paths["is_anomaly"].tolist(),
    "base64_scores": from_base64["score"].tolist(),
}))
"""


def test_metric_entry_point_leaves_the_contract_and_a_reloadable_detector(tracking_uri, tiny_dataset_root,
                                                                          monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    completed = run_entry_point(PROJECT_ROOT, "metric", {
        "data_dir": tiny_dataset_root, "category": "carpet", "image_size": 64, "epochs": 2,
        "batch_size": 16, "weights": "none", "register_as": REGISTERED_NAME,
    }, tracking_uri)
    assert completed.returncode == 0, completed.stderr[-4000:]

    run = the_one_finished_run(CONTRACT_METRICS)
    defect_types = {"color", "cut", "hole", "metal_contamination", "thread"}
    assert {key.removeprefix("test_auroc_") for key in run.data.metrics if key.startswith("test_auroc_")} <= defect_types
    assert any(key.startswith("test_auroc_") for key in run.data.metrics)
    assert {key: run.data.tags[key] for key in ("method", "category", "dataset", "ensemble_size", "weights")} == {
        "method": "l2_softmax", "category": "carpet", "dataset": Path(tiny_dataset_root).name,
        "ensemble_size": "1", "weights": "none",
    }
    client = mlflow.MlflowClient()
    loss_history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [point.step for point in loss_history] == [0, 1]
    for parameter in ("backbone_alpha", "softmax_scale", "reference_size", "lof_neighbors", "optimizer"):
        assert parameter in run.data.params

    for name in ("test_image_auroc", "val_image_auroc", "test_tpr_tnr_best"):
        assert run.data.metrics[f"{name}_ci_low"] <= run.data.metrics[name] <= run.data.metrics[f"{name}_ci_high"]
    assert any(key.startswith("system/") for key in run.data.metrics), sorted(run.data.metrics)

    # Lineage: one dataset input per split, each with the category folder as source.
    inputs = {
        {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"]: dataset_input.dataset
        for dataset_input in run.inputs.dataset_inputs
    }
    assert set(inputs) == {"train", "threshold", "val", "test"}
    assert {dataset.name for dataset in inputs.values()} == {f"{Path(tiny_dataset_root).name}/carpet"}
    assert len({dataset.digest for dataset in inputs.values()}) == 4
    assert all(str(Path(tiny_dataset_root) / "carpet") in dataset.source for dataset in inputs.values())
    splits = pd.read_csv(client.download_artifacts(run.info.run_id, "data/splits.csv"))
    assert {"path", "label", "split", "size_bytes", "mtime_ns"} <= set(splits.columns)
    assert json.loads(inputs["train"].profile)["num_rows"] == int((splits["split"] == "train").sum())

    assert set(CONTRACT_ARTIFACTS) <= run_artifact_paths(run.info.run_id, ("", "plots", "ranking", "data"))
    logged_models = logged_models_of_run(run)
    assert {"model", "detector"} <= set(logged_models)
    version = client.get_registered_model(REGISTERED_NAME).latest_versions[0]
    assert version.run_id == run.info.run_id

    scores = pd.read_csv(client.download_artifacts(run.info.run_id, "scores.csv"))
    assert list(scores.columns) == ["path", "label", "defect_type", "score", "split"]
    assert set(scores["split"]) == {"threshold", "val", "test"}
    test_rows = scores[scores["split"] == "test"]
    reloaded = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, f"models:/{REGISTERED_NAME}/{version.version}",
         json.dumps(test_rows["path"].tolist())],
        env=subprocess_environment(tracking_uri), capture_output=True, text=True, timeout=300,
    )
    assert reloaded.returncode == 0, reloaded.stderr[-4000:]
    predictions = json.loads(reloaded.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(predictions["scores"], test_rows["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictions["base64_scores"], predictions["scores"][:3], rtol=1e-6)
    heldout_good = scores.loc[scores["split"] == "threshold", "score"].max()
    assert predictions["is_anomaly"] == (test_rows["score"] > heldout_good).tolist()
