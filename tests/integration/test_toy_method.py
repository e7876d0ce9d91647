"""A method registered in the test alone trains, logs the contract, evaluates, tunes, compares and serves.

Nothing outside the tests knows the toy method (tests/toy_method.py): the registry is the only way in.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.toy_method import toy_method  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

CONTRACT_METRICS = (
    "test_image_auroc", "test_tpr_tnr_best", "test_tpr_at_val_threshold", "test_tnr_at_val_threshold",
    "val_image_auroc", "test_pixel_auroc", "test_aupro", "score_seconds",
)
CONTRACT_ARTIFACTS = (
    "scores.csv", "plots/roc.png", "plots/score_hist.png", "ranking/top_defects.png",
    "ranking/hard_defects.png", "ranking/false_alarms.png", "heatmaps/top_defects.png",
)


def test_a_registered_toy_method_goes_through_every_verb(toy_method, tracking_uri, tiny_dataset_root, tmp_path):
    from defectlab.cli import main

    runner = CliRunner()
    data_dir = str(tiny_dataset_root)

    # train (a CLI command of its own) and log the contract
    trained = runner.invoke(main, ["pixelmean", "--data-dir", data_dir, "--register-as", "toy-carpet"])
    assert trained.exit_code == 0, trained.output
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.method = 'pixel_mean'")
    assert len(runs) == 1
    run = mlflow.get_run(runs["run_id"][0])
    assert set(CONTRACT_METRICS) <= set(run.data.metrics)
    artifacts = {info.path for folder in ("", "plots", "ranking", "heatmaps")
                 for info in mlflow.MlflowClient().list_artifacts(run.info.run_id, folder)}
    assert set(CONTRACT_ARTIFACTS) <= artifacts

    # evaluate the registered detector, maps included
    evaluated = runner.invoke(main, [
        "evaluate", "--model-uri", "models:/toy-carpet/1", "--data-dir", data_dir,
    ])
    assert evaluated.exit_code == 0, evaluated.output
    evaluation = mlflow.search_runs(search_all_experiments=True, filter_string="tags.evaluated_model = 'models:/toy-carpet/1'")
    assert evaluation["metrics.test_image_auroc"][0] == pytest.approx(run.data.metrics["test_image_auroc"])
    assert "metrics.test_pixel_auroc" in evaluation.columns

    # tune one trial over its own search space
    tuned = runner.invoke(main, [
        "tune", "--method", "pixelmean", "--data-dir", data_dir, "--n-trials", "1",
        "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--pruning-interval", "0",
    ])
    assert tuned.exit_code == 0, tuned.output
    assert "1 complete" in tuned.output

    # compare gives it its own rows
    compared = runner.invoke(main, ["compare", "--experiment", "Default", "--out", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert (table[table["method"] == "Pixel mean"]["n"] >= 1).any()

    # serve: the pyfunc scores encoded images and returns maps
    detector = mlflow.pyfunc.load_model("models:/toy-carpet/1")
    paths = pd.read_csv(mlflow.MlflowClient().download_artifacts(run.info.run_id, "scores.csv"))["path"][:3]
    served = detector.predict(pd.DataFrame({"image": list(paths)}), params={"return_maps": True})
    assert len(served) == 3 and np.asarray(served["anomaly_map"][0]).shape == (64, 64)
