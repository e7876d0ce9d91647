"""The SSIM autoencoder network of Bergmann et al. (2018).

Only Keras's own layers are used, so a saved model loads in any process
without custom objects.
"""

from __future__ import annotations

import keras

from defectlab.config import ConfigError
from defectlab.methods.ssim.architecture import (
    SSIM_LEAKY_RELU_SLOPE, check_ssim_autoencoder_settings, ssim_autoencoder_encoder_layers,
    ssim_autoencoder_stride,
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
