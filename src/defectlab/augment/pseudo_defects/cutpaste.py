"""The CutPaste family of defect kinds: a piece of the image moved elsewhere.

`cutpaste` (a rectangle) and `scar` (a long thin rotated strip), both built
on `_paste_rotated_rectangle`, after Li et al., CVPR 2021. The defect is
the object's own texture out of place. `CUTPASTE_REFERENCE_IMAGE_SIZE`, the
image size the paper's scar widths refer to, lives here.
"""

from __future__ import annotations

import math

import numpy as np

from defectlab.augment.pseudo_defects.checks import _draw_until_visible
from defectlab.augment.pseudo_defects.transforms import _colour_jitter

# CutPaste's scar widths are quoted in pixels of a 256 px image.
CUTPASTE_REFERENCE_IMAGE_SIZE = 256


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
