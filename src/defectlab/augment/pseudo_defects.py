"""Pseudo-defects: synthesised anomalies a self-supervised method trains on.

Self-supervised anomaly detectors (CutPaste, DRAEM and their relatives) learn
from good images only, by inventing defects and learning to tell them apart or
to segment them. This module invents those defects. It is deliberately a
different renderer from the one that draws the project's synthetic *test*
defects (``defectlab.data.synthetic``): a method that trains on the generator
it is tested on would be graded on memorising that generator, not on finding
anomalies.

Every defect kind is a function

    ``kind(image, rng, source=None) -> (defective_image, mask)``

taking a ``uint8`` image of shape ``(height, width, channels)`` (``channels``
1 or 3), a `numpy.random.Generator` and an optional second good image of the
same shape to borrow texture from. Two promises hold for every returned pair:

* the mask covers exactly the changed pixels: ``mask[y, x]`` is true if and
  only if some channel of ``defective_image[y, x]`` differs from the original,
  so the image outside the mask is byte-identical to the input;
* the defect is real: at least `minimum_defect_pixels` pixels changed by
  `VISIBLE_DIFFERENCE_LEVELS` grey levels or more. A draw that misses (a blur
  over a flat patch, a stroke the colour of the background) is thrown away and
  drawn again, up to `MAX_ATTEMPTS_PER_DEFECT` times.

`PseudoDefectGenerator` picks kinds at random and adds seeded batches;
`example_grid` draws examples for a run's artifacts. This module needs NumPy
and Matplotlib only (no TensorFlow); the ``tf.data`` adapter lives in
``defectlab.augment.pseudo_defects_tf``.

References
----------
C.-L. Li, K. Sohn, J. Yoon, T. Pfister. "CutPaste: Self-Supervised Learning
for Anomaly Detection and Localization." CVPR 2021.

V. Zavrtanik, M. Kristan, D. Skočaj. "DRAEM - A discriminatively trained
reconstruction embedding for surface anomaly detection." ICCV 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from defectlab.errors import DefectlabError

# A draw is retried this many times before the kind gives up on the image;
# enough for the rare unlucky draw, few enough that a hopeless image (a flat
# grey square for `local_blur`) fails fast.
MAX_ATTEMPTS_PER_DEFECT = 8

# A pixel counts towards "this is a real defect" only when some channel moved
# by at least this many grey levels; a blur that nudges a smooth gradient by
# one level changes pixels but shows nothing a method could learn from.
VISIBLE_DIFFERENCE_LEVELS = 8

# Below this size the defect geometry (minimum scar width, blob radii, Perlin
# cells) stops making sense, whatever `min_image_size` a generator asks for.
SMALLEST_SUPPORTED_IMAGE_SIZE = 8

# CutPaste's scar widths are quoted in pixels of a 256 px image.
CUTPASTE_REFERENCE_IMAGE_SIZE = 256

# Luma weights (ITU-R BT.601) for saturation changes, and the YIQ transform
# whose chroma plane we rotate to shift hue without touching brightness.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
    dtype=np.float64,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


class PseudoDefectError(DefectlabError, ValueError):
    """Bad input to the pseudo-defect generator: a kind name, an image's dtype, shape or size.

    It is a `ValueError` for callers that catch the standard type, and a
    ``DefectlabError`` so the CLI reports it as one line.
    """


class NoVisibleDefectError(PseudoDefectError):
    """A defect kind could not change this image visibly in `MAX_ATTEMPTS_PER_DEFECT` draws."""


DefectKind = Callable[
    [np.ndarray, np.random.Generator, "np.ndarray | None"], "tuple[np.ndarray, np.ndarray]"
]


# --------------------------------------------------------------------------
# Validation and the exact-mask contract
# --------------------------------------------------------------------------


def _check_image(image, name: str = "image") -> None:
    """Raise `PseudoDefectError` unless ``image`` is a uint8 (height, width, 1 or 3) array."""
    if not isinstance(image, np.ndarray):
        raise PseudoDefectError(f"{name} must be a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise PseudoDefectError(
            f"{name} must be uint8 (0-255), got dtype {image.dtype}; "
            "convert with np.clip(x, 0, 255).astype(np.uint8) (scale 0-1 floats by 255 first)"
        )
    if image.ndim != 3:
        raise PseudoDefectError(
            f"{name} must have 3 dimensions (height, width, channels), got shape {image.shape}; "
            "add a channel axis to grayscale images with image[..., None]"
        )
    if image.shape[2] not in (1, 3):
        raise PseudoDefectError(
            f"{name} must have 1 (grayscale) or 3 (RGB) channels, got shape {image.shape}"
        )
    if min(image.shape[:2]) < SMALLEST_SUPPORTED_IMAGE_SIZE:
        raise PseudoDefectError(
            f"{name} is {image.shape[0]}x{image.shape[1]} px; pseudo-defects need at least "
            f"{SMALLEST_SUPPORTED_IMAGE_SIZE}x{SMALLEST_SUPPORTED_IMAGE_SIZE} px"
        )


def _check_source(source, image: np.ndarray) -> None:
    """Raise `PseudoDefectError` unless ``source`` is None or an image shaped like ``image``."""
    if source is None:
        return
    _check_image(source, "source")
    if source.shape != image.shape:
        raise PseudoDefectError(
            f"source must have the same shape as the image, got source {source.shape} "
            f"and image {image.shape}"
        )


def minimum_defect_pixels(height: int, width: int) -> int:
    """Fewest visibly changed pixels that make a draw count as a defect.

    Parameters
    ----------
    height, width : int
        Image size in pixels.

    Returns
    -------
    int
        0.1 % of the image, and never fewer than 8 pixels, so a 64 px image
        needs 8 and a 256 px image 66.
    """
    return max(8, math.ceil(0.001 * height * width))


def _composite_and_exact_mask(
    original: np.ndarray, candidate: np.ndarray, region: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Take ``candidate`` inside ``region`` and ``original`` elsewhere; mask what really changed.

    ``candidate`` may be float; it is rounded and clipped to uint8 *before*
    the comparison, so a pixel whose change rounds away is not in the mask.
    """
    candidate_bytes = np.clip(np.rint(candidate), 0, 255).astype(np.uint8)
    defective = np.where(region[..., None], candidate_bytes, original)
    # Outside `region` defective == original by construction, so the changed
    # pixels are exactly `region & changed`.
    mask = np.any(defective != original, axis=-1)
    return defective, mask


