"""Run configurations: frozen dataclasses that own every default and check themselves.

A config validates itself at construction (``__post_init__``), so an invalid
one cannot exist. Shared fields live in two bases: `RunConfig` (what every
tracked training run has) and `TrainedConfig` (what a method trained by
gradient descent adds: epochs, batch size, optimiser). Each method's own
config (``defectlab.methods.<name>.config``) derives from one of them.

The click options (``defectlab.cli``) and the ``MLproject`` parameters read
their defaults from here, and tracking logs ``dataclasses.asdict(config)`` as
the run's parameters, so a default lives in exactly one place.

The defaults are the article's GPU settings; ``make demo`` passes CPU-sized ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from defectlab.data.decoder import BAD_IMAGE_POLICIES, RESIZE_MODES
from defectlab.errors import DefectlabError

OPTIMIZERS = ("sgd", "adam")
# What `defectlab promote` compares versions on by default: the validation split, as tuning.
DEFAULT_PROMOTION_METRIC = "val_image_auroc"
MIN_IMAGE_SIZE = 32
# Twice MVTec AD's largest originals (1024 px): beyond it one image's activations alone
# outgrow a workstation, and a mistyped size (100000) would only be found when the kernel
# kills the process.
MAX_IMAGE_SIZE = 2048


class ConfigError(DefectlabError, ValueError):
    """A run setting is invalid; raised before any data is loaded or model trained."""


@dataclass(frozen=True)
class RunConfig:
    """Settings of every tracked training run, whatever the method.

    ``resize`` (how non-square images become square, recorded in the detector
    so serving does the same) and ``on_bad_image`` (``error`` or ``skip``
    unreadable files) apply to every image the run reads;
    ``log_system_metrics`` samples CPU, memory (and GPU) into the run.
    ``threshold_fpr`` is the deployed threshold's target false-alarm rate on
    the held-out good images (0: their largest score, so none of them is flagged).
    """

    category: str = "carpet"
    data_dir: str = "synthetic"
    image_size: int = 224
    seed: int = 0
    register_as: str = ""
    repeats: int = 1
    resize: str = "stretch"
    on_bad_image: str = "error"
    log_system_metrics: bool = True
    threshold_fpr: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        if not self.category:
            raise ConfigError("category must not be empty")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {self.image_size}"
            )
        check_image_size_bound(self.image_size)
        if self.repeats < 1:
            raise ConfigError(f"repeats must be at least 1, got {self.repeats}")
        check_resize(self.resize)
        check_on_bad_image(self.on_bad_image)
        if not 0 <= self.threshold_fpr < 1:
            raise ConfigError(
                f"threshold_fpr must be a false-alarm rate in [0, 1) (0: the largest held-out good score), "
                f"got {self.threshold_fpr}"
            )


def check_image_size_bound(image_size: int) -> None:
    """`ConfigError` for an ``image_size`` above `MAX_IMAGE_SIZE`."""
    if image_size > MAX_IMAGE_SIZE:
        raise ConfigError(
            f"image_size must be at most {MAX_IMAGE_SIZE} pixels, got {image_size}; "
            "MVTec AD's originals are at most 1024 px and the methods are run at 64 to 320"
        )


def check_resize(resize: str) -> None:
    """Raise `ConfigError` for a ``resize`` that is not one of `RESIZE_MODES`."""
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")


def check_on_bad_image(on_bad_image: str) -> None:
    """Raise `ConfigError` for an ``on_bad_image`` that is not one of `BAD_IMAGE_POLICIES`."""
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")


@dataclass(frozen=True)
class TrainedConfig(RunConfig):
    """A run whose method trains a network by gradient descent."""

    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.01

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        super().validate()
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")


@dataclass(frozen=True)
class EvaluateConfig:
    """Scoring a logged or registered detector on one category (``defectlab evaluate``).

    ``category`` and ``data_dir`` empty (the default) mean the data the
    detector was trained on, read from its training run; other data must be
    named. ``image_size`` 0 means the detector's own size; the detector always
    scores at its own size (and with its own ``resize``), ``image_size`` only
    sets the size of the images in the ranked grids. ``batch_size`` is how many
    images go through the detector's ``predict`` at a time.
    """

    model_uri: str = ""
    category: str = ""
    data_dir: str = ""
    image_size: int = 0
    batch_size: int = 64
    seed: int = 0
    on_bad_image: str = "error"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        if not self.model_uri:
            raise ConfigError(
                "model_uri is required, e.g. models:/defectlab-metric-carpet@champion or runs:/<run_id>/detector"
            )
        if self.image_size != 0 and self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image_size must be 0 (the detector's own) or at least {MIN_IMAGE_SIZE} pixels, "
                f"got {self.image_size}"
            )
        check_image_size_bound(self.image_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        check_on_bad_image(self.on_bad_image)


@dataclass(frozen=True)
class PredictConfig:
    """Scoring new images with a logged, registered or local detector (``defectlab predict``).

    ``input`` is a folder (searched recursively for image files), a glob
    (``**`` descends folders), a text file of image paths (one a line;
    relative paths are relative to the file's folder) or one image file.
    ``out`` is the folder the results go to; it must be empty or new unless
    ``overwrite``. ``batch_size`` images are decoded and scored at a time.
    ``allow_errors``: unreadable images still exit 0. ``log``: also log an
    MLflow run. ``progress_every``: without a terminal, one progress line per
    this many images.
    """

    model_uri: str = ""
    input: str = ""
    out: str = ""
    batch_size: int = 32
    overwrite: bool = False
    allow_errors: bool = False
    log: bool = False
    progress_every: int = 500

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        if not self.model_uri:
            raise ConfigError(
                "model_uri is required: runs:/<run_id>/detector, models:/<name>/<version>, "
                "models:/<name>@champion or a detector folder"
            )
        if not self.input:
            raise ConfigError("input is required: a folder of images, a glob or a text file of image paths")
        if not self.out:
            raise ConfigError("out is required: the folder to write predictions.csv into")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.progress_every < 1:
            raise ConfigError(f"progress_every must be at least 1, got {self.progress_every}")


EXPORT_FORMATS = ("onnx",)


# Beyond this relative difference an exported detector is wrong, never float32 rounding magnified.
PARITY_TOLERANCE_LIMIT = 0.1


@dataclass(frozen=True)
class ExportConfig:
    """Exporting a detector to run without TensorFlow (``defectlab export``).

    ``format`` is the export format (``onnx``: the networks as ONNX graphs,
    the rest NumPy). ``out`` becomes an MLflow model folder; it must be new
    or empty, or hold an earlier export and ``overwrite``. The parity check
    scores the category's ``threshold`` split: the training run's
    ``scores.csv`` rows of that split, or, when ``category`` is given (and
    always for a detector folder without a run), that category of
    ``data_dir`` split with ``seed``. The export is refused when an image's
    exported score differs from the original's by more than
    ``parity_tolerance`` (relative). ``register_as`` (a registered model
    name) logs the export as a run's ``detector`` and registers it; ``log``
    logs without registering.
    """

    model_uri: str = ""
    format: str = "onnx"
    out: str = ""
    overwrite: bool = False
    category: str = ""
    data_dir: str = "synthetic"
    seed: int = 0
    register_as: str = ""
    log: bool = False
    parity_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        if not 0 < self.parity_tolerance <= PARITY_TOLERANCE_LIMIT:
            raise ConfigError(
                f"parity_tolerance must be a relative difference above 0 and at most {PARITY_TOLERANCE_LIMIT} "
                f"(beyond it the exported graph computes something else), got {self.parity_tolerance}"
            )
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        if not self.model_uri:
            raise ConfigError(
                "model_uri is required: runs:/<run_id>/detector, models:/<name>/<version>, "
                "models:/<name>@champion or a detector folder"
            )
        if not self.out:
            raise ConfigError("out is required: the folder to write the exported detector into")


def config_defaults(config_class) -> dict:
    """Field name -> default value of a config dataclass (for click and MLproject)."""
    return {field.name: field.default for field in dataclasses.fields(config_class)}
