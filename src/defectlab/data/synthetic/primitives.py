"""Drawing primitives: the pixel grid, antialiased painting, distance fields, noise and defect strength.

Coordinates are in units of the image side (0..1), so the same scene renders
at any size; arrays are float32 albedo in 0..1. Signed distances to segments,
polylines and ragged blobs, filtered and low-frequency noise, random curves and
jagged lines, the object-frame transform with its drawing windows, and the
``_strength``/``_mix`` pair that scales a defect from subtle to obvious. Every
renderer above builds on these; this module imports nothing from the package.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres as broadcastable ``x`` of shape (1, size) and ``y`` of shape (size, 1)."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    return centres[None, :], centres[:, None]


def _edge_alpha(signed_distance: np.ndarray, size: int) -> np.ndarray:
    """Coverage of a shape from its signed distance (negative inside), antialiased over one pixel."""
    return np.clip(0.5 - signed_distance * size, 0.0, 1.0)


def _paint(albedo: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Blend ``colour`` (RGB, or an array broadcastable to albedo) over ``albedo`` in place."""
    albedo += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - albedo)


def _normalised(field: np.ndarray) -> np.ndarray:
    return (field - field.mean()) / (field.std() + 1e-6)


def _filtered_noise(rng: np.random.Generator, size: int, sigma_pixels) -> np.ndarray:
    """White noise blurred by ``sigma_pixels`` (scalar or per-axis), unit variance."""
    noise = rng.standard_normal((size, size), dtype=np.float32)
    return _normalised(ndimage.gaussian_filter(noise, sigma_pixels, mode="wrap"))


def _low_frequency_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth unit-variance noise with about ``cells`` undulations across the image.

    Upsampling a coarse grid is much cheaper than a wide Gaussian filter.
    """
    coarse = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return _normalised(np.asarray(image, dtype=np.float32))


def _segment_distance(x, y, start, end) -> np.ndarray:
    """Distance from every pixel to the segment ``start``-``end``."""
    start_x, start_y = start
    delta_x, delta_y = end[0] - start_x, end[1] - start_y
    length_squared = max(delta_x * delta_x + delta_y * delta_y, 1e-12)
    t = np.clip(((x - start_x) * delta_x + (y - start_y) * delta_y) / length_squared, 0.0, 1.0)
    return np.hypot(x - start_x - t * delta_x, y - start_y - t * delta_y)


def _polyline_distance(x, y, points) -> np.ndarray:
    distance = _segment_distance(x, y, points[0], points[1])
    for start, end in zip(points[1:-1], points[2:]):
        distance = np.minimum(distance, _segment_distance(x, y, start, end))
    return distance


def _polyline_distance_many(x, y, segments) -> np.ndarray:
    distance = _segment_distance(x, y, *segments[0])
    for start, end in segments[1:]:
        distance = np.minimum(distance, _segment_distance(x, y, start, end))
    return distance


def _random_curve(rng, start, length, heading, wiggle, steps=24) -> list[tuple[float, float]]:
    """A smooth random walk: ``steps`` segments whose heading drifts by ``wiggle`` radians."""
    turns = np.cumsum(rng.normal(0.0, wiggle, steps))
    headings = heading + ndimage.gaussian_filter1d(turns, 2.0)
    step = length / steps
    points = [tuple(start)]
    for angle in headings:
        last_x, last_y = points[-1]
        points.append((last_x + step * math.cos(angle), last_y + step * math.sin(angle)))
    return points


def _jagged_line(rng, start, length, heading, segments, jag) -> list[tuple[float, float]]:
    """A crack-like polyline: straight pieces with sharp random turns of up to ``jag`` radians."""
    points = [tuple(start)]
    for _ in range(segments):
        angle = heading + rng.uniform(-jag, jag)
        piece = length / segments * rng.uniform(0.6, 1.4)
        last_x, last_y = points[-1]
        points.append((last_x + piece * math.cos(angle), last_y + piece * math.sin(angle)))
    return points


def _blob_distance(x, y, rng, centre, radius, elongation, angle, roughness) -> np.ndarray:
    """Normalised distance to an irregular ellipse: below 1 inside, 1 on its ragged edge."""
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    along = (x - centre[0]) * cos_a + (y - centre[1]) * sin_a
    across = -(x - centre[0]) * sin_a + (y - centre[1]) * cos_a
    radial = np.hypot(along / (radius * elongation), across / radius)
    polar = np.arctan2(across, along)
    # A few random harmonics of the polar angle make the outline ragged, not elliptic.
    wobble = np.zeros_like(radial)
    for harmonic in range(2, 6):
        wobble += rng.normal(0.0, roughness / harmonic) * np.cos(harmonic * polar + rng.uniform(0, 2 * np.pi))
    return radial / np.clip(1.0 + wobble, 0.5, 1.6)


def _rotate_into_frame(x, y, centre, angle, scale):
    """Pixel coordinates in an object's own frame (centred, unrotated, unscaled)."""
    shifted_x, shifted_y = (x - centre[0]) / scale, (y - centre[1]) / scale
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return cos_a * shifted_x + sin_a * shifted_y, -sin_a * shifted_x + cos_a * shifted_y


def _frame_window(scene: dict, u_range, v_range, size: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels that a box of an object's frame can touch.

    Drawing a part only inside its window makes the same pixels as drawing it
    over the whole image (coverage is exactly zero further out) at a fraction
    of the cost.
    """
    cos_a, sin_a = math.cos(scene["angle"]), math.sin(scene["angle"])
    corners = [(u, v) for u in u_range for v in v_range]
    xs = [scene["centre"][0] + scene["scale"] * (cos_a * u - sin_a * v) for u, v in corners]
    ys = [scene["centre"][1] + scene["scale"] * (sin_a * u + cos_a * v) for u, v in corners]
    margin = 2  # pixels: antialiased edges reach half a pixel beyond a shape

    def span(low, high):
        return slice(max(0, math.floor(low * size) - margin), min(size, math.ceil(high * size) + margin))

    return span(min(ys), max(ys)), span(min(xs), max(xs))


def _within(window: tuple[slice, slice], inner: tuple[slice, slice]) -> tuple[slice, slice]:
    """``inner`` (image coordinates) clipped to ``window`` and made relative to it."""
    relative = []
    for outer, part in zip(window, inner):
        start = min(max(part.start, outer.start), outer.stop)
        stop = max(min(part.stop, outer.stop), start)
        relative.append(slice(start - outer.start, stop - outer.start))
    return tuple(relative)


def _strength(rng: np.random.Generator) -> float:
    """How pronounced one defect is, 0 (subtle) to 1 (obvious).

    Slightly skewed towards subtle, as in MVTec AD where many defects are small.
    """
    return float(rng.beta(1.1, 1.25))


def _mix(low: float, high: float, strength: float) -> float:
    return low + (high - low) * strength
