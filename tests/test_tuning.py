"""Search spaces, the suggest function, the fixed settings of a study and its sampler (no training)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from click.testing import CliRunner

import defectlab.methods.metric as metric_method
import defectlab.methods.ssim as ssim_method
from defectlab import tuning
from defectlab.cli import main
from defectlab.config import ConfigError
from defectlab.methods.metric import MetricConfig
from defectlab.methods.ssim import SSIMConfig
from defectlab.tuning import SearchSpaceError, TuneConfig, suggest_training_params, validate_search_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write_space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# The built-in spaces


def test_default_metric_space_covers_the_settings_the_article_calls_sensitive():
    space = validate_search_space(metric_method.search_space(120), MetricConfig())
    assert space["epochs"] == {"type": "int", "low": 2, "high": 100, "log": True}
    assert space["optimizer"]["choices"] == ["sgd", "adam"]
    assert space["learning_rate"] == {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
    assert (space["reference_size"]["low"], space["reference_size"]["high"]) == (1, 120)


def test_reference_size_may_reach_zero_only_when_a_reference_dir_supplies_a_class():
    assert metric_method.search_space(50)["reference_size"]["low"] == 1
    assert metric_method.search_space(50, reference_dir="extra")["reference_size"]["low"] == 0


def test_default_ssim_space_searches_the_bottleneck():
    space = validate_search_space(ssim_method.search_space(), SSIMConfig())
    assert set(space) == {"epochs", "optimizer", "learning_rate", "latent_dim"}


@pytest.mark.parametrize("arch", ["mobilenet_v2", "efficientnet_lite0"])
def test_default_patch_space_reaches_the_neighbourhood_and_size_real_tiles_chose(arch):
    import defectlab.methods.patch as patch_method
    from defectlab.methods.patch import PatchConfig

    space = validate_search_space(patch_method.search_space(arch), PatchConfig(backbone_arch=arch))
    assert (space["patch_size"]["low"], space["patch_size"]["high"], space["patch_size"]["step"]) == (1, 7, 2)
    assert 192 in space["image_size"]["choices"] and 224 in space["image_size"]["choices"]
    assert space["map_sigma"]["choices"] == [2.0, 4.0, 8.0, 16.0, 32.0]
    for sigma in space["map_sigma"]["choices"]:
        PatchConfig(backbone_arch=arch, map_sigma=sigma).validate()
    for patch_size in (1, 7):
        PatchConfig(backbone_arch=arch, patch_size=patch_size, image_size=192).validate()


def test_an_unknown_objective_is_refused_and_pixel_auroc_needs_a_method_that_makes_maps():
    with pytest.raises(ConfigError, match="objective must be one of val_image_auroc, val_pixel_auroc, got 'auroc'"):
        TuneConfig(objective="auroc")
    with pytest.raises(ConfigError, match="val_pixel_auroc needs anomaly maps, which method metric does not make "
                                          r"\(methods that do: ssim, patch\)"):
        TuneConfig(method="metric", objective="val_pixel_auroc")
    for method in ("ssim", "patch"):
        assert TuneConfig(method=method, objective="val_pixel_auroc").objective == "val_pixel_auroc"
    result = CliRunner().invoke(main, ["tune", "metric", "--objective", "val_pixel_auroc"])
    assert result.exit_code != 0 and "val_pixel_auroc needs anomaly maps" in result.output


def test_a_study_records_its_objective_and_refuses_a_worker_ranking_by_another():
    from defectlab.tuning.storage import check_study_objective

    study = optuna.create_study(direction="maximize")
    pixel = TuneConfig(method="patch", objective="val_pixel_auroc", study_name="s")
    check_study_objective(study, pixel)
    assert study.user_attrs["objective"] == "val_pixel_auroc"
    check_study_objective(study, pixel)  # the same objective joins
    with pytest.raises(ConfigError, match="study 's' maximises val_pixel_auroc, not val_image_auroc"):
        check_study_objective(study, dataclasses.replace(pixel, objective="val_image_auroc"))
    # A study from before the objective was recorded, with trials, ranked by val_image_auroc.
    older = optuna.create_study(direction="maximize")
    older.add_trial(optuna.trial.create_trial(value=0.9))
    with pytest.raises(ConfigError, match="maximises val_image_auroc, not val_pixel_auroc"):
        check_study_objective(older, pixel)
    check_study_objective(older, dataclasses.replace(pixel, objective="val_image_auroc"))


def test_of_two_workers_recording_objectives_at_once_the_one_the_study_kept_wins():
    from defectlab.tuning.storage import check_study_objective

    class RacedStudy:
        """Another worker's write lands between this worker's look and its own write (PostgreSQL keeps the first)."""

        def __init__(self):
            self.user_attrs = {}

        def get_trials(self, deepcopy=False):
            return []

        def set_user_attr(self, key, value):
            self.user_attrs.setdefault(key, "val_image_auroc")

    with pytest.raises(ConfigError, match="maximises val_image_auroc, not val_pixel_auroc"):
        check_study_objective(RacedStudy(), TuneConfig(method="patch", objective="val_pixel_auroc"))


# YAML validation: one rule per test


def test_yaml_space_is_read_and_made_canonical(tmp_path):
    path = write_space(tmp_path, "learning_rate: {type: float, low: 1e-4, high: 0.1, log: true}\n"
                                 "epochs: {type: int, low: 1, high: 3}\n")
    space = validate_search_space(tuning.load_search_space(path), MetricConfig())
    # PyYAML reads 1e-4 (no dot) as a string: it is accepted as the float it means.
    assert space["learning_rate"]["low"] == pytest.approx(1e-4)
    assert space["epochs"] == {"type": "int", "low": 1, "high": 3, "log": False}


def test_unknown_parameter_is_named(tmp_path):
    with pytest.raises(SearchSpaceError, match="unknown parameter 'epoch'.*searchable:.*epochs"):
        validate_search_space({"epoch": {"type": "int", "low": 1, "high": 3}}, MetricConfig())


def test_parameter_of_the_other_method_is_unknown():
    with pytest.raises(SearchSpaceError, match="unknown parameter 'latent_dim'"):
        validate_search_space({"latent_dim": {"type": "int", "low": 8, "high": 64}}, MetricConfig())


def test_category_is_not_searchable():
    with pytest.raises(SearchSpaceError, match="unknown parameter 'category'"):
        validate_search_space({"category": {"type": "categorical", "choices": ["carpet"]}}, MetricConfig())


def test_unknown_type_is_named():
    with pytest.raises(SearchSpaceError, match="epochs has unknown type 'integer'"):
        validate_search_space({"epochs": {"type": "integer", "low": 1, "high": 3}}, MetricConfig())


def test_missing_type_is_an_error():
    with pytest.raises(SearchSpaceError, match="epochs needs a mapping with a 'type'"):
        validate_search_space({"epochs": [1, 2]}, MetricConfig())


def test_low_above_high_is_an_error():
    with pytest.raises(SearchSpaceError, match="low 10 above high 2"):
        validate_search_space({"epochs": {"type": "int", "low": 10, "high": 2}}, MetricConfig())


def test_missing_bound_is_an_error():
    with pytest.raises(SearchSpaceError, match="needs high"):
        validate_search_space({"epochs": {"type": "int", "low": 1}}, MetricConfig())


def test_log_scale_needs_positive_low():
    with pytest.raises(SearchSpaceError, match="log scale, so low must be positive"):
        validate_search_space(
            {"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, MetricConfig()
        )


def test_bound_outside_what_the_method_accepts_is_an_error():
    with pytest.raises(SearchSpaceError, match="epochs=0 is not allowed: epochs must be at least 1"):
        validate_search_space({"epochs": {"type": "int", "low": 0, "high": 3}}, MetricConfig())


def test_unknown_choice_is_an_error():
    with pytest.raises(SearchSpaceError, match="optimizer='rmsprop' is not allowed"):
        validate_search_space(
            {"optimizer": {"type": "categorical", "choices": ["sgd", "rmsprop"]}}, MetricConfig()
        )


def test_float_range_on_an_integer_setting_is_an_error():
    with pytest.raises(SearchSpaceError, match="epochs is a int setting; a float range does not fit"):
        validate_search_space({"epochs": {"type": "float", "low": 1, "high": 3}}, MetricConfig())


def test_fractional_bound_of_an_int_range_is_an_error():
    with pytest.raises(SearchSpaceError, match="epochs takes int values, got 1.5"):
        validate_search_space({"epochs": {"type": "int", "low": 1.5, "high": 3}}, MetricConfig())


def test_unknown_key_in_a_spec_is_an_error():
    with pytest.raises(SearchSpaceError, match=r"unknown keys \['hgih'\]"):
        validate_search_space({"epochs": {"type": "int", "low": 1, "hgih": 3, "high": 3}}, MetricConfig())


def test_empty_choices_are_an_error():
    with pytest.raises(SearchSpaceError, match="non-empty list 'choices'"):
        validate_search_space({"optimizer": {"type": "categorical", "choices": []}}, MetricConfig())


def test_step_and_log_together_are_an_error():
    with pytest.raises(SearchSpaceError, match="both a step and a log scale"):
        validate_search_space(
            {"epochs": {"type": "int", "low": 1, "high": 9, "step": 2, "log": True}}, MetricConfig()
        )


def test_empty_space_is_an_error():
    with pytest.raises(SearchSpaceError, match="search space is empty"):
        validate_search_space({}, MetricConfig())


def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path):
    with pytest.raises(SearchSpaceError, match="must map parameter names to specs"):
        tuning.load_search_space(write_space(tmp_path, "- epochs\n- optimizer\n"))


def test_missing_yaml_file_is_an_error(tmp_path):
    with pytest.raises(SearchSpaceError, match="does not exist"):
        tuning.load_search_space(tmp_path / "nowhere.yaml")


# The suggest function


SPACE = {
    "epochs": {"type": "int", "low": 2, "high": 100, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "batch_size": {"type": "int", "low": 16, "high": 64, "step": 16, "log": False},
}


def test_suggest_returns_one_value_per_searched_setting_within_its_bounds():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        params = suggest_training_params(study.ask(), SPACE)
        assert set(params) == set(SPACE)
        assert 2 <= params["epochs"] <= 100 and isinstance(params["epochs"], int)
        assert params["optimizer"] in ("sgd", "adam")
        assert 1e-4 <= params["learning_rate"] <= 1e-1
        assert params["batch_size"] in (16, 32, 48, 64)
        # The drawn settings make a valid config with the rest held fixed.
        config = dataclasses.replace(MetricConfig(image_size=64, weights="none"), **params)
        config.validate()
        assert config.image_size == 64 and config.weights == "none"


def test_suggest_records_the_distributions_on_the_trial():
    trial = optuna.trial.FixedTrial({"epochs": 7, "optimizer": "adam", "learning_rate": 0.01, "batch_size": 32})
    assert suggest_training_params(trial, SPACE) == {
        "epochs": 7, "optimizer": "adam", "learning_rate": 0.01, "batch_size": 32,
    }


def test_workers_sharing_a_study_draw_different_settings_yet_each_trial_is_reproducible():
    def first_draws(seed):
        study = optuna.create_study(sampler=tuning.TrialSeededSampler(seed))
        return [suggest_training_params(study.ask(), SPACE) for _ in range(3)]

    draws = first_draws(0)
    assert draws == first_draws(0)
    assert draws[0] != draws[1] != draws[2]


# Fixed settings


def test_base_config_takes_the_methods_defaults_for_empty_options():
    tune_config = TuneConfig(method="ssim", category="leather", seed=4)
    config = tuning.base_training_config(tune_config, {"image_size": None, "epochs": 3, "weights": "imagenet"})
    assert isinstance(config, SSIMConfig)
    assert (config.image_size, config.epochs, config.category, config.seed) == (256, 3, "leather", 4)


def test_base_config_refuses_a_changed_setting_of_the_other_method():
    with pytest.raises(ConfigError, match="latent_dim is a setting of the other method"):
        tuning.base_training_config(TuneConfig(method="metric"), {"latent_dim": 8})


def test_tune_config_validation_names_the_setting():
    with pytest.raises(ConfigError, match="method must be one of metric, ssim"):
        TuneConfig(method="pca").validate()
    with pytest.raises(ConfigError, match="grace_period"):
        TuneConfig(heartbeat_interval=10, grace_period=5).validate()
    assert TuneConfig(category="cable").resolved_study_name == "metric-cable"


def test_cli_reports_a_bad_search_space_in_one_line_before_training(tmp_path, tiny_dataset_root):
    path = write_space(tmp_path, "epochs: {type: int, low: 1, high: 3}\nwarmup: {type: int, low: 1, high: 2}\n")
    result = CliRunner().invoke(main, [
        "tune", "--data-dir", str(tiny_dataset_root), "--search-space", str(path),
        "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--image-size", "64",
    ])
    assert result.exit_code == 1
    assert "SearchSpaceError: unknown parameter 'warmup'" in result.output
    assert not (tmp_path / "optuna.db").exists()


def test_cli_refuses_an_ssim_setting_for_a_metric_study(tmp_path):
    result = CliRunner().invoke(main, ["tune", "--method", "metric", "--latent-dim", "8"])
    assert result.exit_code == 1
    assert "latent_dim is a setting of the other method" in result.output


def test_cli_reports_a_missing_category_before_opening_the_study(tmp_path, tiny_dataset_root):
    result = CliRunner().invoke(main, [
        "tune", "--data-dir", str(tiny_dataset_root), "--category", "bottle",
        "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--image-size", "64", "--weights", "none",
    ])
    assert result.exit_code == 1
    assert "DatasetError" in result.output and "bottle" in result.output
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one, on purpose
def test_a_ctrl_c_swallowed_by_a_finaliser_is_raised_again():
    # Python drops an exception raised inside __del__ (TensorFlow objects have many):
    # the worker must still stop at its next check instead of finishing its trial.
    import gc
    import os
    import signal
    import time

    from defectlab.tuning import interrupts as study_module

    class InterruptedWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the handler runs here, and its exception is dropped
                pass

    # The handler in force before the guard (Python's default; ignored in a shell's background job).
    handler_before = signal.getsignal(signal.SIGINT)
    with study_module.kept_interrupts():
        InterruptedWhileCollected()
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            study_module.raise_if_interrupted()
    study_module.raise_if_interrupted()  # outside the guard nothing is remembered
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_a_ctrl_c_that_surfaces_as_another_error_is_recorded_as_the_users_ctrl_c(tmp_path, tracking_uri, monkeypatch):
    # Ctrl-C inside TensorFlow's C code comes out as a SystemError ("returned a result with an
    # exception set"); the trial must still say it was interrupted, not that training broke.
    import optuna

    from defectlab import runner
    from defectlab.methods.metric import MetricConfig
    from defectlab.tuning import interrupts
    from defectlab.tuning.objective import StudyObjective

    def interrupted_in_c_code(*arguments, **keywords):
        interrupts._CtrlC.requested = True  # what the guard's handler records
        raise SystemError("<built-in method TFE_Py_TapeVariableAccessed> returned a result with an exception set")

    monkeypatch.setattr(runner, "run_training", interrupted_in_c_code)
    tune_config = TuneConfig(storage=f"sqlite:///{tmp_path / 'optuna.db'}", pruning_interval=0)
    objective = StudyObjective(tune_config, MetricConfig(), {}, parent_run_id="")
    trial = optuna.create_study().ask()
    with interrupts.kept_interrupts(), pytest.raises(SystemError):
        objective(trial)
    assert trial.user_attrs["fail_reason"].startswith("KeyboardInterrupt: Ctrl-C (surfaced as SystemError")


def test_the_stale_trial_retry_uses_optunas_current_callback_without_a_deprecation_warning(recwarn):
    from defectlab.tuning.storage import RetryStaleTrial

    retry = RetryStaleTrial(max_retry=2)
    assert isinstance(retry.retry, optuna.storages.RetryHeartbeatStaleTrialCallback)
    deprecations = [str(warning.message) for warning in recwarn if issubclass(warning.category, FutureWarning)]
    assert deprecations == []  # every `defectlab tune` printed Optuna's deprecation of the old name


def test_a_trials_pruning_images_are_read_as_the_trial_reads_them(tmp_path):
    """A study searching ``resize`` scored its pruning checks on the first trial's geometry."""
    import numpy as np
    from PIL import Image

    from defectlab.methods.metric import MetricConfig
    from defectlab.tuning.objective import StudyObjective

    for folder, count in (("train/good", 6), ("test/good", 4), ("test/dent", 4)):
        (tmp_path / "wide" / folder).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(np.full((32, 64, 3), 200, dtype=np.uint8)).save(tmp_path / "wide" / folder / f"{index}.png")
    base = MetricConfig(data_dir=str(tmp_path), category="wide", image_size=32, resize="stretch")
    objective = StudyObjective(TuneConfig(method="metric", data_dir=str(tmp_path), category="wide"), base, {}, "")

    stretched = objective.dataset(base).images
    padded = objective.dataset(dataclasses.replace(base, resize="pad")).images
    assert (stretched == 200).all()
    assert (padded[:, :8] == 0).all() and (padded[:, 8:24] == 200).all()  # 64 x 32 into 32 x 32: 16 rows, centred
    assert objective.dataset(base) is objective.dataset(base)  # each way of reading loads once


def test_a_dead_workers_duplicate_trial_leaves_the_run_it_reused_finished(tracking_uri):
    import mlflow

    from defectlab.tuning.storage import RetryStaleTrial

    with mlflow.start_run() as parent:
        pass
    with mlflow.start_run() as reused:  # the completed twin's run
        pass
    study = optuna.create_study()
    stale = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL, params={}, distributions={},
        user_attrs={"mlflow_run_id": reused.info.run_id, "mlflow_parent_run_id": parent.info.run_id,
                    "duplicate_of": 0},
    )
    RetryStaleTrial(max_retry=1)(study, stale)

    assert mlflow.get_run(reused.info.run_id).info.status == "FINISHED"
    assert mlflow.get_run(parent.info.run_id).info.status == "FAILED"  # the dead worker's own parent run
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.WAITING]  # retried
