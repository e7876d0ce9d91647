"""Pretrained backbones shared by the methods: MobileNetV2 weights from Keras's cache or the web.

``weights`` (and the patch method's ``backbone``) settings are resolved here
before any data is loaded, so an offline machine fails in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from defectlab.config import ConfigError
from defectlab.errors import DefectlabError

MOBILENET_V2_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
)
MOBILENET_V2_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENET_V2_IMAGENET_SIZES = (96, 128, 160, 192, 224)
# What Keras's load_weights reads: HDF5 weights (legacy .h5, Keras 3 .weights.h5) or a .keras zip.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
WEIGHTS_FILE_KINDS = {".h5": HDF5_SIGNATURE, ".hdf5": HDF5_SIGNATURE, ".keras": ZIP_SIGNATURE}


class WeightsUnavailableError(DefectlabError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


class WeightsFileError(ConfigError):
    """A ``weights`` file that Keras cannot read as weights."""


def check_weights_file(path: Path) -> None:
    """Raise `WeightsFileError` unless ``path`` is an HDF5 weights file or a ``.keras`` archive.

    Checked from the name and the first bytes, before any data is loaded, so a
    wrong file costs one line instead of a Keras traceback after the dataset.
    """
    expected = "a Keras weights file: HDF5 (.h5, .weights.h5, .hdf5) or a .keras archive"
    suffix = path.suffix.lower()
    if suffix not in WEIGHTS_FILE_KINDS:
        raise WeightsFileError(f"weights file {path} is not {expected} (its suffix is {suffix or 'none'!r})")
    with open(path, "rb") as handle:
        head = handle.read(len(WEIGHTS_FILE_KINDS[suffix]))
    if head != WEIGHTS_FILE_KINDS[suffix]:
        kind = "HDF5" if suffix != ".keras" else "zip (.keras)"
        raise WeightsFileError(
            f"weights file {path} is not {expected}: it does not start like a {kind} file "
            f"(first bytes {head!r})"
        )


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    keras_home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(keras_home) / "models"


def mobilenet_v2_weights_filename(backbone_alpha: float, image_size: int) -> str:
    """Name of Keras's no-top ImageNet weights file for this width and input size."""
    rows = image_size if image_size in MOBILENET_V2_IMAGENET_SIZES else 224
    return (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
        f"{float(backbone_alpha)}_{rows}_no_top.h5"
    )


def resolve_backbone_weights(
    weights: str, backbone_alpha: float, image_size: int,
    offline_alternative: str = "train from scratch with -P weights=none (CLI: --weights none)",
) -> tuple[str | None, str]:
    """Turn the ``weights`` setting into a file for MobileNetV2, before any training.

    Parameters
    ----------
    weights : str
        ``imagenet``, ``none``, or a path to a weights file.

    Returns
    -------
    (weights_path or None, weights_tag)
        ``weights_tag`` is what the run records: ``imagenet``, ``none`` or the
        file's name.

    Raises
    ------
    WeightsUnavailableError
        ImageNet weights are not in Keras's cache and cannot be downloaded; the
        message names the file, where to put it, and ``-P weights=none``.
    FileNotFoundError
        ``weights`` is a path that does not exist.
    WeightsFileError
        ``weights`` is a file that is not a weights file (`check_weights_file`).
    """
    if weights == "none":
        return None, "none"
    if weights == "imagenet":
        if float(backbone_alpha) not in MOBILENET_V2_IMAGENET_ALPHAS:
            raise ConfigError(
                f"ImageNet weights exist only for backbone_alpha in {MOBILENET_V2_IMAGENET_ALPHAS}, "
                f"got {backbone_alpha}; to go without them, {offline_alternative}"
            )
        filename = mobilenet_v2_weights_filename(backbone_alpha, image_size)
        cached = keras_cache_dir() / filename
        if cached.is_file():
            return str(cached), "imagenet"
        import keras

        try:
            downloaded = keras.utils.get_file(
                filename, MOBILENET_V2_WEIGHTS_URL + filename, cache_subdir="models"
            )
        except Exception as error:  # any network failure means the same thing here
            raise WeightsUnavailableError(
                f"ImageNet weights {filename} are not in {keras_cache_dir()} and cannot be "
                f"downloaded ({str(error)[:200] or type(error).__name__}). Copy the file from "
                f"{MOBILENET_V2_WEIGHTS_URL}{filename} into {keras_cache_dir()}/, "
                f"or {offline_alternative}."
            ) from error
        return str(downloaded), "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (weights must be 'imagenet', 'none' or a file path)"
        )
    check_weights_file(path)
    return str(path), path.name
