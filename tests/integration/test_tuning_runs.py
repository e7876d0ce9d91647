"""Optuna studies for real: tiny trials, real MLflow and Optuna stores, real worker processes.

Every trial trains MobileNetV2 (alpha 0.5, no pretrained weights) at 64 px for
one epoch on a handful of reference images, so a trial costs seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from defectlab import runner as experiment, tuning
from defectlab.tuning import TuneConfig
from defectlab.methods.keras_training import NonFiniteLossError

from .conftest import subprocess_environment

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTRACT_METRICS = (
    "test_image_auroc", "test_tpr_tnr_best", "test_tpr_at_best", "test_tnr_at_best",
    "test_threshold_best", "test_tpr_at_val_threshold", "test_tnr_at_val_threshold",
    "val_image_auroc", "train_seconds", "train_images_per_second", "score_seconds", "train_loss",
)
CONTRACT_ARTIFACTS = (
    "scores.csv", "plots/roc.png", "plots/score_hist.png", "ranking/top_defects.png",
    "ranking/hard_defects.png", "ranking/false_alarms.png",
)
TINY_SEARCH_SPACE = (
    "optimizer: {type: categorical, choices: [sgd, adam]}\n"
    "learning_rate: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"
)
# The fixed training settings of every trial (CLI options of `defectlab tune`).
TINY_TRAINING_OPTIONS = {
    "image_size": 64, "epochs": 1, "batch_size": 16, "weights": "none", "reference_size": 8,
}


def tiny_tune_config(tmp_path, storage: str, **changes) -> TuneConfig:
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SEARCH_SPACE)
    settings = {
        "method": "metric", "category": "carpet", "storage": storage, "search_space": str(space),
        "n_trials": 1, "heartbeat_interval": 1, "grace_period": 3, **changes,
    }
    return TuneConfig(**settings)


def worker_command(tune_config: TuneConfig, data_dir, **training_changes) -> list[str]:
    """``defectlab tune ...`` for a worker process."""
    options = {
        "method": tune_config.method, "category": tune_config.category, "data_dir": data_dir,
        "n_trials": tune_config.n_trials, "storage": tune_config.storage,
        "study_name": tune_config.resolved_study_name, "search_space": tune_config.search_space,
        "heartbeat_interval": tune_config.heartbeat_interval, "grace_period": tune_config.grace_period,
        **TINY_TRAINING_OPTIONS, **training_changes,
    }
    command = [str(Path(sys.executable).parent / "defectlab"), "tune"]
    for name, value in options.items():
        command += ["--" + name.replace("_", "-"), str(value)]
    return command


def runs_by_trial_number(parent_run_ids=None) -> dict:
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return {
        int(run.data.tags["trial_number"]): run for run in runs
        if "trial_number" in run.data.tags
        and (parent_run_ids is None or run.data.tags.get("mlflow.parentRunId") in parent_run_ids)
    }


def artifact_paths(run_id: str, folders=("", "plots", "ranking")) -> set:
    client = mlflow.MlflowClient()
    return {entry.path for folder in folders for entry in client.list_artifacts(run_id, folder or None)}


def test_tune_entry_point_leaves_one_parent_and_a_full_nested_run_per_trial(
    tmp_path, tracking_uri, tiny_dataset_root
):
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SEARCH_SPACE)
    parameters = {
        "method": "metric", "category": "carpet", "data_dir": tiny_dataset_root, "n_trials": 2,
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "search_space": space, **TINY_TRAINING_OPTIONS,
    }
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(PROJECT_ROOT), "-e", "tune",
               "--env-manager", "local"]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    completed = subprocess.run(
        command, env=subprocess_environment(tracking_uri), capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {key: parent.data.tags[key] for key in ("study_name", "method", "category")} == {
        "study_name": "metric-carpet", "method": "l2_softmax", "category": "carpet",
    }

    trial_runs = runs_by_trial_number({parent.info.run_id})
    assert sorted(trial_runs) == [0, 1]
    study = optuna.load_study(study_name="metric-carpet", storage=parameters["storage"])
    for trial in study.trials:
        run = trial_runs[trial.number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["trial_state"] == "COMPLETE" and run.data.tags["study_name"] == "metric-carpet"
        assert run.data.tags["method"] == "l2_softmax"
        for key in CONTRACT_METRICS:
            assert np.isfinite(run.data.metrics[key]), key
        # The objective is the validation AUROC of the trial's own run; searched settings are its params.
        assert trial.value == pytest.approx(run.data.metrics["val_image_auroc"])
        assert float(run.data.params["learning_rate"]) == pytest.approx(trial.params["learning_rate"])
        assert run.data.params["optimizer"] == trial.params["optimizer"]
        assert run.data.params["image_size"] == "64" and run.data.params["reference_size"] == "8"
        assert set(CONTRACT_ARTIFACTS) <= artifact_paths(run.info.run_id)
        logged_models = {
            model.name for model in mlflow.search_logged_models(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list",
            )
        }
        assert {"model", "detector"} <= logged_models

    best = study.best_trial
    best_run = trial_runs[best.number]
    assert parent.data.tags["best_trial_run_id"] == best_run.info.run_id
    assert parent.data.params["best_optimizer"] == best.params["optimizer"]
    assert parent.data.metrics["best_val_image_auroc"] == pytest.approx(best.value)
    for key in ("test_image_auroc", "test_tpr_tnr_best"):
        assert parent.data.metrics[f"best_{key}"] == pytest.approx(best_run.data.metrics[key])
    assert parent.data.metrics["trials_complete"] == 2
    assert {"trials.csv", "search_space.yaml", "plots/optimization_history.png", "plots/slice.png",
            "plots/param_importances.png"} <= artifact_paths(parent.info.run_id)
    table = pd.read_csv(mlflow.MlflowClient().download_artifacts(parent.info.run_id, "trials.csv"))
    assert sorted(table["number"]) == [0, 1] and set(table["state"]) == {"COMPLETE"}
    assert set(table["user_attrs_mlflow_run_id"]) == {run.info.run_id for run in trial_runs.values()}


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_failed_and_pruned_trials_are_recorded_and_the_study_goes_on(
    tmp_path, tracking_uri, tiny_dataset_root, monkeypatch
):
    real_run_metric = experiment.run_training
    calls = []

    def failing_first(config, **keywords):
        calls.append(config)
        if len(calls) == 1:
            raise NonFiniteLossError("training loss became nan at batch 0")
        return real_run_metric(config, **keywords)

    monkeypatch.setattr(experiment, "run_training", failing_first)
    tune_config = tiny_tune_config(
        tmp_path, f"sqlite:///{tmp_path / 'optuna.db'}", data_dir=str(tiny_dataset_root), pruning_interval=1,
    )
    base = tuning.base_training_config(tune_config, {**TINY_TRAINING_OPTIONS, "epochs": 2})
    result = tuning.run_study(tune_config, base, pruner=AlwaysPrune())

    assert result.trial_counts["FAIL"] == 1 and result.trial_counts["PRUNED"] == 1
    study = optuna.load_study(study_name="metric-carpet", storage=tune_config.storage)
    failed, pruned = study.trials
    assert failed.state == TrialState.FAIL and pruned.state == TrialState.PRUNED
    assert failed.user_attrs["fail_reason"] == "NonFiniteLossError: training loss became nan at batch 0"
    assert set(pruned.intermediate_values) == {1}

    trial_runs = runs_by_trial_number({result.parent_run_id})
    assert trial_runs[0].data.tags["trial_state"] == "FAIL"
    assert trial_runs[0].info.status == "FAILED"
    assert "training loss became nan" in trial_runs[0].data.tags["failure_reason"]
    assert trial_runs[1].data.tags["trial_state"] == "PRUNED"
    assert "pruned after epoch 1" in trial_runs[1].data.tags["failure_reason"]
    assert "intermediate_val_image_auroc" in trial_runs[1].data.metrics
    parent = mlflow.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert (parent.data.metrics["trials_fail"], parent.data.metrics["trials_pruned"]) == (1, 1)
    assert "plots/NOTE.txt" in artifact_paths(result.parent_run_id)


def run_workers(commands, environment, timeout_seconds=900):
    workers = [
        subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    outputs = [worker.communicate(timeout=timeout_seconds) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-4000:]


def assert_two_workers_share_one_study(tmp_path, tracking_uri, data_dir, storage: str, n_trials: int):
    # A grace period far above any stall of a busy CPU: no live worker's trial may look dead.
    tune_config = tiny_tune_config(
        tmp_path, storage, n_trials=n_trials, study_name="shared", heartbeat_interval=2, grace_period=120,
    )
    command = worker_command(tune_config, data_dir)
    # Both start at the same moment on a database that has no schema yet.
    run_workers([command, command], subprocess_environment(tracking_uri))

    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [trial.number for trial in study.trials]
    assert len(numbers) == len(set(numbers))
    done = [trial for trial in study.trials if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == n_trials
    assert not [trial for trial in study.trials if trial.state == TrialState.RUNNING]
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [run for run in runs if run.data.tags.get("study_name") == "shared"
               and "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 2 and {run.info.status for run in parents} == {"FINISHED"}
    trial_runs = runs_by_trial_number({run.info.run_id for run in parents})
    assert {trial.number for trial in done} <= set(trial_runs)


def test_two_workers_on_a_new_sqlite_study_finish_n_trials_in_total(tmp_path, tracking_uri, tiny_dataset_root):
    assert_two_workers_share_one_study(
        tmp_path, tracking_uri, tiny_dataset_root, f"sqlite:///{tmp_path / 'optuna.db'}", n_trials=2
    )


def test_two_workers_on_a_new_postgresql_study_finish_n_trials_in_total(
    tmp_path, tracking_uri, tiny_dataset_root, postgres_server
):
    storage = postgres_server.create_database("tuning_two_workers")
    assert_two_workers_share_one_study(tmp_path, tracking_uri, tiny_dataset_root, storage, n_trials=2)


def wait_for_training_trial(storage: str, study_name: str, worker: subprocess.Popen, timeout_seconds=600):
    """The study's first trial once its training run has started (it has an MLflow run id)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()[1][-4000:]
        try:
            trials = optuna.load_study(study_name=study_name, storage=storage).trials
        except Exception:  # not created yet
            trials = []
        if trials and "mlflow_run_id" in trials[0].user_attrs:
            return trials[0]
        time.sleep(0.3)
    raise TimeoutError("the worker never started training")


