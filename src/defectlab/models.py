"""Network builders: pure functions that return `keras.Model`.

Only Keras's own layers are used, so a saved model loads in any process
without custom objects.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from defectlab.config import ConfigError

MOBILENET_V2_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
)
MOBILENET_V2_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENET_V2_IMAGENET_SIZES = (96, 128, 160, 192, 224)
EMBEDDING_LAYER = "embedding"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


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
    weights: str, backbone_alpha: float, image_size: int
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
    """
    if weights == "none":
        return None, "none"
    if weights == "imagenet":
        if float(backbone_alpha) not in MOBILENET_V2_IMAGENET_ALPHAS:
            raise ConfigError(
                f"ImageNet weights exist only for backbone_alpha in {MOBILENET_V2_IMAGENET_ALPHAS}, "
                f"got {backbone_alpha}; use weights=none to train from scratch"
            )
        filename = mobilenet_v2_weights_filename(backbone_alpha, image_size)
        cached = keras_cache_dir() / filename
        if cached.is_file():
            return str(cached), "imagenet"
        try:
            downloaded = keras.utils.get_file(
                filename, MOBILENET_V2_WEIGHTS_URL + filename, cache_subdir="models"
            )
        except Exception as error:  # any network failure means the same thing here
            raise WeightsUnavailableError(
                f"ImageNet weights {filename} are not in {keras_cache_dir()} and cannot be "
                f"downloaded ({str(error)[:200] or type(error).__name__}). Copy the file from "
                f"{MOBILENET_V2_WEIGHTS_URL}{filename} into {keras_cache_dir()}/, "
                "or train from scratch with -P weights=none (CLI: --weights none)."
            ) from error
        return str(downloaded), "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (weights must be 'imagenet', 'none' or a file path)"
        )
    return str(path), path.name


def build_l2_softmax_classifier(
    num_classes: int,
    image_size: int,
    backbone_alpha: float = 0.5,
    weights_path: str | None = None,
    softmax_scale: float = 16.0,
) -> keras.Model:
    """MobileNetV2 with an L2-softmax head (Ranjan et al. 2017).

    Input: ``uint8``-range RGB images ``(image_size, image_size, 3)``.
    Pipeline: scale to [-1, 1] (MobileNetV2's preprocessing), MobileNetV2
    without top, global average pooling (the layer named ``embedding``),
    L2 normalisation, multiplication by ``softmax_scale``, dense softmax.
    """
    if num_classes < 2:
        raise ValueError(f"a softmax classifier needs at least 2 classes, got {num_classes}")
    # Input and MobileNetV2 preprocessing
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    scaled_inputs = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inputs)

    # Backbone: its pooled features are the embedding that LOF scores
    backbone = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3),
        alpha=backbone_alpha,
        include_top=False,
        weights=None,
        pooling=None,
    )
    if weights_path is not None:
        backbone.load_weights(weights_path)
    features = backbone(scaled_inputs)
    embedding = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(features)

    # L2-softmax head
    normalized = keras.layers.UnitNormalization(name="l2_normalize")(embedding)
    scaled = keras.layers.Rescaling(softmax_scale, name="softmax_scale")(normalized)
    class_probabilities = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="class_probabilities"
    )(scaled)
    return keras.Model(inputs, class_probabilities, name="l2_softmax_mobilenet_v2")


def embedding_model(classifier: keras.Model) -> keras.Model:
    """The classifier cut at its pooled features (layer ``embedding``)."""
    return keras.Model(
        classifier.inputs, classifier.get_layer(EMBEDDING_LAYER).output, name="embedding_model"
    )


# SSIM autoencoder (Bergmann et al. 2018; MVTec AD, CVPR 2019)
# Each entry: (filters, kernel size, stride) of one encoder convolution.
SSIM_ENCODER_LAYERS = (
    (32, 4, 2),
    (32, 4, 2),
    (32, 3, 1),
    (64, 4, 2),
    (64, 3, 1),
    (128, 4, 2),
    (64, 3, 1),
    (32, 3, 1),
)
# The MVTec AD paper added one strided 4x4 convolution in front for 256 px input,
# so that the bottleneck sees the same 8x8 feature map as the 128 px original.
SSIM_EXTRA_LAYER_FROM_SIZE = 256
SSIM_EXTRA_LAYER = (32, 4, 2)
SSIM_LEAKY_RELU_SLOPE = 0.2


def ssim_autoencoder_encoder_layers(image_size: int) -> tuple:
    """The encoder's (filters, kernel, stride) convolutions for this input size."""
    if image_size >= SSIM_EXTRA_LAYER_FROM_SIZE:
        return (SSIM_EXTRA_LAYER, *SSIM_ENCODER_LAYERS)
    return SSIM_ENCODER_LAYERS


