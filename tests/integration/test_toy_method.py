"""A method registered in the test alone trains, logs the contract, evaluates, tunes, compares and serves.

Nothing outside this file knows the toy method: the registry is the only way in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from defectlab import methods
from defectlab.config import ConfigError, RunConfig
from defectlab.methods.base import FitResult, Method, PreparedRun

pytestmark = pytest.mark.integration

CONTRACT_METRICS = (
    "test_image_auroc", "test_tpr_tnr_best", "test_tpr_at_val_threshold", "test_tnr_at_val_threshold",
    "val_image_auroc", "test_pixel_auroc", "test_aupro", "score_seconds",
)
CONTRACT_ARTIFACTS = (
    "scores.csv", "plots/roc.png", "plots/score_hist.png", "ranking/top_defects.png",
    "ranking/hard_defects.png", "ranking/false_alarms.png", "heatmaps/top_defects.png",
)


@dataclass(frozen=True)
class PixelMeanConfig(RunConfig):
    image_size: int = 64
    power: int = 1

    def validate(self) -> None:
        super().validate()
        if self.power < 1:
            raise ConfigError(f"power must be at least 1, got {self.power}")


class PixelMeanDetector:
    """Map: |image - mean good image| ** power, averaged over channels; score: the map's maximum."""

    def __init__(self, power: int = 1):
        self.power = power

    def fit(self, good_images):
        self.mean_ = good_images.astype(np.float64).mean(axis=0)
        return self

    def score_images_with_maps(self, images):
        maps = (np.abs(images.astype(np.float64) - self.mean_) ** self.power).mean(axis=-1)
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def score_images(self, images):
        return self.score_images_with_maps(images)[0]

    def save(self, folder):
        np.save(Path(folder) / "mean.npy", self.mean_)
        return {"mean": "mean.npy", "power": self.power}

    @classmethod
    def load(cls, folder, description):
        detector = cls(description["power"])
        detector.mean_ = np.load(Path(folder) / description["mean"])
        return detector


def prepare(config, dataset):
    def fit(epoch_callbacks):
        import keras

        inputs = keras.Input(shape=(config.image_size, config.image_size, 3))
        return FitResult(
            detector=PixelMeanDetector(config.power).fit(dataset.images_of("train")),
            keras_model=keras.Model(inputs, keras.layers.Rescaling(1.0)(inputs)),
        )

    return PreparedRun(tags={}, fit=fit)


TOY = Method(
    name="pixelmean", tag="pixel_mean", label="Pixel mean", summary="Toy: distance to the mean image.",
    config_class=PixelMeanConfig, makes_maps=True, prepare=prepare,
    load_detector=PixelMeanDetector.load,
    default_search_space=lambda config, root: {"power": {"type": "int", "low": 1, "high": 2}},
)


@pytest.fixture
def toy_method():
    methods.register(TOY)
    yield TOY
    methods.unregister(TOY.name)


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
    served = detector.predict(pd.DataFrame({"image": list(paths)}), params={"return_map": True})
    assert len(served) == 3 and np.asarray(served["anomaly_map"][0]).shape == (64, 64)
