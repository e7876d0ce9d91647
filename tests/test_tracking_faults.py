"""Tracking faults without servers: the local recovery folder, epoch logging, the S3 bucket check.

The same behaviours against real servers (a killed MLflow server, a bucket
missing behind a proxying server) are in tests/integration/test_team_stack.py.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from defectlab import tracking


@pytest.fixture
def recovery_root(tmp_path, monkeypatch):
    root = tmp_path / "recovery"
    monkeypatch.setenv(tracking.RECOVERY_DIR_VARIABLE, str(root))
    return root


def test_logging_failure_after_training_saves_the_results_and_names_the_folder(tracking_uri, recovery_root):
    def save_results(folder):
        (folder / "scores.csv").write_text("path,score\n")

    with mlflow.start_run() as run:
        with pytest.raises(tracking.RunNotLoggedError) as caught:
            with tracking.saving_locally_if_logging_fails("carpet", save_results):
                raise MlflowException("API request to http://mlflow:5000 failed: connection refused")

    [folder] = list(recovery_root.iterdir())
    assert str(folder) in str(caught.value)
    assert "connection refused" in str(caught.value)
    assert isinstance(caught.value.__cause__, MlflowException)
    assert folder.name.endswith(f"-carpet-{run.info.run_id[:8]}")
    assert (folder / "scores.csv").read_text() == "path,score\n"
    record = json.loads((folder / "run.json").read_text())
    assert record["run_id"] == run.info.run_id
    assert record["tracking_uri"] == tracking_uri
    assert "connection refused" in record["error"]


def test_a_failing_local_save_is_reported_with_the_logging_error(tracking_uri, recovery_root):
    def save_results(folder):
        raise OSError("disk full")

    with pytest.raises(tracking.RunNotLoggedError, match="saving the results in .* failed too.*disk full"):
        with tracking.saving_locally_if_logging_fails("carpet", save_results):
            raise MlflowException("server gone")


def test_successful_logging_saves_nothing(tracking_uri, recovery_root):
    with tracking.saving_locally_if_logging_fails("carpet", lambda folder: None):
        pass
    assert not recovery_root.exists()


def test_two_failures_in_one_second_get_two_folders(tracking_uri, recovery_root):
    first = tracking.recovery_folder("carpet", "abcdef123456")
    second = tracking.recovery_folder("carpet", "abcdef123456")
    assert first != second and first.is_dir() and second.is_dir()


def test_epoch_logger_keeps_training_when_the_server_is_lost(monkeypatch):
    calls = []

    def lost_server(metrics, step=None):
        calls.append(step)
        raise MlflowException("connection refused")

    monkeypatch.setattr(mlflow, "log_metrics", lost_server)
    from defectlab.tracking.callbacks import EpochMetricsLogger

    logger = EpochMetricsLogger()
    logger.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})
    logger.on_epoch_end(1, {"loss": 0.9, "accuracy": 0.6})
    assert logger.logging_failed
    assert calls == [0], "after the first failure the epochs are not logged (no retries per epoch)"


def test_local_artifact_locations_need_no_check(tmp_path):
    tracking.check_artifact_store(str(tmp_path / "mlruns" / "0" / "run" / "artifacts"))
    tracking.check_artifact_store(f"file://{tmp_path}/artifacts")


def test_missing_s3_bucket_is_named(monkeypatch):
    moto = pytest.importorskip("moto")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket="present-bucket")
        tracking.check_artifact_store("s3://present-bucket/mlartifacts/1/run/artifacts")
        with pytest.raises(tracking.ArtifactStoreError, match="S3 bucket 'absent-bucket'.*does not exist"):
            tracking.check_artifact_store("s3://absent-bucket/mlartifacts/1/run/artifacts")


def test_a_run_killed_with_sigterm_ends_killed_with_the_reason(tmp_path):
    import signal
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    child = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time, mlflow\n"
            "from defectlab import tracking\n"
            f"mlflow.set_tracking_uri({uri!r})\n"
            "with tracking.tracked_run({'seed': 0}, {'method': 'patch'}):\n"
            "    print('open', flush=True)\n"
            "    time.sleep(120)\n"
        )],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "open"  # the run is open
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode != 0
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "KILLED"
    assert "TerminatedError" in run.data.tags["failure_reason"] and "SIGTERM" in run.data.tags["failure_reason"]