def _count_visible_pixels(original: np.ndarray, defective: np.ndarray) -> int:
    """Pixels where some channel moved by at least `VISIBLE_DIFFERENCE_LEVELS`."""
    difference = np.abs(defective.astype(np.int16) - original.astype(np.int16))
    return int(np.count_nonzero(difference.max(axis=-1) >= VISIBLE_DIFFERENCE_LEVELS))


def _draw_until_visible(
    kind_name: str,
    draw_once: Callable[[np.ndarray, np.random.Generator, "np.ndarray | None"], tuple],
    image: np.ndarray,
    rng: np.random.Generator,
    source: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run one kind's ``draw_once`` until it yields a real defect, and enforce the mask contract."""
    _check_image(image)
    _check_source(source, image)
    if not isinstance(rng, np.random.Generator):
        raise PseudoDefectError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    height, width = image.shape[:2]
    needed_pixels = minimum_defect_pixels(height, width)
    for _attempt in range(MAX_ATTEMPTS_PER_DEFECT):
        candidate, region = draw_once(image, rng, source)
        defective, mask = _composite_and_exact_mask(image, candidate, region)
        if _count_visible_pixels(image, defective) >= needed_pixels:
            return defective, mask
    raise NoVisibleDefectError(
        f"{kind_name}: no visible defect (>= {needed_pixels} pixels changed by "
        f">= {VISIBLE_DIFFERENCE_LEVELS} levels) in {MAX_ATTEMPTS_PER_DEFECT} draws on an "
        f"image of shape {image.shape}; the image is probably too uniform for this kind"
    )


# --------------------------------------------------------------------------
# Noise and region shapes
# --------------------------------------------------------------------------


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3: smooth value and slope at cell borders."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _gradient_noise_octave(
    height: int, width: int, cells_y: int, cells_x: int, rng: np.random.Generator
) -> np.ndarray:
    """One octave of 2-D gradient (Perlin) noise over a grid of ``cells_y`` x ``cells_x`` cells."""
    # A random unit gradient at every lattice corner; the noise is 0 at the
    # corners and rises or falls along each gradient in between.
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(cells_y + 1, cells_x + 1))
    gradient_y, gradient_x = np.sin(angles), np.cos(angles)
    # Pixel centres in lattice units; works for any size, no divisibility needed.
    ys = (np.arange(height) + 0.5) * (cells_y / height)
    xs = (np.arange(width) + 0.5) * (cells_x / width)
    cell_y = np.minimum(np.floor(ys).astype(np.int64), cells_y - 1)
    cell_x = np.minimum(np.floor(xs).astype(np.int64), cells_x - 1)
    offset_y = (ys - cell_y)[:, None]
    offset_x = (xs - cell_x)[None, :]

    def corner_contribution(corner_y: int, corner_x: int) -> np.ndarray:
        rows = (cell_y + corner_y)[:, None]
        columns = (cell_x + corner_x)[None, :]
        return gradient_y[rows, columns] * (offset_y - corner_y) + gradient_x[rows, columns] * (
            offset_x - corner_x
        )

    weight_y, weight_x = _fade(offset_y), _fade(offset_x)
    top = corner_contribution(0, 0) * (1 - weight_x) + corner_contribution(0, 1) * weight_x
    bottom = corner_contribution(1, 0) * (1 - weight_x) + corner_contribution(1, 1) * weight_x
    # sqrt(2) stretches the theoretical range (+-sqrt(0.5)) to about +-1.
    return (top * (1 - weight_y) + bottom * weight_y) * np.sqrt(2.0)


