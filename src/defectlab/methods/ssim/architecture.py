"""The SSIM autoencoder's layer table and the image sizes it accepts (no Keras needed).

Kept apart from `defectlab.methods.ssim.network` so that `SSIMConfig` can check
the image size at construction without importing TensorFlow.
"""

from __future__ import annotations

from defectlab.config import ConfigError

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
