"""Noise and region shapes: where on the image a defect goes.

Seeded 2-D gradient (Perlin) noise (`perlin_noise`), the DRAEM-style region
thresholded from it (`perlin_mask`) and the irregular single blob
(`blob_mask`). Each returns an array of the image's height and width drawn
from the `numpy.random.Generator` it is given; the defect kinds choose which
pixels to change with them.
"""

from __future__ import annotations

import math

import numpy as np

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
