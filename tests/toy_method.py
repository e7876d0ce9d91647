"""A toy map-making method, registered by tests alone: the registry is the only way in.

Its detector is the distance of each pixel to the mean good image, so a run of
it costs seconds; ``collapse=True`` gives every image the same score, as a
diverged network does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from defectlab import methods
from defectlab.config import ConfigError, RunConfig
from defectlab.methods.base import FitResult, Method, PreparedRun


@dataclass(frozen=True)
class PixelMeanConfig(RunConfig):
    image_size: int = 64
    power: int = 1
    collapse: bool = False

    def validate(self) -> None:
        super().validate()
        if self.power < 1:
            raise ConfigError(f"power must be at least 1, got {self.power}")


class PixelMeanDetector:
    """Map: |image - mean good image| ** power, averaged over channels; score: the map's maximum."""

    def __init__(self, power: int = 1, collapse: bool = False):
        self.power = power
        self.collapse = collapse

    def fit(self, good_images):
        self.mean_ = good_images.astype(np.float64).mean(axis=0)
        return self

    def score_images_with_maps(self, images):
        maps = (np.abs(images.astype(np.float64) - self.mean_) ** self.power).mean(axis=-1)
        if self.collapse:
            maps = np.ones_like(maps)
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def score_images(self, images):
        return self.score_images_with_maps(images)[0]

    def save(self, folder):
        np.save(Path(folder) / "mean.npy", self.mean_)
        return {"mean": "mean.npy", "power": self.power, "collapse": self.collapse}

    @classmethod
    def load(cls, folder, description):
        detector = cls(description["power"], description.get("collapse", False))
        detector.mean_ = np.load(Path(folder) / description["mean"])
        return detector


def prepare(config, dataset):
    def fit(epoch_callbacks):
        import keras

        inputs = keras.Input(shape=(config.image_size, config.image_size, 3))
        return FitResult(
            detector=PixelMeanDetector(config.power, config.collapse).fit(dataset.images_of("train")),
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
