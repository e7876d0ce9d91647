"""Pixel transforms the defect kinds apply inside a region: what a defect looks like.

CutPaste's colour jitter, the spatial rearrangements and photometric changes
that turn an image or a foreign texture into the texture `perlin_blend`
pastes (`_texture_source`), and the NumPy-only `gaussian_blur` of
`local_blur`. The luma and YIQ matrices the colour changes use live here.
"""

from __future__ import annotations

import math

import numpy as np

# Luma weights (ITU-R BT.601) for saturation changes, and the YIQ transform
# whose chroma plane we rotate to shift hue without touching brightness.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
    dtype=np.float64,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a (height, width, channels) array, borders mirrored.

    NumPy only, so the module needs nothing SciPy; cost grows with
    ``sigma``, which is why `local_blur` blurs just the blob's neighbourhood.

    Parameters
    ----------
    image : numpy.ndarray
        (height, width, channels) array, any numeric dtype.
    sigma : float
        Standard deviation of the kernel in pixels.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    values = image.astype(np.float32)
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        padding = [(0, 0)] * values.ndim
        padding[axis] = (radius, radius)
        padded = np.pad(values, padding, mode="symmetric")
        length = values.shape[axis]
        blurred = np.zeros_like(values)
        for tap_index, weight in enumerate(kernel):
            blurred += weight * np.take(padded, np.arange(tap_index, tap_index + length), axis=axis)
        values = blurred
    return values


def _colour_jitter(pixels: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """CutPaste's colour jitter (brightness, contrast, saturation, hue, each +-``strength``).

    ``pixels`` is a float array whose last axis is channels; saturation and
    hue apply to RGB only. Returns float32, not clipped.
    """
    pixels = pixels.astype(np.float32) * rng.uniform(1 - strength, 1 + strength)
    mean_level = pixels.mean()
    pixels = (pixels - mean_level) * rng.uniform(1 - strength, 1 + strength) + mean_level
    if pixels.shape[-1] == 3:
        grey = (pixels @ _LUMA_WEIGHTS)[..., None]
        pixels = grey + (pixels - grey) * rng.uniform(1 - strength, 1 + strength)
        # A hue jitter of 0.1 turns the hue circle by up to +-36 degrees,
        # done as a rotation of the YIQ chroma plane.
        hue_angle = rng.uniform(-strength, strength) * 2.0 * np.pi
        rotation = np.array(
            [
                [1.0, 0.0, 0.0],
                [0.0, np.cos(hue_angle), -np.sin(hue_angle)],
                [0.0, np.sin(hue_angle), np.cos(hue_angle)],
            ]
        )
        transform = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).astype(np.float32)
        pixels = pixels @ transform.T
    return pixels


def _shuffle_tiles(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut the image into a k x k grid of tiles and put them back in a random order."""
    height, width = image.shape[:2]
    tiles_per_side = int(rng.integers(2, 5))
    tile_height, tile_width = height // tiles_per_side, width // tiles_per_side
    shuffled = image.copy()
    tiles = [
        image[row * tile_height : (row + 1) * tile_height, col * tile_width : (col + 1) * tile_width]
        for row in range(tiles_per_side)
        for col in range(tiles_per_side)
    ]
    for position, tile_index in enumerate(rng.permutation(len(tiles))):
        row, col = divmod(position, tiles_per_side)
        shuffled[
            row * tile_height : (row + 1) * tile_height, col * tile_width : (col + 1) * tile_width
        ] = tiles[tile_index]
    # Rows and columns left over when the size does not divide stay as they were.
    return shuffled


def _rearrange(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random spatial rearrangement: rotation, flip, circular shift or tile shuffle."""
    height, width = image.shape[:2]
    choices = ["rotate_180", "flip_left_right", "flip_up_down", "roll", "shuffle_tiles"]
    if height == width:
        choices.append("rotate_90")  # only square images keep their shape
    choice = choices[int(rng.integers(len(choices)))]
    if choice == "rotate_180":
        return image[::-1, ::-1]
    if choice == "rotate_90":
        return np.rot90(image, k=int(rng.choice([1, 3])))
    if choice == "flip_left_right":
        return image[:, ::-1]
    if choice == "flip_up_down":
        return image[::-1]
    if choice == "roll":
        shift_y = int(rng.integers(height // 4, 3 * height // 4 + 1))
        shift_x = int(rng.integers(width // 4, 3 * width // 4 + 1))
        return np.roll(image, (shift_y, shift_x), axis=(0, 1))
    return _shuffle_tiles(image, rng)


def _photometric_change(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of DRAEM's source augmentations: invert, gamma, brightness-contrast, posterize, solarize, channel swap."""
    choices = ["invert", "gamma", "brightness_contrast", "posterize", "solarize"]
    if values.shape[-1] == 3:
        choices.append("swap_channels")
    choice = choices[int(rng.integers(len(choices)))]
    if choice == "invert":
        return 255.0 - values
    if choice == "gamma":
        gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        return 255.0 * (np.clip(values, 0, 255) / 255.0) ** gamma
    if choice == "brightness_contrast":
        return (values - 127.5) * rng.uniform(0.6, 1.6) + 127.5 + rng.uniform(-40, 40)
    if choice == "posterize":
        dropped_bits = int(rng.integers(3, 6))
        return (np.clip(values, 0, 255).astype(np.uint8) >> dropped_bits << dropped_bits).astype(
            np.float32
        )
    if choice == "solarize":
        threshold = rng.uniform(96, 224)
        return np.where(values >= threshold, 255.0 - values, values)
    return values[..., rng.permutation(3)]


def _texture_source(
    image: np.ndarray, rng: np.random.Generator, source: np.ndarray | None
) -> np.ndarray:
    """The texture `perlin_blend` pastes: an augmented ``source``, or a rearranged copy of ``image``.

    A copy of the image itself must be rearranged spatially (else blending it
    back changes little or nothing); an external source is rearranged only
    sometimes. Either then gets one or two photometric changes, as DRAEM's
    augmented DTD textures do.
    """
    texture = (image if source is None else source).astype(np.float32)
    if source is None or rng.random() < 0.5:
        texture = _rearrange(texture, rng)
    for _ in range(int(rng.integers(1, 3))):
        texture = _photometric_change(texture, rng)
    return np.clip(texture, 0, 255)