def ssim_autoencoder_stride(image_size: int) -> int:
    """Total stride of the encoder: 16 below 256 px, 32 from 256 px on (the extra layer)."""
    stride = 1
    for _, _, layer_stride in ssim_autoencoder_encoder_layers(image_size):
        stride *= layer_stride
    return stride


def check_ssim_autoencoder_settings(image_size: int, latent_dim: int) -> None:
    """Raise `ConfigError` when the autoencoder cannot be built for these settings.

    Called by `build_ssim_autoencoder` and, before any data is loaded, by the run.
    """
    if latent_dim < 1:
        raise ConfigError(f"latent_dim must be at least 1, got {latent_dim}")
    stride = ssim_autoencoder_stride(image_size)
    if image_size < stride or image_size % stride != 0:
        small_stride = ssim_autoencoder_stride(SSIM_EXTRA_LAYER_FROM_SIZE - 1)
        large_stride = ssim_autoencoder_stride(SSIM_EXTRA_LAYER_FROM_SIZE)
        raise ConfigError(
            f"image_size {image_size} is not divisible by the SSIM autoencoder's total stride "
            f"{stride}: allowed sizes are multiples of {small_stride} below "
            f"{SSIM_EXTRA_LAYER_FROM_SIZE} px and multiples of {large_stride} from "
            f"{SSIM_EXTRA_LAYER_FROM_SIZE} px on (e.g. 32, 64, 96, 128, 192, 256, 320, 512)"
        )


def build_ssim_autoencoder(image_size: int, channels: int = 1, latent_dim: int = 100) -> keras.Model:
    """Convolutional autoencoder of Bergmann et al. (2018), as used in the MVTec AD paper.

    Input: images scaled to [0, 1], shape ``(image_size, image_size, channels)``.
    Output: the reconstruction, same shape, in [0, 1] (sigmoid).

    Encoder: strided 4x4 and stride-1 3x3 convolutions with LeakyReLU(0.2)
    (one more strided 4x4 convolution from 256 px on), then a convolution
    whose kernel covers the whole remaining feature map, giving a latent code
    of ``latent_dim`` numbers (1x1xlatent_dim, linear). Decoder: the mirror
    image with transposed convolutions.

    Raises
    ------
    ConfigError
        ``image_size`` is not a multiple of the encoder's total stride (16, or
        32 from 256 px on) or ``latent_dim < 1``.
    """
    check_ssim_autoencoder_settings(image_size, latent_dim)
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    encoder_layers = ssim_autoencoder_encoder_layers(image_size)
    bottleneck_size = image_size // ssim_autoencoder_stride(image_size)

    # Encoder
    inputs = keras.Input(shape=(image_size, image_size, channels), name="image")
    features = inputs
    for index, (filters, kernel_size, stride) in enumerate(encoder_layers, start=1):
        features = keras.layers.Conv2D(
            filters, kernel_size, strides=stride, padding="same", name=f"encoder_conv_{index}"
        )(features)
        features = keras.layers.LeakyReLU(SSIM_LEAKY_RELU_SLOPE, name=f"encoder_leaky_relu_{index}")(features)
    latent_code = keras.layers.Conv2D(
        latent_dim, bottleneck_size, padding="valid", name="latent_code"
    )(features)

    # Decoder: the encoder in reverse, each convolution transposed
    features = keras.layers.Conv2DTranspose(
        encoder_layers[-1][0], bottleneck_size, padding="valid", name="decoder_from_latent"
    )(latent_code)
    features = keras.layers.LeakyReLU(SSIM_LEAKY_RELU_SLOPE, name="decoder_leaky_relu_0")(features)
    # Mirror: each decoder layer outputs the channel count of the encoder layer before it.
    decoder_filters = [filters for filters, _, _ in encoder_layers[:-1]][::-1]
    mirrored = list(reversed(encoder_layers))
    for index, ((_, kernel_size, stride), filters) in enumerate(zip(mirrored[:-1], decoder_filters), start=1):
        features = keras.layers.Conv2DTranspose(
            filters, kernel_size, strides=stride, padding="same", name=f"decoder_conv_{index}"
        )(features)
        features = keras.layers.LeakyReLU(SSIM_LEAKY_RELU_SLOPE, name=f"decoder_leaky_relu_{index}")(features)
    _, first_kernel_size, first_stride = encoder_layers[0]
    reconstruction = keras.layers.Conv2DTranspose(
        channels, first_kernel_size, strides=first_stride, padding="same",
        activation="sigmoid", dtype="float32", name="reconstruction",
    )(features)
    return keras.Model(inputs, reconstruction, name="ssim_autoencoder")