def perlin_noise(
    shape: tuple[int, int],
    rng: np.random.Generator,
    cells: tuple[int, int] = (4, 4),
    octaves: int = 1,
    persistence: float = 0.5,
) -> np.ndarray:
    """Fractal 2-D gradient (Perlin) noise, seeded entirely by ``rng``.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` of the noise field.
    rng : numpy.random.Generator
        Source of the lattice gradients.
    cells : tuple of int
        Lattice cells along ``(height, width)`` of the coarsest octave; more
        cells, smaller features.
    octaves : int
        Number of octaves summed; each doubles the cells of the one before.
    persistence : float
        Amplitude of each octave relative to the one before.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``, values roughly in [-1, 1].
    """
    height, width = shape
    cells_y, cells_x = (max(1, int(c)) for c in cells)
    total = np.zeros((height, width), dtype=np.float64)
    amplitude, amplitude_sum = 1.0, 0.0
    for octave in range(max(1, int(octaves))):
        scale = 2**octave
        total += amplitude * _gradient_noise_octave(
            height, width, cells_y * scale, cells_x * scale, rng
        )
        amplitude_sum += amplitude
        amplitude *= persistence
    return (total / amplitude_sum).astype(np.float32)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    coverage_range: tuple[float, float] = (0.03, 0.3),
) -> np.ndarray:
    """A DRAEM-style anomaly region: Perlin noise thresholded into irregular blobs.

    DRAEM draws the lattice scale of each axis independently from powers of
    two, which gives anything from one large smooth blob to many thin
    streaks. Instead of its fixed threshold (which sometimes leaves nothing)
    the threshold here is the quantile that covers a random fraction of the
    image, so the region is never empty.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)``.
    rng : numpy.random.Generator
        Source of randomness.
    coverage_range : tuple of float
        Range of the fraction of the image the region covers.

    Returns
    -------
    numpy.ndarray
        bool array of ``shape``.
    """
    height, width = shape
    # Finest lattice cells stay at least ~8 px wide so a 64 px image gets
    # blobs, not salt-and-pepper noise; DRAEM's 2**0..2**6 range is for 256 px.
    largest_exponent = max(1, int(math.log2(max(2, min(height, width) // 8))))
    cells_y = 2 ** int(rng.integers(0, largest_exponent + 1))
    cells_x = 2 ** int(rng.integers(0, largest_exponent + 1))
    finest_cells = 2**largest_exponent
    room_for_octaves = int(math.log2(finest_cells / max(cells_y, cells_x))) + 1
    octaves = int(rng.integers(1, min(3, room_for_octaves) + 1))
    noise = perlin_noise((height, width), rng, (cells_y, cells_x), octaves=octaves)
    coverage = rng.uniform(*coverage_range)
    threshold = np.quantile(noise, 1.0 - coverage)
    return noise > threshold


def blob_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    radius_fraction_range: tuple[float, float] = (0.06, 0.2),
    wobble: float = 0.45,
) -> np.ndarray:
    """One irregular blob: a rotated ellipse whose outline is bent by low-frequency noise.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)``.
    rng : numpy.random.Generator
        Source of randomness.
    radius_fraction_range : tuple of float
        Range of each ellipse semi-axis, as a fraction of the shorter image side.
    wobble : float
        How far noise moves the outline, in units of the semi-axes; 0 is a
        clean ellipse, and below 1 the blob always contains its centre.

    Returns
    -------
    numpy.ndarray
        bool array of ``shape``, never empty.
    """
    height, width = shape
    shorter_side = min(height, width)
    radius_y, radius_x = np.maximum(rng.uniform(*radius_fraction_range, size=2) * shorter_side, 2.0)
    largest_radius = max(radius_y, radius_x)
    centre_y = rng.uniform(min(largest_radius, height / 2), max(height - largest_radius, height / 2))
    centre_x = rng.uniform(min(largest_radius, width / 2), max(width - largest_radius, width / 2))
    angle = rng.uniform(0.0, np.pi)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    delta_y, delta_x = rows - centre_y, columns - centre_x
    along = (delta_y * np.cos(angle) + delta_x * np.sin(angle)) / radius_y
    across = (-delta_y * np.sin(angle) + delta_x * np.cos(angle)) / radius_x
    distance = np.sqrt(along**2 + across**2)
    # About one noise cell per blob radius: the outline bulges a few times
    # around the blob instead of becoming fringed.
    mean_radius = (radius_y + radius_x) / 2
    cells = (max(2, round(height / mean_radius)), max(2, round(width / mean_radius)))
    outline_noise = perlin_noise((height, width), rng, cells, octaves=2)
    region = distance + wobble * outline_noise < 1.0
    if not region.any():  # only if the noise overshoots; keep the promise anyway
        region[min(int(centre_y), height - 1), min(int(centre_x), width - 1)] = True
    return region


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


# --------------------------------------------------------------------------
# Colour helpers
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Defect kinds
# --------------------------------------------------------------------------


def _paste_rotated_rectangle(
    image: np.ndarray,
    rng: np.random.Generator,
    patch_height: int,
    patch_width: int,
    angle: float,
    jitter_colours: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut an axis-aligned patch, optionally jitter its colours, rotate it and paste it elsewhere.

    Pasting maps every target pixel back into the patch (nearest neighbour),
    so a rotated patch has no holes; with ``angle == 0`` and an integer
    target corner it is an exact copy.
    """
    height, width = image.shape[:2]
    patch_height = int(min(max(patch_height, 1), height))
    patch_width = int(min(max(patch_width, 1), width))
    source_top = int(rng.integers(0, height - patch_height + 1))
    source_left = int(rng.integers(0, width - patch_width + 1))
    patch = image[
        source_top : source_top + patch_height, source_left : source_left + patch_width
    ].astype(np.float32)
    if jitter_colours:
        patch = _colour_jitter(patch, rng)

    cos_angle, sin_angle = math.cos(angle), math.sin(angle)
    # Half extents of the rotated patch's bounding box: where its centre may go.
    half_extent_y = (patch_height * abs(cos_angle) + patch_width * abs(sin_angle)) / 2
    half_extent_x = (patch_height * abs(sin_angle) + patch_width * abs(cos_angle)) / 2
    source_centre = (source_top + patch_height / 2, source_left + patch_width / 2)
    # "Elsewhere": prefer a target that does not sit on the source; a patch
    # pasted onto itself changes nothing and would waste the draw.
    for _ in range(4):
        if angle == 0.0:
            target_centre_y = int(rng.integers(0, height - patch_height + 1)) + patch_height / 2
            target_centre_x = int(rng.integers(0, width - patch_width + 1)) + patch_width / 2
        else:
            target_centre_y = rng.uniform(
                min(half_extent_y, height / 2), max(height - half_extent_y, height / 2)
            )
            target_centre_x = rng.uniform(
                min(half_extent_x, width / 2), max(width - half_extent_x, width / 2)
            )
        if (
            abs(target_centre_y - source_centre[0]) >= half_extent_y / 2
            or abs(target_centre_x - source_centre[1]) >= half_extent_x / 2
        ):
            break

    top = max(0, int(math.floor(target_centre_y - half_extent_y)))
    bottom = min(height, int(math.ceil(target_centre_y + half_extent_y)))
    left = max(0, int(math.floor(target_centre_x - half_extent_x)))
    right = min(width, int(math.ceil(target_centre_x + half_extent_x)))
    rows, columns = np.mgrid[top:bottom, left:right].astype(np.float64) + 0.5
    delta_y, delta_x = rows - target_centre_y, columns - target_centre_x
    # Undo the rotation: target offset -> patch coordinates.
    patch_row = cos_angle * delta_y + sin_angle * delta_x + patch_height / 2
    patch_column = -sin_angle * delta_y + cos_angle * delta_x + patch_width / 2
    inside = (patch_row >= 0) & (patch_row < patch_height) & (patch_column >= 0) & (
        patch_column < patch_width
    )
    patch_row_index = np.clip(np.floor(patch_row).astype(np.int64), 0, patch_height - 1)
    patch_column_index = np.clip(np.floor(patch_column).astype(np.int64), 0, patch_width - 1)

    candidate = image.astype(np.float32)
    region = np.zeros((height, width), dtype=bool)
    window = candidate[top:bottom, left:right]
    window[inside] = patch[patch_row_index[inside], patch_column_index[inside]]
    region[top:bottom, left:right] = inside
    return candidate, region


def _draw_cutpaste(image, rng, source):
    height, width = image.shape[:2]
    area = rng.uniform(0.02, 0.15) * height * width
    # Log-uniform aspect ratio, so tall and wide patches are equally likely.
    aspect_ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
    patch_height = round(math.sqrt(area * aspect_ratio))
    patch_width = round(math.sqrt(area / aspect_ratio))
    return _paste_rotated_rectangle(
        image, rng, patch_height, patch_width, angle=0.0, jitter_colours=rng.random() < 0.5
    )


def cutpaste(
    image: np.ndarray, rng: np.random.Generator, source: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste: a rectangle of the image cut out and pasted at another place.

    The patch covers 2-15 % of the image with an aspect ratio of 0.3-3.3
    (log-uniform) and has its colours jittered half of the time (Li et al.,
    CVPR 2021). It comes from the image itself, as in the paper: the defect
    is a misplaced piece of the object's own texture, which a colour
    histogram alone cannot give away.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (height, width, channels), channels 1 or 3.
    rng : numpy.random.Generator
        Source of every random choice.
    source : numpy.ndarray or None
        Ignored (accepted for the common kind signature).

    Returns
    -------
    defective_image : numpy.ndarray
        uint8, same shape as ``image``; equal to it outside ``mask``.
    mask : numpy.ndarray
        bool (height, width), exactly the changed pixels.

    Raises
    ------
    PseudoDefectError
        ``image`` is not a uint8 (height, width, 1 or 3) array.
    NoVisibleDefectError
        No draw changed the image visibly (a near-constant image).
    """
    return _draw_until_visible("cutpaste", _draw_cutpaste, image, rng, source)


def _draw_scar(image, rng, source):
    shorter_side = min(image.shape[:2])
    scale = shorter_side / CUTPASTE_REFERENCE_IMAGE_SIZE
    # Two pixels at least: a one-pixel scar at 64 px is mostly aliasing.
    scar_width = max(2, round(rng.uniform(2, 16) * scale))
    scar_length = max(scar_width + 2, round(rng.uniform(0.10, 0.25) * shorter_side))
    angle = rng.uniform(0.0, np.pi)
    return _paste_rotated_rectangle(
        image, rng, scar_length, scar_width, angle=angle, jitter_colours=rng.random() < 0.5
    )


def scar(
    image: np.ndarray, rng: np.random.Generator, source: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-Scar: a long thin rectangle of the image, rotated and pasted elsewhere.

    Width is 2-16 px at 256 px (scaled to the image, never under 2 px),
    length 10-25 % of the shorter side, any rotation; colours jittered half
    of the time. It imitates scratches and cracks.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (height, width, channels), channels 1 or 3.
    rng : numpy.random.Generator
        Source of every random choice.
    source : numpy.ndarray or None
        Ignored (accepted for the common kind signature).

    Returns
    -------
    defective_image : numpy.ndarray
        uint8, same shape as ``image``; equal to it outside ``mask``.
    mask : numpy.ndarray
        bool (height, width), exactly the changed pixels.

    Raises
    ------
    PseudoDefectError
        ``image`` is not a uint8 (height, width, 1 or 3) array.
    NoVisibleDefectError
        No draw changed the image visibly.
    """
    return _draw_until_visible("scar", _draw_scar, image, rng, source)


def _draw_perlin_blend(image, rng, source):
    region = perlin_mask(image.shape[:2], rng)
    texture = _texture_source(image, rng, source)
    opacity = rng.uniform(0.5, 1.0)
    candidate = (1.0 - opacity) * image.astype(np.float32) + opacity * texture
    return candidate, region


def perlin_blend(
    image: np.ndarray, rng: np.random.Generator, source: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM: a thresholded Perlin-noise region filled with a blended foreign texture.

    Inside the region the image becomes ``(1 - opacity) * image + opacity *
    texture`` with opacity 0.5-1 (Zavrtanik et al., ICCV 2021). The texture is
    ``source`` (another good image, or any texture) after one or two random
    photometric changes and sometimes a spatial rearrangement; without a
    source it is the image itself, always rearranged (rotated, flipped,
    shifted or tile-shuffled) and changed photometrically (inverted, gamma,
    posterized...), so the defect is out-of-place structure, not just colour.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (height, width, channels), channels 1 or 3.
    rng : numpy.random.Generator
        Source of every random choice.
    source : numpy.ndarray or None
        uint8 image of the same shape to take texture from, or None.

    Returns
    -------
    defective_image : numpy.ndarray
        uint8, same shape as ``image``; equal to it outside ``mask``.
    mask : numpy.ndarray
        bool (height, width), exactly the changed pixels.

    Raises
    ------
    PseudoDefectError
        ``image`` or ``source`` is not a uint8 (height, width, 1 or 3) array,
        or their shapes differ.
    NoVisibleDefectError
        No draw changed the image visibly.
    """
    return _draw_until_visible("perlin_blend", _draw_perlin_blend, image, rng, source)


def _bounding_box(region: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.flatnonzero(region.any(axis=1))
    columns = np.flatnonzero(region.any(axis=0))
    height, width = region.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
        slice(max(0, columns[0] - margin), min(width, columns[-1] + 1 + margin)),
    )


def _draw_local_blur(image, rng, source):
    region = blob_mask(image.shape[:2], rng, radius_fraction_range=(0.08, 0.22))
    # "Strongly": sigma of 2.5-6 % of the image (1.6-3.8 px at 64 px), so
    # texture inside the blob is washed out, like an out-of-focus or smeared spot.
    sigma = max(1.5, rng.uniform(0.025, 0.06) * min(image.shape[:2]))
    # Blur only the blob's neighbourhood (plus the kernel's reach, so pixels
    # at the blob's edge see real image content, not padding).
    rows, columns = _bounding_box(region, margin=int(math.ceil(3 * sigma)))
    candidate = image.astype(np.float32)
    candidate[rows, columns] = gaussian_blur(image[rows, columns], sigma)
    return candidate, region


def local_blur(
    image: np.ndarray, rng: np.random.Generator, source: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob of the image blurred strongly (Gaussian, sigma 2.5-6 % of the size).

    Only textured areas change visibly, so draws over flat areas are retried
    elsewhere; a completely flat image raises `NoVisibleDefectError`.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (height, width, channels), channels 1 or 3.
    rng : numpy.random.Generator
        Source of every random choice.
    source : numpy.ndarray or None
        Ignored (accepted for the common kind signature).

    Returns
    -------
    defective_image : numpy.ndarray
        uint8, same shape as ``image``; equal to it outside ``mask``.
    mask : numpy.ndarray
        bool (height, width), exactly the changed pixels.

    Raises
    ------
    PseudoDefectError
        ``image`` is not a uint8 (height, width, 1 or 3) array.
    NoVisibleDefectError
        No draw changed the image visibly (a flat image).
    """
    return _draw_until_visible("local_blur", _draw_local_blur, image, rng, source)


def _draw_colour_shift(image, rng, source):
    region = blob_mask(image.shape[:2], rng)
    values = image.astype(np.float32)
    channels = image.shape[2]
    if rng.random() < 0.5:
        # Additive: a random direction in colour space (a tint) plus a
        # brightness change, 20-60 levels in all; a grayscale image gets the
        # brightness part only.
        magnitude = rng.uniform(20, 60)
        if channels == 3:
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction) + 1e-9
            shift = direction * magnitude * rng.uniform(0.3, 1.0)
            shift += rng.choice([-1.0, 1.0]) * magnitude * rng.uniform(0.3, 1.0)
        else:
            shift = np.array([rng.choice([-1.0, 1.0]) * magnitude])
        candidate = values + shift.astype(np.float32)
    else:
        # Multiplicative: per-channel gains (a stain, a discolouration) that
        # keep dark pixels dark; grayscale gets one gain well away from 1.
        if channels == 3:
            gains = rng.uniform(0.55, 1.45, size=3)
        else:
            gains = np.array([rng.choice([rng.uniform(0.55, 0.8), rng.uniform(1.25, 1.6)])])
        candidate = values * gains.astype(np.float32)
    return candidate, region


def colour_shift(
    image: np.ndarray, rng: np.random.Generator, source: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob whose colour or brightness is shifted (a stain, a discolouration).

    Half of the draws add a tint plus brightness offset of 20-60 levels, the
    other half multiply channels by gains of 0.55-1.45; grayscale images get
    brightness changes only. Pixels that clip at 0 or 255 and so do not
    change drop out of the mask.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (height, width, channels), channels 1 or 3.
    rng : numpy.random.Generator
        Source of every random choice.
    source : numpy.ndarray or None
        Ignored (accepted for the common kind signature).

    Returns
    -------
    defective_image : numpy.ndarray
        uint8, same shape as ``image``; equal to it outside ``mask``.
    mask : numpy.ndarray
        bool (height, width), exactly the changed pixels.

    Raises
    ------
    PseudoDefectError
        ``image`` is not a uint8 (height, width, 1 or 3) array.
    NoVisibleDefectError
        No draw changed the image visibly (e.g. an all-black image).
    """
    return _draw_until_visible("colour_shift", _draw_colour_shift, image, rng, source)


def _distance_to_polyline(
    rows: np.ndarray, columns: np.ndarray, points: np.ndarray
) -> np.ndarray:
    """Distance from every (row, column) to the nearest segment of a polyline of ``points``."""
    nearest = np.full(rows.shape, np.inf, dtype=np.float64)
    for start, end in zip(points[:-1], points[1:]):
        segment = end - start
        length_squared = float(segment @ segment) or 1e-12
        # Position of the closest point along the segment, clamped to its ends.
        t = np.clip(((rows - start[0]) * segment[0] + (columns - start[1]) * segment[1]) / length_squared, 0, 1)
        distance = np.hypot(rows - (start[0] + t * segment[0]), columns - (start[1] + t * segment[1]))
        nearest = np.minimum(nearest, distance)
    return nearest


def _draw_stroke(image, rng, source):
    height, width, channels = image.shape
    shorter_side = min(height, width)
    point_count = int(rng.integers(4, 10))
    step = rng.uniform(0.06, 0.15) * shorter_side
    heading = rng.uniform(0.0, 2.0 * np.pi)
    # Start in the middle 60 % so the stroke does not hug a border or a corner.
    points = [np.array([rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width])]
    for _ in range(point_count - 1):
        # A gently turning random walk: a curve, not a zig-zag.
        heading += rng.normal(0.0, 0.6)
        next_point = points[-1] + step * np.array([math.sin(heading), math.cos(heading)])
        # Bounce off the borders (mirror the heading, then step again) so the
        # stroke stays in view instead of piling up along the edge.
        if not 0 <= next_point[0] < height:
            heading = -heading
        if not 0 <= next_point[1] < width:
            heading = np.pi - heading
        next_point = points[-1] + step * np.array([math.sin(heading), math.cos(heading)])
        points.append(np.clip(next_point, [0, 0], [height - 1, width - 1]))
    points = np.array(points)
    stroke_width = rng.uniform(1.5, max(2.0, 0.04 * shorter_side))

    reach = stroke_width / 2 + 1
    top = max(0, int(points[:, 0].min() - reach))
    bottom = min(height, int(math.ceil(points[:, 0].max() + reach)) + 1)
    left = max(0, int(points[:, 1].min() - reach))
    right = min(width, int(math.ceil(points[:, 1].max() + reach)) + 1)
    rows, columns = np.mgrid[top:bottom, left:right].astype(np.float64) + 0.5
    on_stroke = _distance_to_polyline(rows, columns, points) <= stroke_width / 2

    # A dark, bright or arbitrary paint with a little grain, so it reads as a
    # foreign object (hair, fibre, ink) rather than a flat drawing.
    palette = rng.random()
    if palette < 0.35:
        colour = rng.uniform(0, 60, size=channels)
    elif palette < 0.7:
        colour = rng.uniform(195, 255, size=channels)
    else:
        colour = rng.uniform(0, 255, size=channels)
    if channels == 3 and rng.random() < 0.5:
        colour = np.full(3, colour.mean())  # many real contaminants are grey
    paint = colour + rng.normal(0.0, 6.0, size=(int(on_stroke.sum()), channels))

    candidate = image.astype(np.float32)
    region = np.zeros((height, width), dtype=bool)
    candidate[top:bottom, left:right][on_stroke] = paint
    region[top:bottom, left:right] = on_stroke
    return candidate, region


def stroke(
    image: np.ndarray, rng: np.random.Generator, source: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An occluding curved stroke: a polyline of random width and colour painted over the image.

    The line is a gently turning random walk of 4-9 points, 1.5 px to 4 % of
    the image wide, painted dark, bright or any colour with slight grain;
    it imitates hairs, fibres and ink marks.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (height, width, channels), channels 1 or 3.
    rng : numpy.random.Generator
        Source of every random choice.
    source : numpy.ndarray or None
        Ignored (accepted for the common kind signature).

    Returns
    -------
    defective_image : numpy.ndarray
        uint8, same shape as ``image``; equal to it outside ``mask``.
    mask : numpy.ndarray
        bool (height, width), exactly the changed pixels.

    Raises
    ------
    PseudoDefectError
        ``image`` is not a uint8 (height, width, 1 or 3) array.
    NoVisibleDefectError
        No draw changed the image visibly.
    """
    return _draw_until_visible("stroke", _draw_stroke, image, rng, source)


DEFECT_KINDS: dict[str, DefectKind] = {
    "cutpaste": cutpaste,
    "scar": scar,
    "perlin_blend": perlin_blend,
    "local_blur": local_blur,
    "colour_shift": colour_shift,
    "stroke": stroke,
}
DEFAULT_KINDS: tuple[str, ...] = tuple(DEFECT_KINDS)


# --------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------


def _check_batch(images, name: str = "images") -> None:
    """Raise `PseudoDefectError` unless ``images`` is a non-empty uint8 (n, height, width, 1 or 3) array."""
    if not isinstance(images, np.ndarray):
        raise PseudoDefectError(f"{name} must be a NumPy array, got {type(images).__name__}")
    if images.ndim != 4:
        raise PseudoDefectError(
            f"{name} must have 4 dimensions (count, height, width, channels), got shape {images.shape}"
        )
    if len(images) == 0:
        raise PseudoDefectError(f"{name} is empty (shape {images.shape}); pass at least one image")
    _check_image(images[0], f"{name}[0]")  # dtype and channels are shared by the whole array


def derive_seed(*keys: int) -> int:
    """Mix several non-negative integers into one seed, e.g. ``(seed, epoch, batch_index)``.

    Parameters
    ----------
    *keys : int
        Non-negative integers; their order matters.

    Returns
    -------
    int
        A seed in [0, 2**63), the same for the same keys on every platform
        (it comes from `numpy.random.SeedSequence`), and unrelated for
        different keys, unlike sums or products that collide.
    """
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class PseudoDefectGenerator:
    """Draws pseudo-defects of randomly chosen kinds, reproducibly.

    Parameters
    ----------
    kinds : sequence of str
        Names from `DEFECT_KINDS` to choose from, uniformly; a single name is
        accepted too. Default: all of them.
    seed : int
        Seed of `synthesise` calls that pass no ``rng``, and of `batch`
        calls that pass no ``seed``.
    min_image_size : int
        Smallest accepted height and width in pixels; smaller images raise
        `PseudoDefectError` instead of producing defects out of proportion.

    Raises
    ------
    PseudoDefectError
        Unknown kind names (the message lists the valid ones), no kinds, a
        negative seed or a ``min_image_size`` below
        `SMALLEST_SUPPORTED_IMAGE_SIZE`.

    Examples
    --------
    >>> generator = PseudoDefectGenerator(kinds=("cutpaste", "perlin_blend"), seed=3)
    >>> images, masks, kinds = generator.batch(good_images, seed=epoch)  # doctest: +SKIP
    """

    kinds: Sequence[str] = DEFAULT_KINDS
    seed: int = 0
    min_image_size: int = 32
    _default_rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        if not kinds:
            raise PseudoDefectError(
                f"kinds is empty; choose at least one of: {', '.join(DEFECT_KINDS)}"
            )
        unknown = [kind for kind in kinds if kind not in DEFECT_KINDS]
        if unknown:
            raise PseudoDefectError(
                f"unknown pseudo-defect kind(s) {', '.join(map(repr, unknown))}; "
                f"valid kinds: {', '.join(DEFECT_KINDS)}"
            )
        self.kinds = kinds
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise PseudoDefectError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.seed = int(self.seed)
        if (
            isinstance(self.min_image_size, bool)
            or not isinstance(self.min_image_size, (int, np.integer))
            or self.min_image_size < SMALLEST_SUPPORTED_IMAGE_SIZE
        ):
            raise PseudoDefectError(
                f"min_image_size must be an integer >= {SMALLEST_SUPPORTED_IMAGE_SIZE}, "
                f"got {self.min_image_size!r}"
            )
        self._default_rng = np.random.default_rng(self.seed)

    def _check_size(self, height: int, width: int, name: str) -> None:
        if min(height, width) < self.min_image_size:
            raise PseudoDefectError(
                f"{name} is {height}x{width} px, smaller than the minimum "
                f"{self.min_image_size}x{self.min_image_size} px (min_image_size={self.min_image_size}); "
                "use larger images or lower min_image_size"
            )

    def check_images(self, images: np.ndarray, sources: np.ndarray | None = None) -> None:
        """Validate a batch (and its sources) up front, as `batch` would.

        Parameters
        ----------
        images : numpy.ndarray
            uint8 (count, height, width, channels), channels 1 or 3.
        sources : numpy.ndarray or None
            uint8 (source count, height, width, channels), or None.

        Raises
        ------
        PseudoDefectError
            Wrong type, dtype, number of dimensions or channels, an image
            below ``min_image_size``, or sources shaped unlike the images.
        """
        _check_batch(images, "images")
        self._check_size(images.shape[1], images.shape[2], "images")
        if sources is not None:
            _check_batch(sources, "sources")
            if sources.shape[1:] != images.shape[1:]:
                raise PseudoDefectError(
                    f"sources must be shaped (count, {', '.join(map(str, images.shape[1:]))}) "
                    f"like the images, got {sources.shape}"
                )

    def synthesise(
        self,
        image: np.ndarray,
        rng: np.random.Generator | None = None,
        source: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """One pseudo-defect of a randomly chosen kind.

        If the chosen kind cannot change this image visibly (a blur on a
        flat image), the other kinds are tried in random order, so only an
        image no kind can mark raises.

        Parameters
        ----------
        image : numpy.ndarray
            uint8 (height, width, channels), channels 1 or 3.
        rng : numpy.random.Generator or None
            Source of randomness; None uses the generator's own stream,
            seeded by ``seed`` (each call then continues that stream).
        source : numpy.ndarray or None
            Texture for `perlin_blend`, uint8 and shaped like ``image``.

        Returns
        -------
        defective_image : numpy.ndarray
            uint8, same shape as ``image``; equal to it outside ``mask``.
        mask : numpy.ndarray
            bool (height, width), exactly the changed pixels, never empty.
        kind : str
            Name of the kind that made the defect.

        Raises
        ------
        PseudoDefectError
            Invalid ``image`` or ``source`` (see `check_images`).
        NoVisibleDefectError
            No allowed kind could change the image visibly.
        """
        _check_image(image)
        self._check_size(image.shape[0], image.shape[1], "image")
        _check_source(source, image)
        rng = self._default_rng if rng is None else rng
        first_choice = int(rng.integers(len(self.kinds)))
        fallbacks = [self.kinds[i] for i in rng.permutation(len(self.kinds)) if i != first_choice]
        for kind in [self.kinds[first_choice], *fallbacks]:
            try:
                defective, mask = DEFECT_KINDS[kind](image, rng, source)
            except NoVisibleDefectError:
                continue
            return defective, mask, kind
        raise NoVisibleDefectError(
            f"none of the kinds {', '.join(self.kinds)} could change this image of shape "
            f"{image.shape} visibly; is it (nearly) constant?"
        )

    __call__ = synthesise

    def batch(
        self,
        images: np.ndarray,
        seed: int | None = None,
        sources: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """A pseudo-defect for every image of a batch, determined by ``seed`` alone.

        Image ``i`` gets its own random stream derived from ``(seed, i)``, so
        the output depends only on the seed and the inputs, not on earlier
        calls, and the same seed always gives identical bytes.

        Parameters
        ----------
        images : numpy.ndarray
            uint8 (count, height, width, channels), channels 1 or 3.
        seed : int or None
            Non-negative seed; None uses the generator's ``seed``. Vary it
            per epoch to see new defects.
        sources : numpy.ndarray or None
            uint8 (source count, height, width, channels): textures for
            `perlin_blend`, one drawn at random per image; None makes it use
            rearranged copies of each image itself.

        Returns
        -------
        defective_images : numpy.ndarray
            uint8, same shape as ``images``.
        masks : numpy.ndarray
            bool (count, height, width).
        kinds : tuple of str
            Kind name of every defect.

        Raises
        ------
        PseudoDefectError
            Invalid ``images``, ``sources`` or ``seed`` (see `check_images`).
        NoVisibleDefectError
            Some image could not be marked by any allowed kind.
        """
        self.check_images(images, sources)
        seed = self.seed if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PseudoDefectError(f"seed must be a non-negative integer, got {seed!r}")
        defective_images = np.empty_like(images)
        masks = np.empty(images.shape[:3], dtype=bool)
        kinds = []
        for index, image in enumerate(images):
            rng = np.random.default_rng([int(seed), index])
            source = None if sources is None else sources[int(rng.integers(len(sources)))]
            defective_images[index], masks[index], kind = self.synthesise(image, rng, source)
            kinds.append(kind)
        return defective_images, masks, tuple(kinds)


# --------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------


def example_grid(
    images: np.ndarray,
    masks: np.ndarray,
    kinds: Sequence[str],
    columns: int = 4,
    max_examples: int = 16,
    title: str = "Pseudo-defects (training)",
):
    """A figure of pseudo-defects: each example plain and with its mask outlined.

    Meant for the run artifact ``training/pseudo_defects.png``. Showing the
    plain image next to the outlined one lets a reader judge whether a
    defect is visible at all, which the outline would otherwise hide.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 (count, height, width, channels), channels 1 or 3.
    masks : numpy.ndarray
        bool (count, height, width).
    kinds : sequence of str
        Kind name per example (the panel titles).
    columns : int
        Examples per row (each takes two panels).
    max_examples : int
        Only the first this many examples are drawn.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        A figure on the Agg canvas; it does no I/O and touches no pyplot
        state, so it never opens a window. Save it with ``savefig`` or log it.

    Raises
    ------
    PseudoDefectError
        Images, masks and kinds do not describe the same examples.
    """
    # Imported here so that importing the module (e.g. in a data pipeline)
    # does not load Matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_batch(images, "images")
    masks = np.asarray(masks, dtype=bool)
    if masks.shape != images.shape[:3]:
        raise PseudoDefectError(
            f"masks must be shaped {images.shape[:3]} like the images, got {masks.shape}"
        )
    if len(kinds) != len(images):
        raise PseudoDefectError(f"got {len(kinds)} kinds for {len(images)} images")
    count = min(len(images), max(1, int(max_examples)))
    columns = max(1, min(int(columns), count))
    rows = math.ceil(count / columns)
    # Constrained layout keeps panel titles clear of the row above.
    figure = Figure(figsize=(2 * 2.1 * columns, 2.4 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    grayscale = images.shape[-1] == 1
    for index in range(count):
        row, column = divmod(index, columns)
        image = images[index, ..., 0] if grayscale else images[index]
        share = 100.0 * masks[index].mean()
        for panel, outlined in enumerate((False, True)):
            axes = figure.add_subplot(rows, 2 * columns, row * 2 * columns + 2 * column + panel + 1)
            axes.imshow(image, cmap="gray" if grayscale else None, vmin=0, vmax=255, interpolation="nearest")
            if outlined and masks[index].any():
                axes.contour(masks[index].astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
            axes.set_title(
                f"{kinds[index]}" if not outlined else f"mask {share:.1f} %", fontsize=8
            )
            axes.set_xticks([])
            axes.set_yticks([])
    figure.suptitle(title, fontsize=10)
    return figure
