"""Input checks and the contract every defect kind's output is held to.

The errors of the package (`PseudoDefectError`, `NoVisibleDefectError`), the
limits behind them (`MAX_ATTEMPTS_PER_DEFECT`, `VISIBLE_DIFFERENCE_LEVELS`,
`SMALLEST_SUPPORTED_IMAGE_SIZE`), the checks of a single image, a source
image and a batch, and `_draw_until_visible`, the loop that redraws a kind
until it makes a real defect and derives the exact mask of the changed
pixels. It imports nothing else from the package.
"""

from __future__ import annotations

import math
from typing import Callable

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


class PseudoDefectError(DefectlabError, ValueError):
    """Bad input to the pseudo-defect generator: a kind name, an image's dtype, shape or size.

    It is a `ValueError` for callers that catch the standard type, and a
    ``DefectlabError`` so the CLI reports it as one line.
    """


class NoVisibleDefectError(PseudoDefectError):
    """A defect kind could not change this image visibly in `MAX_ATTEMPTS_PER_DEFECT` draws."""


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
