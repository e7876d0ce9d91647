"""``mlflow run . -e compare``: the report is logged on the run that ``mlflow run`` opened."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from ..test_comparison import log_training_run
from .conftest import subprocess_environment

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_compare_entry_point_logs_the_report_on_its_own_run(tracking_uri, tmp_path):
    mlflow.set_experiment("showdown")
    training_run_ids = [
        log_training_run("carpet", "l2_softmax", seed, 1.2 + seed / 10, 0.7 + seed / 20) for seed in range(2)
    ]
    out_dir = tmp_path / "report"
    # mlflow run logs into another experiment than the compared one; the in-process choice must not leak.
    environment = {
        key: value for key, value in subprocess_environment(tracking_uri).items()
        if key not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    }
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "mlflow"), "run", str(PROJECT_ROOT), "-e", "compare",
         "--env-manager", "local", "--experiment-name", "reports",
         "-P", "experiment=showdown", "-P", f"out={out_dir}"],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    compare_runs = mlflow.search_runs(experiment_names=["reports"], output_format="list")
    assert len(compare_runs) == 1
    compare_run = compare_runs[0]
    assert compare_run.info.status == "FINISHED"
    assert compare_run.data.tags["method"] == "compare"
    assert compare_run.data.params["experiment"] == "showdown"
    logged = {artifact.path for artifact in mlflow.MlflowClient().list_artifacts(compare_run.info.run_id)}
    assert {"comparison.csv", "comparison.html", "published.csv", "figures"} <= logged
    table = (out_dir / "comparison.csv").read_text()
    assert all(run_id in table for run_id in training_run_ids)
    # The compared experiment holds only its training runs: compare added nothing there.
    assert len(mlflow.search_runs(experiment_names=["showdown"])) == 2