def test_a_killed_workers_trial_ends_failed_and_is_retried(tmp_path, tracking_uri, tiny_dataset_root):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tune_config = tiny_tune_config(tmp_path, storage, data_dir=str(tiny_dataset_root))
    # Many epochs: the worker is surely still training when it is killed.
    worker = subprocess.Popen(
        worker_command(tune_config, tiny_dataset_root, epochs=50),
        env=subprocess_environment(tracking_uri), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        killed_trial = wait_for_training_trial(storage, tune_config.resolved_study_name, worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    assert worker.returncode == -signal.SIGKILL

    base = tuning.base_training_config(tune_config, TINY_TRAINING_OPTIONS)
    result = tuning.run_study(tune_config, base)

    study = optuna.load_study(study_name=tune_config.resolved_study_name, storage=storage)
    states = {trial.number: trial.state for trial in study.trials}
    assert states == {0: TrialState.FAIL, 1: TrialState.COMPLETE}
    retry = study.trials[1]
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.params == killed_trial.params
    assert result.best_run_id == retry.user_attrs["mlflow_run_id"]
    killed_run = mlflow.get_run(killed_trial.user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "FAILED"
    assert killed_run.data.tags["trial_state"] == "FAIL"
    assert "stopped sending heartbeats" in killed_run.data.tags["failure_reason"]
    killed_parent = mlflow.get_run(killed_run.data.tags["mlflow.parentRunId"])
    assert killed_parent.info.status == "FAILED"


WITH_DEFAULT_SIGINT = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def test_ctrl_c_marks_the_running_trial_and_stops_cleanly(tmp_path, tracking_uri, tiny_dataset_root):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tune_config = tiny_tune_config(tmp_path, storage, data_dir=str(tiny_dataset_root))
    # As started from a terminal: a test run in a shell's background job or a pytest-xdist
    # worker has SIGINT ignored, and a child would inherit that (and rightly ignore Ctrl-C);
    # a tiny launcher restores it and execs the worker (no preexec_fn in a threaded process).
    worker = subprocess.Popen(
        [sys.executable, "-c", WITH_DEFAULT_SIGINT, *worker_command(tune_config, tiny_dataset_root, epochs=50)],
        env=subprocess_environment(tracking_uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        trial = wait_for_training_trial(storage, tune_config.resolved_study_name, worker)
        worker.send_signal(signal.SIGINT)
        _, stderr = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode != 0

    study = optuna.load_study(study_name=tune_config.resolved_study_name, storage=storage)
    (interrupted,) = study.trials
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["fail_reason"].startswith("KeyboardInterrupt")
    run = mlflow.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["trial_state"] == "FAIL" and run.info.status == "KILLED"
    parent = mlflow.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
    assert parent.data.metrics["trials_fail"] == 1


# Opens the study at a given moment, so that all workers hit a new database together.
OPEN_STUDY_SCRIPT = """
import sys, time
from defectlab.tuning import TuneConfig
from defectlab.tuning import open_study
storage, start_at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
study = open_study(TuneConfig(storage=storage, study_name="race"))
print(study.study_name)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_opening_a_new_database_at_the_same_moment_all_join_one_study(tmp_path, backend, request):
    # Plain optuna.create_study fails here on PostgreSQL for most workers (schema creation
    # races: duplicate key in pg_type); open_study must not.
    if backend == "sqlite":
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    else:
        storage = request.getfixturevalue("postgres_server").create_database("tuning_race")
    start_at = time.time() + 10  # after every worker has imported TensorFlow
    workers = [
        subprocess.Popen([sys.executable, "-c", OPEN_STUDY_SCRIPT, storage, str(start_at)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-3000:]
        assert stdout.strip().splitlines()[-1] == "race"
    assert optuna.get_all_study_names(storage) == ["race"]


def test_ssim_study_searches_the_bottleneck_and_prunes_on_the_autoencoders_scores(
    tmp_path, tracking_uri, tiny_dataset_root
):
    space = tmp_path / "ssim_space.yaml"
    space.write_text("latent_dim: {type: int, low: 8, high: 32, log: true}\n")
    tune_config = TuneConfig(
        method="ssim", data_dir=str(tiny_dataset_root), storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        search_space=str(space), n_trials=1, pruning_interval=1,
    )
    base = tuning.base_training_config(tune_config, {
        "image_size": 64, "epochs": 2, "batch_size": 16, "augment_to": 32, "latent_dim": None,
    })
    result = tuning.run_study(tune_config, base)

    assert result.trial_counts["COMPLETE"] == 1
    run = mlflow.get_run(result.best_run_id)
    assert run.data.tags["method"] == "ssim_ae" and run.data.tags["trial_state"] == "COMPLETE"
    assert run.data.params["latent_dim"] == str(result.best_params["latent_dim"])
    assert run.data.params["image_size"] == "64" and run.data.params["augment_to"] == "32"
    # Scored after epoch 1 of 2 (never after the last: the run's own scoring follows).
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "intermediate_val_image_auroc")
    assert [point.step for point in history] == [1]
    assert result.best_value == pytest.approx(run.data.metrics["val_image_auroc"])


def test_a_trial_that_draws_a_completed_trials_settings_reuses_its_run_instead_of_training_again(
    tmp_path, tracking_uri, tiny_dataset_root
):
    space = tmp_path / "one_point.yaml"
    space.write_text("patch_neighbors: {type: categorical, choices: [3]}\n")  # every draw is the same
    tune_config = TuneConfig(
        method="patch", category="carpet", data_dir=str(tiny_dataset_root),
        storage=f"sqlite:///{tmp_path / 'optuna.db'}", search_space=str(space), n_trials=3,
    )
    base = tuning.base_training_config(tune_config, {"image_size": 64, "backbone": "pixels"})
    result = tuning.run_study(tune_config, base)

    study = optuna.load_study(study_name=tune_config.resolved_study_name, storage=tune_config.storage)
    trials = sorted(study.trials, key=lambda trial: trial.number)
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3
    assert "duplicate_of" not in trials[0].user_attrs
    assert [trial.user_attrs["duplicate_of"] for trial in trials[1:]] == [0, 0]
    assert {trial.value for trial in trials} == {trials[0].value}
    first_run = trials[0].user_attrs["mlflow_run_id"]
    assert [trial.user_attrs["mlflow_run_id"] for trial in trials] == [first_run] * 3
    assert trials[2].user_attrs["test_image_auroc"] == trials[0].user_attrs["test_image_auroc"]
    # Only the first trial trained: one nested run under the study's parent.
    assert list(runs_by_trial_number([result.parent_run_id])) == [0]
    assert result.best_run_id == first_run
    assert mlflow.get_run(result.parent_run_id).data.tags["best_trial_number"] == "0"

    # A worker joining the study with other fixed settings trains its own run for the same draw.
    joined = tuning.run_study(
        dataclasses.replace(tune_config, n_trials=4), tuning.base_training_config(tune_config, {
            "image_size": 96, "backbone": "pixels",
        }),
    )
    fourth = optuna.load_study(study_name=tune_config.resolved_study_name, storage=tune_config.storage).trials[3]
    assert fourth.state == TrialState.COMPLETE and "duplicate_of" not in fourth.user_attrs
    assert fourth.user_attrs["mlflow_run_id"] != first_run
    assert mlflow.get_run(fourth.user_attrs["mlflow_run_id"]).data.params["image_size"] == "96"
    assert list(runs_by_trial_number([joined.parent_run_id])) == [3]


def test_a_study_tuned_for_localisation_maximises_each_runs_val_pixel_auroc_and_keeps_its_objective(
    tmp_path, tracking_uri, tiny_dataset_root
):
    from defectlab.config import ConfigError

    space = tmp_path / "smoothing.yaml"
    space.write_text("map_sigma: {type: categorical, choices: [0.0, 24.0]}\n")
    tune_config = TuneConfig(
        method="patch", category="carpet", data_dir=str(tiny_dataset_root), objective="val_pixel_auroc",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}", search_space=str(space), n_trials=4,
    )
    base = tuning.base_training_config(tune_config, {"image_size": 64, "backbone": "pixels"})
    result = tuning.run_study(tune_config, base)

    study = optuna.load_study(study_name=tune_config.resolved_study_name, storage=tune_config.storage)
    assert study.user_attrs["objective"] == "val_pixel_auroc"
    complete = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len({trial.params["map_sigma"] for trial in complete}) == 2
    for trial in complete:
        run = mlflow.get_run(trial.user_attrs["mlflow_run_id"])
        # The value is the run's val pixel AUROC, not its image AUROC.
        assert trial.value == pytest.approx(run.data.metrics["val_pixel_auroc"])
        assert trial.value != pytest.approx(run.data.metrics["val_image_auroc"])
    values = {trial.params["map_sigma"]: trial.value for trial in complete}
    assert values[0.0] != pytest.approx(values[24.0])  # the smoothing changes what is maximised
    assert result.best_value == max(values.values())
    parent = mlflow.get_run(result.parent_run_id).data
    assert parent.metrics["best_val_pixel_auroc"] == pytest.approx(result.best_value)
    assert parent.params["objective"] == "val_pixel_auroc"

    # Another worker cannot join it ranking by another metric.
    with pytest.raises(ConfigError, match="maximises val_pixel_auroc, not val_image_auroc"):
        tuning.run_study(dataclasses.replace(tune_config, objective="val_image_auroc", n_trials=5), base)


def test_tuning_for_localisation_on_a_category_without_val_masks_is_refused_before_any_run(
    tmp_path, tracking_uri, tiny_dataset_root
):
    import shutil

    from defectlab.config import ConfigError

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset_root / "carpet", root / "carpet", ignore=shutil.ignore_patterns("ground_truth"))
    tune_config = TuneConfig(
        method="patch", category="carpet", data_dir=str(root), objective="val_pixel_auroc",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}", n_trials=1,
    )
    base = tuning.base_training_config(tune_config, {"image_size": 64, "backbone": "pixels"})
    with pytest.raises(ConfigError, match="val_pixel_auroc needs ground-truth masks of defects in the val split"):
        tuning.run_study(tune_config, base)
    assert mlflow.search_runs(search_all_experiments=True).empty
