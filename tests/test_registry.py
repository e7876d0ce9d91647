"""Promotion against a real SQLite model registry (runs with metrics, a trivial pyfunc per version)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from defectlab.tracking.registry import CHAMPION_ALIAS, RegistryError, promote

MODEL_NAME = "defectlab-metric-testcat"


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A stand-in detector: promotion looks only at the producing run's metrics."""

    def predict(self, context, model_input, params=None):
        return [0.0] * len(model_input)


def register_version(metrics: dict, model_name: str = MODEL_NAME) -> str:
    """Log a run with ``metrics`` and a trivial pyfunc, register it; returns the version."""
    with mlflow.start_run():
        mlflow.log_metrics(metrics)
        info = mlflow.pyfunc.log_model(name="detector", python_model=ConstantModel(), pip_requirements=[])
    return str(mlflow.register_model(info.model_uri, model_name).version)


def champion(model_name: str = MODEL_NAME) -> str | None:
    alias_version = MlflowClient().get_registered_model(model_name).aliases.get(CHAMPION_ALIAS)
    return None if alias_version is None else str(alias_version)


def version_tags(version: str, model_name: str = MODEL_NAME) -> dict:
    return MlflowClient().get_model_version(model_name, version).tags


def test_first_version_becomes_champion(tracking_uri):
    version = register_version({"val_image_auroc": 0.7})

    decision = promote(MODEL_NAME)

    assert decision.promoted
    assert decision.candidate_version == version
    assert decision.champion_version_before is None
    assert decision.candidate_value == pytest.approx(0.7)
    assert champion() == version
    tags = version_tags(version)
    assert tags["promotion_decision"] == "promoted"
    assert tags["promotion_metric"] == "val_image_auroc"
    assert float(tags["promotion_candidate_value"]) == pytest.approx(0.7)
    assert tags["compared_with_version"] == ""


def test_better_version_takes_the_alias_and_records_the_comparison(tracking_uri):
    first = register_version({"val_image_auroc": 0.7})
    promote(MODEL_NAME)
    second = register_version({"val_image_auroc": 0.9})

    decision = promote(MODEL_NAME)

    assert decision.promoted
    assert (decision.candidate_version, decision.champion_version_before) == (second, first)
    assert champion() == second
    tags = version_tags(second)
    assert tags["promotion_decision"] == "promoted"
    assert tags["compared_with_version"] == first
    assert float(tags["promotion_candidate_value"]) == pytest.approx(0.9)
    assert float(tags["promotion_champion_value"]) == pytest.approx(0.7)


def test_worse_version_leaves_the_champion(tracking_uri):
    first = register_version({"val_image_auroc": 0.8})
    promote(MODEL_NAME)
    second = register_version({"val_image_auroc": 0.6})

    decision = promote(MODEL_NAME)

    assert not decision.promoted
    assert champion() == first
    tags = version_tags(second)
    assert tags["promotion_decision"] == "not_promoted"
    assert tags["compared_with_version"] == first
    assert float(tags["promotion_champion_value"]) == pytest.approx(0.8)


def test_equal_version_leaves_the_champion(tracking_uri):
    first = register_version({"val_image_auroc": 0.8})
    promote(MODEL_NAME)
    register_version({"val_image_auroc": 0.8})

    decision = promote(MODEL_NAME)

    assert not decision.promoted
    assert champion() == first


def test_lower_is_better_reverses_the_comparison(tracking_uri):
    register_version({"train_seconds": 30.0})
    promote(MODEL_NAME, metric="train_seconds", higher_is_better=False)
    faster = register_version({"train_seconds": 10.0})

    decision = promote(MODEL_NAME, metric="train_seconds", higher_is_better=False)

    assert decision.promoted
    assert champion() == faster


def test_an_older_version_can_be_named_explicitly(tracking_uri):
    best = register_version({"val_image_auroc": 0.95})
    register_version({"val_image_auroc": 0.5})
    promote(MODEL_NAME)  # newest (0.5) becomes the first champion

    decision = promote(MODEL_NAME, version=best)

    assert decision.promoted
    assert champion() == best


def test_missing_metric_on_the_candidate_is_an_error_and_keeps_the_alias(tracking_uri):
    first = register_version({"val_image_auroc": 0.8})
    promote(MODEL_NAME)
    second = register_version({"test_image_auroc": 0.99})

    with pytest.raises(RegistryError, match="has no metric 'val_image_auroc'"):
        promote(MODEL_NAME)

    assert champion() == first
    assert "promotion_decision" not in version_tags(second)


def test_unknown_model_is_an_error(tracking_uri):
    with pytest.raises(RegistryError, match="no registered model named 'nobody'"):
        promote("nobody")


