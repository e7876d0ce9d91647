"""Run configurations: frozen dataclasses that own every default.

The click options (``defectlab.cli``) and the ``MLproject`` parameters read
their defaults from here, and ``tracking`` logs ``dataclasses.asdict(config)``
as the run's parameters, so a default lives in exactly one place.

The defaults are the article's GPU settings; ``make demo`` passes CPU-sized ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

OPTIMIZERS = ("sgd", "adam")
SSIM_LOSSES = ("ssim", "l2")
MIN_IMAGE_SIZE = 32


class ConfigError(ValueError):
    """A run setting is invalid; raised before any data is loaded or model trained."""


@dataclass(frozen=True)
class MetricConfig:
    """L2-softmax metric learning (MobileNetV2 + LocalOutlierFactor)."""

    category: str = "carpet"
    data_dir: str = "synthetic"
    image_size: int = 224
    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    seed: int = 0
    register_as: str = ""
    backbone_alpha: float = 0.5
    weights: str = "imagenet"
    softmax_scale: float = 16.0
    reference_size: int = -1
    reference_dir: str = ""
    lof_neighbors: int = 5
    ensemble: int = 1
    mixed_precision: bool = False
    repeats: int = 1

    method = "l2_softmax"

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        _validate_common(self)
        if self.backbone_alpha <= 0:
            raise ConfigError(f"backbone_alpha must be positive, got {self.backbone_alpha}")
        if self.softmax_scale <= 0:
            raise ConfigError(f"softmax_scale must be positive, got {self.softmax_scale}")
        if self.reference_size < -1:
            raise ConfigError(
                f"reference_size must be -1 (all) or a count >= 0, got {self.reference_size}"
            )
        if self.lof_neighbors < 1:
            raise ConfigError(f"lof_neighbors must be at least 1, got {self.lof_neighbors}")
        if self.ensemble < 1:
            raise ConfigError(f"ensemble must be at least 1, got {self.ensemble}")
        if not self.weights:
            raise ConfigError("weights must be 'imagenet', 'none' or a path to a weights file")


@dataclass(frozen=True)
class SSIMConfig:
    """SSIM autoencoder (Bergmann et al. 2018)."""

    category: str = "carpet"
    data_dir: str = "synthetic"
    image_size: int = 256
    epochs: int = 200
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 2e-4
    seed: int = 0
    register_as: str = ""
    latent_dim: int = 100
    ssim_window: int = 11
    augment_to: int = 10000
    grayscale: bool = True
    loss: str = "ssim"
    repeats: int = 1

    method = "ssim_ae"

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        _validate_common(self)
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be at least 1, got {self.latent_dim}")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            raise ConfigError(f"ssim_window must be an odd number >= 3, got {self.ssim_window}")
        if self.ssim_window > self.image_size:
            raise ConfigError(
                f"ssim_window ({self.ssim_window}) must not exceed image_size ({self.image_size})"
            )
        if self.augment_to < 1:
            raise ConfigError(f"augment_to must be at least 1, got {self.augment_to}")
        if self.loss not in SSIM_LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(SSIM_LOSSES)}, got {self.loss!r}")


@dataclass(frozen=True)
class EvaluateConfig:
    """Scoring a logged or registered detector on one category (``defectlab evaluate``).

    ``image_size`` 0 means the detector's own size; the detector always scores
    at its own size, ``image_size`` only sets the size of the images in the
    ranked grids. ``batch_size`` is how many images go through the detector's
    ``predict`` at a time.
    """

    model_uri: str = ""
    category: str = "carpet"
    data_dir: str = "synthetic"
    image_size: int = 0
    batch_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        if not self.model_uri:
            raise ConfigError(
                "model_uri is required, e.g. models:/defectlab-metric-carpet@champion or runs:/<run_id>/detector"
            )
        if not self.category:
            raise ConfigError("category must not be empty")
        if self.image_size != 0 and self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image_size must be 0 (the detector's own) or at least {MIN_IMAGE_SIZE} pixels, "
                f"got {self.image_size}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")


def _validate_common(config) -> None:
    if not config.category:
        raise ConfigError("category must not be empty")
    if config.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {config.image_size}"
        )
    if config.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {config.batch_size}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}"
        )
    if not config.learning_rate > 0:
        raise ConfigError(f"learning_rate must be positive, got {config.learning_rate}")
    if config.repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {config.repeats}")


TUNE_METHODS = ("metric", "ssim")


@dataclass(frozen=True)
class TuneConfig:
    """An Optuna study over one method's training settings (``defectlab tune``).

    The training settings held fixed are a `MetricConfig` or `SSIMConfig`
    passed beside this one; ``category``, ``data_dir`` and ``seed`` here are
    also theirs. ``timeout`` 0 means no time limit; ``pruning_interval`` is the
    number of epochs between intermediate validation scores (0: no pruning).
    A worker that stops sending heartbeats for ``grace_period`` seconds has
    its trial marked failed and retried by the next worker that looks.
    """

    method: str = "metric"
    category: str = "carpet"
    data_dir: str = "synthetic"
    n_trials: int = 20
    timeout: float = 0.0
    storage: str = "sqlite:///optuna.db"
    study_name: str = ""
    search_space: str = ""
    seed: int = 0
    pruning_interval: int = 5
    heartbeat_interval: int = 60
    grace_period: int = 180

    @property
    def resolved_study_name(self) -> str:
        """``study_name``, or ``<method>-<category>`` when it is empty."""
        return self.study_name or f"{self.method}-{self.category}"

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        if self.method not in TUNE_METHODS:
            raise ConfigError(f"method must be one of {', '.join(TUNE_METHODS)}, got {self.method!r}")
        if not self.category:
            raise ConfigError("category must not be empty")
        if self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}")
        if self.timeout < 0:
            raise ConfigError(f"timeout must be 0 (no limit) or a number of seconds, got {self.timeout}")
        if not self.storage:
            raise ConfigError("storage must be a SQLAlchemy URL, e.g. sqlite:///optuna.db")
        if self.pruning_interval < 0:
            raise ConfigError(
                f"pruning_interval must be 0 (no pruning) or a number of epochs, got {self.pruning_interval}"
            )
        if self.heartbeat_interval < 1:
            raise ConfigError(f"heartbeat_interval must be at least 1 second, got {self.heartbeat_interval}")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                f"grace_period ({self.grace_period} s) must exceed heartbeat_interval "
                f"({self.heartbeat_interval} s), or live workers' trials would be failed"
            )


def config_defaults(config_class) -> dict:
    """Field name -> default value of a config dataclass (for click and MLproject)."""
    return {field.name: field.default for field in dataclasses.fields(config_class)}
