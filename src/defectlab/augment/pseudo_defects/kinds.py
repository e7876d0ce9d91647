"""The in-place defect kinds and `DEFECT_KINDS`, the table of all six kinds.

`perlin_blend` (DRAEM: a foreign texture blended into a Perlin region),
`local_blur`, `colour_shift` and `stroke` change pixels where they are;
`cutpaste` and `scar` come from `cutpaste`. Every kind has the signature
`DefectKind` and returns an image with the exact mask of its changes.
`DEFECT_KINDS` maps the names callers choose by to the kinds, and
`DEFAULT_KINDS` is all of them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from defectlab.augment.pseudo_defects.checks import _draw_until_visible
from defectlab.augment.pseudo_defects.cutpaste import cutpaste, scar
from defectlab.augment.pseudo_defects.shapes import blob_mask, perlin_mask
from defectlab.augment.pseudo_defects.transforms import _texture_source, gaussian_blur

DefectKind = Callable[
    [np.ndarray, np.random.Generator, "np.ndarray | None"], "tuple[np.ndarray, np.ndarray]"
]


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