def test_unknown_version_is_an_error(tracking_uri):
    register_version({"val_image_auroc": 0.8})

    with pytest.raises(RegistryError, match="has no version '7'"):
        promote(MODEL_NAME, version=7)
    assert champion() is None


def test_promote_command_prints_the_decision_and_exits_zero_when_not_promoted(tracking_uri):
    from click.testing import CliRunner

    from defectlab.cli import main

    first = register_version({"val_image_auroc": 0.8})
    promote(MODEL_NAME)
    second = register_version({"val_image_auroc": 0.5})

    result = CliRunner().invoke(main, ["promote", "--model-name", MODEL_NAME])

    assert result.exit_code == 0, result.output
    assert f"version {second} not promoted" in result.output
    assert f"champion is version {first}" in result.output


def test_promote_command_reports_an_unknown_model_as_an_error(tracking_uri):
    from click.testing import CliRunner

    from defectlab.cli import main

    result = CliRunner().invoke(main, ["promote", "--model-name", "nobody"])

    assert result.exit_code == 1
    assert "RegistryError" in result.output and "nobody" in result.output


def test_a_version_that_is_not_a_number_is_an_unknown_version(tracking_uri):
    register_version({"val_image_auroc": 0.8})

    with pytest.raises(RegistryError, match="has no version 'latest'"):
        promote(MODEL_NAME, version="latest")


def interval_metrics(value: float, low: float, high: float) -> dict:
    return {"val_image_auroc": value, "val_image_auroc_ci_low": low, "val_image_auroc_ci_high": high}


def test_a_gain_inside_the_champions_interval_is_said_and_still_promoted_by_default(tracking_uri):
    first = register_version(interval_metrics(0.80, 0.70, 0.88))
    promote(MODEL_NAME)
    second = register_version(interval_metrics(0.84, 0.75, 0.92))

    decision = promote(MODEL_NAME)

    assert decision.promoted and champion() == second
    assert decision.significant is False
    assert f"inside version {first}'s 95 % interval (0.7-0.88): not significant" in decision.reason
    assert version_tags(second)["promotion_significant"] == "false"


def test_require_significant_keeps_the_champion_when_the_gain_is_inside_its_interval(tracking_uri):
    first = register_version(interval_metrics(0.80, 0.70, 0.88))
    promote(MODEL_NAME)
    register_version(interval_metrics(0.84, 0.75, 0.92))

    decision = promote(MODEL_NAME, require_significant=True)

    assert not decision.promoted and champion() == first
    assert "not promoted (--require-significant)" in decision.reason


def test_require_significant_promotes_a_gain_outside_the_interval(tracking_uri):
    register_version(interval_metrics(0.80, 0.70, 0.88))
    promote(MODEL_NAME)
    third = register_version(interval_metrics(0.95, 0.90, 0.99))

    decision = promote(MODEL_NAME, require_significant=True)

    assert decision.promoted and decision.significant and champion() == third
    assert "outside version" in decision.reason


def test_require_significant_without_a_champion_interval_does_not_promote(tracking_uri):
    first = register_version({"val_image_auroc": 0.80})  # an older run: no interval
    promote(MODEL_NAME)
    register_version(interval_metrics(0.95, 0.90, 0.99))

    decision = promote(MODEL_NAME, require_significant=True)

    assert not decision.promoted and champion() == first
    assert decision.significant is None and "is unknown" in decision.reason


def test_promote_command_takes_require_significant(tracking_uri):
    from click.testing import CliRunner

    from defectlab.cli import main

    register_version(interval_metrics(0.80, 0.70, 0.88))
    promote(MODEL_NAME)
    register_version(interval_metrics(0.84, 0.75, 0.92))
    result = CliRunner().invoke(main, ["promote", "--model-name", MODEL_NAME, "--require-significant", "true"])
    assert result.exit_code == 0, result.output
    assert "not promoted" in result.output and "not significant" in result.output


def test_the_default_chooses_on_the_validation_split_and_choosing_on_test_is_recorded(tracking_uri):
    # Better on test, worse on validation: the default (validation) keeps the champion.
    first = register_version({"val_image_auroc": 0.9, "test_image_auroc": 0.7})
    promote(MODEL_NAME)
    second = register_version({"val_image_auroc": 0.8, "test_image_auroc": 0.95})
    decision = promote(MODEL_NAME)
    assert not decision.promoted and champion() == first
    assert version_tags(second)["promotion_metric"] == "val_image_auroc"
    assert version_tags(second)["promotion_on_test_split"] == "false"

    decision = promote(MODEL_NAME, metric="test_image_auroc")
    assert decision.promoted and champion() == second
    assert "chosen on the test split" in decision.reason
    assert version_tags(second)["promotion_on_test_split"] == "true"
