"""The team stack without Docker: MLflow server on PostgreSQL + S3 (moto), real runs against it.

What ``docker/compose.yaml`` runs, started here as plain processes on
127.0.0.1: a throwaway PostgreSQL cluster (``postgres_server``), moto's S3
server, and ``mlflow server --backend-store-uri postgresql://...
--artifacts-destination s3://... --serve-artifacts``. The clients get no S3
credentials: their artifacts reach the bucket only through the server, as the
workers' do in the compose file.

Three servers start together (their start-up is the slow part): ``team``
(bucket present), ``missing_bucket`` (its bucket does not exist) and
``doomed`` (killed by the test of a server lost mid-run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.conftest import TINY_IMAGE_SIZE
from tests.integration.conftest import (
    free_port, logged_models_of_run, run_entry_point, stop_process, subprocess_environment, wait_for_port,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BUCKET = "defectlab-artifacts"
MISSING_BUCKET = "defectlab-no-such-bucket"
MODEL_NAME = "defectlab-metric-carpet"
EXPERIMENT_NAME = "team-stack"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "team-stack-key",
    "AWS_SECRET_ACCESS_KEY": "team-stack-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that would let a client reach S3 itself; removed so artifacts must go through the server.
CLIENT_S3_VARIABLES = (*S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN")
TINY_TRAINING_PARAMETERS = {
    "category": "carpet", "image_size": TINY_IMAGE_SIZE, "epochs": 1, "batch_size": 16, "weights": "none",
}
SERVER_START_SECONDS = 240
# Tests stay on 127.0.0.1: no usage reports to MLflow's telemetry service.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass
class MlflowServer:
    """An ``mlflow server`` process in its own process group (it forks uvicorn workers)."""

    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_until_healthy(self, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"mlflow server not healthy after {timeout_seconds} s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server and its workers: the server going away without warning."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_mlflow_server(backend_store_uri: str, artifacts_destination: str, s3_endpoint: str,
                        log_path: Path) -> MlflowServer:
    """Start (without waiting) the tracking server exactly as ``docker/compose.yaml``'s ``mlflow`` service."""
    port = free_port()
    environment = {**os.environ, **S3_CREDENTIALS, **NO_TELEMETRY, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    process = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"), "server",
            "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", artifacts_destination,
            "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        env=environment, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return MlflowServer(process, port, log_path)


def use_tracking_server(monkeypatch, tracking_uri: str) -> None:
    """Point this process's MLflow client (and its child processes) at ``tracking_uri``, without S3 access of its own."""
    for key in (*CLIENT_S3_VARIABLES, "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def bucket_keys(s3_client, bucket: str, prefix: str = "") -> set[str]:
    keys = set()
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port."""
    pytest.importorskip("moto.server")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 60, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def s3_client(s3_endpoint):
    import boto3

    return boto3.client(
        "s3", endpoint_url=s3_endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="module")
def team_servers(postgres_server, s3_endpoint, s3_client, tmp_path_factory):
    """``{"team", "missing_bucket", "doomed"}`` -> MlflowServer, each on its own PostgreSQL database."""
    s3_client.create_bucket(Bucket=BUCKET)
    log_folder = tmp_path_factory.mktemp("mlflow-servers")
    destinations = {
        "team": f"s3://{BUCKET}/mlartifacts",
        "missing_bucket": f"s3://{MISSING_BUCKET}/mlartifacts",
        "doomed": f"s3://{BUCKET}/doomed",
    }
    servers = {}
    try:
        for name, destination in destinations.items():
            servers[name] = start_mlflow_server(
                postgres_server.create_database(f"mlflow_{name}"), destination, s3_endpoint,
                log_folder / f"{name}.log",
            )
        for server in servers.values():
            server.wait_until_healthy(SERVER_START_SECONDS)
        yield servers
    finally:
        # Throwaway servers: SIGKILL (uvicorn's graceful shutdown takes many seconds).
        for server in servers.values():
            server.kill()


@pytest.fixture
def training_forbidden(monkeypatch):
    """Make any training call fail the test: proves that an error came before training."""
    from defectlab.methods.metric import training as metric_learning
    from defectlab.methods.ssim import training as autoencoder

    def refuse(*args, **kwargs):
        raise AssertionError("training started although the run could not be logged")

    monkeypatch.setattr(metric_learning, "train_l2_softmax", refuse)
    monkeypatch.setattr(autoencoder, "train_ssim_autoencoder", refuse)


def cli_training_options(command: str, data_dir: Path) -> list[str]:
    """``defectlab <command>`` with tiny settings (``tune``: a one-trial study in the current folder)."""
    options = ["--data-dir", str(data_dir), "--image-size", str(TINY_IMAGE_SIZE), "--epochs", "1"]
    if command in ("metric", "tune"):
        options += ["--weights", "none"]
    if command == "tune":
        options += ["--n-trials", "1", "--storage", "sqlite:///optuna.db"]
    return [command, *options]


# The stack working


def test_mlflow_run_logs_artifacts_and_models_into_the_bucket_and_promotes(
    team_servers, s3_client, tiny_dataset_root, tmp_path, monkeypatch
):
    from defectlab.tracking import registry
    from defectlab.serving.detector import IMAGE_COLUMN

    server = team_servers["team"]
    monkeypatch.chdir(tmp_path)
    use_tracking_server(monkeypatch, server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME)
    parameters = {**TINY_TRAINING_PARAMETERS, "data_dir": tiny_dataset_root, "register_as": MODEL_NAME}
    completed = run_entry_point(REPO_ROOT, "metric", parameters, server.uri, timeout_seconds=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]

    client = mlflow.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["method"] == "l2_softmax"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must be proxied by the server"

    # The run's artifacts are objects in the bucket, under the server's --artifacts-destination
    run_prefix = f"mlartifacts/{experiment.experiment_id}/{run.info.run_id}/artifacts/"
    run_keys = bucket_keys(s3_client, BUCKET, run_prefix)
    for artifact in ("scores.csv", "plots/roc.png", "plots/score_hist.png", "ranking/top_defects.png",
                     "ranking/hard_defects.png", "ranking/false_alarms.png"):
        assert run_prefix + artifact in run_keys
    scores = pd.read_csv(
        s3_client.get_object(Bucket=BUCKET, Key=run_prefix + "scores.csv")["Body"]
    )
    assert list(scores.columns[:5]) == ["path", "label", "defect_type", "score", "split"]

    # ... and so are the logged models' files
    logged_models = logged_models_of_run(run)
    assert {"model", "detector"} <= set(logged_models)
    for logged_model in logged_models.values():
        model_prefix = f"mlartifacts/{experiment.experiment_id}/models/{logged_model.model_id}/artifacts/"
        assert model_prefix + "MLmodel" in bucket_keys(s3_client, BUCKET, model_prefix)
    detector_keys = bucket_keys(
        s3_client, BUCKET,
        f"mlartifacts/{experiment.experiment_id}/models/{logged_models['detector'].model_id}/artifacts/",
    )
    assert any(key.endswith("detector.json") for key in detector_keys), sorted(detector_keys)

    # Registered by the run, promoted through the server, served from the bucket
    decision = registry.promote(MODEL_NAME)
    assert decision.promoted and decision.candidate_version == "1"
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == "1"
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    test_rows = scores[scores["split"] == "test"].head(4)
    predictions = champion.predict(pd.DataFrame({IMAGE_COLUMN: test_rows["path"].tolist()}))
    np.testing.assert_allclose(predictions["score"].to_numpy(), test_rows["score"].to_numpy(), rtol=1e-4, atol=1e-6)


def test_two_tune_workers_share_a_postgresql_study_and_log_to_the_server(
    team_servers, postgres_server, s3_client, tiny_dataset_root, tmp_path, monkeypatch
):
    import optuna
    from optuna.trial import TrialState

    from tests.integration.test_tuning_runs import run_workers, tiny_tune_config, worker_command

    server = team_servers["team"]
    monkeypatch.chdir(tmp_path)
    use_tracking_server(monkeypatch, server.uri)
    storage = postgres_server.create_database("optuna_team")
    tune_config = tiny_tune_config(tmp_path, storage, n_trials=2, study_name="team-metric-carpet")
    command = worker_command(tune_config, tiny_dataset_root)
    run_workers([command, command], subprocess_environment(server.uri))

    study = optuna.load_study(study_name="team-metric-carpet", storage=storage)
    done = [trial for trial in study.trials if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 2

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [run for run in runs if run.data.tags.get("study_name") == "team-metric-carpet"
               and "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 2, "one parent run per worker, both on the server"
    assert {run.info.status for run in parents} == {"FINISHED"}
    trial_runs = [run for run in runs
                  if run.data.tags.get("mlflow.parentRunId") in {parent.info.run_id for parent in parents}]
    assert {int(run.data.tags["trial_number"]) for run in trial_runs} >= {trial.number for trial in done}
    for trial_run in trial_runs:
        if trial_run.info.status == "FINISHED":
            prefix = f"mlartifacts/{trial_run.info.experiment_id}/{trial_run.info.run_id}/artifacts/"
            assert prefix + "scores.csv" in bucket_keys(s3_client, BUCKET, prefix)


# Faults


@pytest.mark.parametrize("command", ["metric", "ssim", "tune"])
def test_unreachable_tracking_server_is_reported_before_training(
    command, tiny_dataset_root, training_forbidden, monkeypatch, tmp_path
):
    from defectlab.cli import main

    monkeypatch.chdir(tmp_path)
    closed_port_uri = f"http://127.0.0.1:{free_port()}"
    use_tracking_server(monkeypatch, closed_port_uri)
    result = CliRunner().invoke(main, cli_training_options(command, tiny_dataset_root))
    assert result.exit_code == 1, result.output
    assert "TrackingUnavailableError" in result.output
    assert f"cannot reach the MLflow tracking server at {closed_port_uri}" in result.output


@pytest.mark.parametrize("command", ["metric", "tune"])
def test_missing_bucket_behind_the_server_is_named_before_training(
    command, team_servers, tiny_dataset_root, training_forbidden, monkeypatch, tmp_path
):
    from defectlab.cli import main

    monkeypatch.chdir(tmp_path)
    server = team_servers["missing_bucket"]
    use_tracking_server(monkeypatch, server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"missing-bucket-{command}")
    result = CliRunner().invoke(main, cli_training_options(command, tiny_dataset_root))
    assert result.exit_code == 1, result.output
    assert "ArtifactStoreError" in result.output
    assert f"s3://{MISSING_BUCKET}" in result.output
    # The run that could not store its artifacts says why
    client = mlflow.MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name(f"missing-bucket-{command}").experiment_id])
    assert run.info.status == "FAILED"
    assert MISSING_BUCKET in run.data.tags["failure_reason"]


@pytest.mark.parametrize("fault", ["missing bucket", "no credentials"])
def test_direct_s3_artifact_location_problems_are_named_before_training(
    fault, team_servers, s3_endpoint, tiny_dataset_root, training_forbidden, monkeypatch, tmp_path
):
    """An experiment whose artifact location is ``s3://`` makes the client write to S3 itself."""
    from defectlab.cli import main

    monkeypatch.chdir(tmp_path)
    server = team_servers["team"]
    use_tracking_server(monkeypatch, server.uri)
    bucket = MISSING_BUCKET if fault == "missing bucket" else BUCKET
    experiment_name = f"direct-s3-{fault.replace(' ', '-')}"
    client = mlflow.MlflowClient(server.uri)
    if client.get_experiment_by_name(experiment_name) is None:
        client.create_experiment(experiment_name, artifact_location=f"s3://{bucket}/direct")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment_name)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_CREDENTIALS["AWS_DEFAULT_REGION"])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    if fault == "missing bucket":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_CREDENTIALS["AWS_ACCESS_KEY_ID"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    result = CliRunner().invoke(main, cli_training_options("metric", tiny_dataset_root))
    assert result.exit_code == 1, result.output
    assert f"ArtifactStoreError: cannot store artifacts in the S3 bucket '{bucket}'" in result.output
    expected_reason = "it does not exist" if fault == "missing bucket" else "Unable to locate credentials"
    assert expected_reason in result.output


def test_server_lost_mid_run_keeps_the_training_locally(
    team_servers, tiny_dataset_root, monkeypatch, tmp_path
):
    import keras

    from defectlab import data
    from defectlab.methods.metric import MetricConfig
    from defectlab.serving.detector import bundle_to_local_detector
    from defectlab.runner import run_training
    from defectlab.tracking import RunNotLoggedError

    server = team_servers["doomed"]
    monkeypatch.chdir(tmp_path)
    use_tracking_server(monkeypatch, server.uri)
    # Fail fast once the server is gone (a deployment keeps MLflow's minutes of retries).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    recovery_root = tmp_path / "recovery"
    monkeypatch.setenv("DEFECTLAB_RECOVERY_DIR", str(recovery_root))

    class KillServerAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                server.kill()

    config = MetricConfig(
        data_dir=str(tiny_dataset_root), image_size=TINY_IMAGE_SIZE, epochs=2, batch_size=16, weights="none"
    )
    with pytest.raises(RunNotLoggedError) as caught:
        run_training(config, epoch_callbacks=[KillServerAfterFirstEpoch()])
    assert server.process.poll() is not None, "the server was really killed"

    [folder] = list(recovery_root.iterdir())
    assert str(folder) in str(caught.value)
    assert folder.name.split("-")[2] == "carpet"
    run_record = json.loads((folder / "run.json").read_text())
    assert run_record["tracking_uri"] == server.uri and run_record["run_id"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["test_image_auroc"] <= 1.0
    keras.saving.load_model(folder / "model.keras")

    # The saved detector bundle scores the images exactly as the lost run did
    scores = pd.read_csv(folder / "scores.csv")
    test_rows = scores[scores["split"] == "test"].head(6)
    detector = bundle_to_local_detector(folder / "bundle")
    images = data.load_images(test_rows["path"].tolist(), TINY_IMAGE_SIZE)
    rescored = detector.predict_images(images)["score"].to_numpy()
    np.testing.assert_allclose(rescored, test_rows["score"].to_numpy(), rtol=1e-4, atol=1e-6)
