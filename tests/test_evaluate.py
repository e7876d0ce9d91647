"""``defectlab evaluate`` refuses bad settings and unknown models with one clear line, before any scoring.

The end-to-end evaluation of a trained detector is in tests/integration/test_serving.py.
"""

from __future__ import annotations

import mlflow
import pytest
from click.testing import CliRunner

from defectlab.cli import main
from defectlab.config import ConfigError, EvaluateConfig
from defectlab.errors import set_setting_style


def test_model_uri_is_required():
    with pytest.raises(ConfigError, match="model_uri is required"):
        EvaluateConfig().validate()


@pytest.mark.parametrize("image_size", [-1, 8])
def test_image_size_is_zero_or_a_usable_size(image_size):
    with pytest.raises(ConfigError, match="image_size"):
        EvaluateConfig(model_uri="runs:/x/detector", image_size=image_size).validate()


def test_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match="batch_size"):
        EvaluateConfig(model_uri="runs:/x/detector", batch_size=0).validate()


def test_unknown_registered_model_is_a_one_line_error_and_logs_no_run(tracking_uri):
    result = CliRunner().invoke(main, ["evaluate", "--model-uri", "models:/no-such-model@champion"])

    assert result.exit_code == 1
    assert "DetectorUnavailableError" in result.output and "no-such-model" in result.output
    assert "Traceback" not in result.output
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_a_model_that_is_not_a_detector_is_refused(tracking_uri):
    class ConstantModel(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [0.0] * len(model_input)

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="other", python_model=ConstantModel(), pip_requirements=[])

    result = CliRunner().invoke(main, ["evaluate", "--model-uri", info.model_uri])

    assert result.exit_code == 1
    assert "is not a defectlab detector" in result.output


def test_threshold_fpr_outside_zero_one_is_refused():
    from defectlab.methods.patch import PatchConfig

    for rate in (-0.1, 1.0, 2.0):
        with pytest.raises(ConfigError, match=r"threshold_fpr must be a false-alarm rate in \[0, 1\)"):
            PatchConfig(threshold_fpr=rate)


def test_a_false_alarm_rate_lowers_the_deployed_threshold_past_one_outlier_good_image():
    import numpy as np
    import pandas as pd

    from defectlab.evaluation import evaluate

    # 20 held-out good images score 0..0.19, one outlier 5.0; test defects score 1.0 and 2.0.
    threshold_scores = [index / 100 for index in range(20)] + [5.0]
    table = pd.DataFrame({
        "path": [f"{index}.png" for index in range(25)],
        "label": [0] * 21 + [0, 0, 1, 1],
        "defect_type": ["good"] * 23 + ["cut", "cut"],
        "split": ["threshold"] * 21 + ["test"] * 4,
    })
    scores = np.array(threshold_scores + [0.1, 0.15, 1.0, 2.0])
    strict = evaluate(table, scores)
    assert strict.threshold == 5.0 and strict.metrics["test_tpr_at_val_threshold"] == 0.0
    tolerant = evaluate(table, scores, threshold_fpr=0.05)  # floor(0.05 * 21) = 1 false alarm allowed
    assert tolerant.threshold == 0.19
    assert tolerant.metrics["test_tpr_at_val_threshold"] == 1.0 and tolerant.metrics["test_tnr_at_val_threshold"] == 1.0


def test_an_image_size_past_the_bound_is_refused_in_one_line():
    from defectlab.config import MAX_IMAGE_SIZE
    from defectlab.methods.patch import PatchConfig

    with pytest.raises(ConfigError, match=f"image_size must be at most {MAX_IMAGE_SIZE} pixels, got 100000"):
        PatchConfig(image_size=100000)
    with pytest.raises(ConfigError, match=f"image_size must be at most {MAX_IMAGE_SIZE} pixels"):
        EvaluateConfig(model_uri="runs:/x/detector", image_size=100000)
    PatchConfig(image_size=MAX_IMAGE_SIZE)  # the bound itself is allowed


def test_images_that_would_not_fit_in_memory_are_refused_before_any_is_decoded(tiny_dataset_root, monkeypatch):
    from types import SimpleNamespace

    import psutil

    from defectlab import data
    from defectlab.data import layout

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=64 * 2 ** 20))  # 64 MiB free

    def no_decoding(*arguments, **keywords):
        raise AssertionError("images were decoded before the memory check")

    monkeypatch.setattr(layout, "load_images", no_decoding)
    with pytest.raises(data.DatasetError, match=r"images at 1024 px need .* GiB once decoded, more than half of the 0.1 GiB.*lower image_size"):
        data.load_category(str(tiny_dataset_root), "carpet", 1024)


@pytest.mark.training
def test_without_category_the_model_is_evaluated_on_the_data_it_was_trained_on(tiny_dataset_root, tracking_uri):
    from defectlab.methods.patch import PatchConfig
    from defectlab.runner import run_evaluate, run_training

    trained = run_training(PatchConfig(
        data_dir=str(tiny_dataset_root), category="leather", image_size=64, backbone="pixels",
    ))
    evaluated = run_evaluate(EvaluateConfig(model_uri=trained.detector_uri))
    tags = mlflow.get_run(evaluated.run_id).data.tags
    assert tags["category"] == "leather" and tags["dataset"] == tiny_dataset_root.name  # not the built-in carpet
    assert evaluated.metrics["test_image_auroc"] == pytest.approx(trained.metrics["test_image_auroc"])


def test_a_model_whose_run_recorded_no_data_must_be_given_its_category(tracking_uri):
    from defectlab.runner import with_training_data

    with mlflow.start_run() as bare:
        pass
    with pytest.raises(ConfigError, match=r"recorded no category or data_dir: pass category=NAME and data_dir=FOLDER"):
        with_training_data(EvaluateConfig(model_uri=f"runs:/{bare.info.run_id}/detector"))
    set_setting_style("mlproject")  # as under `mlflow run`: the message speaks its syntax
    try:
        with pytest.raises(ConfigError, match=r"pass -P category=NAME and -P data_dir=FOLDER"):
            with_training_data(EvaluateConfig(model_uri=f"runs:/{bare.info.run_id}/detector"))
    finally:
        set_setting_style("python")
    given = EvaluateConfig(model_uri=f"runs:/{bare.info.run_id}/detector", category="carpet", data_dir="synthetic")
    assert with_training_data(given) == given  # named data is taken as it is
