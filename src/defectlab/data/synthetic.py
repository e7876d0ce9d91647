"""A built-in, deterministic dataset in the layout and spirit of MVTec AD.

The real MVTec AD cannot be downloaded everywhere defectlab runs (tests, CI,
machines without network), so this module renders a stand-in with the four
categories of the article: two textures (carpet, leather) and two objects
(cable, capsule), each with the defect types MVTec AD names.

Every image is drawn from signed-distance fields and filtered noise in NumPy,
so any image size works and the same :class:`SyntheticSpec` always yields
byte-identical PNG files. Defects range from obvious to subtle; good images
vary in texture, part colours and print, and slightly in pose and lighting (as
on an inspection fixture). A plain baseline, PCA on 64 px pixels with a Local
Outlier Factor, separates defects from good images only partly (image AUROC
about 0.65 to 0.9 per category): the set is a test a method can pass or fail,
not a toy.

A defect's ground-truth mask is where its image differs from the same image
rendered without the defect (before lighting and sensor noise), so a mask is
non-empty exactly where the defect changed the picture.

Examples
--------
>>> from defectlab.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
>>> root = ensure_synthetic_dataset(SyntheticSpec(image_size=64, count_scale=0.1), cache_dir="/tmp/defectlab-cache")
>>> sorted(p.name for p in root.iterdir() if p.is_dir())
['cable', 'capsule', 'carpet', 'leather']
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from defectlab.data.cache import default_cache_dir

__all__ = [
    "CATEGORY_DEFECT_TYPES",
    "GENERATOR_VERSION",
    "OBJECT_CATEGORIES",
    "TEXTURE_CATEGORIES",
    "SyntheticSpec",
    "default_cache_dir",
    "ensure_synthetic_dataset",
    "generate_dataset",
    "render_sample",
    "split_counts",
]

# Bump whenever a change alters any pixel, so cached datasets made by an older
# generator are not reused under the same name.
GENERATOR_VERSION = "2"

CATEGORY_DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "carpet": ("color", "cut", "hole", "metal_contamination", "thread"),
    "leather": ("color", "cut", "fold", "glue", "poke"),
    "cable": (
        "bent_wire",
        "cable_swap",
        "combined",
        "cut_inner_insulation",
        "cut_outer_insulation",
        "missing_cable",
        "missing_wire",
        "poke_insulation",
    ),
    "capsule": ("crack", "faulty_imprint", "poke", "scratch", "squeeze"),
}
TEXTURE_CATEGORIES = ("carpet", "leather")
OBJECT_CATEGORIES = ("cable", "capsule")

# (train good, test good, test defects over all types) at count_scale 1: about
# half of MVTec AD, enough for the article's methods while staying quick to make.
_DEFAULT_COUNTS: dict[str, tuple[int, int, int]] = {
    "carpet": (140, 14, 45),
    "leather": (122, 16, 46),
    "cable": (112, 29, 46),
    "capsule": (110, 12, 55),
}

_COMPLETE_MARKER = ".complete"

# A pixel belongs to a defect mask when the defect changed its albedo by more
# than this (on a 0..1 scale, about 5 grey levels): smaller changes are
# antialiasing residue nobody would annotate.
_MASK_THRESHOLD = 0.02


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that decides the pixels of a synthetic dataset.

    Parameters
    ----------
    image_size : int, default 256
        Width and height of every image and mask, in pixels.
    seed : int, default 0
        Root of every random draw; a different seed gives a different dataset.
    count_scale : float, default 1.0
        Multiplies the per-category image counts (about half of MVTec AD),
        keeping at least one image per split and defect type, so tests can
        make tiny sets.
    """

    image_size: int = 256
    seed: int = 0
    count_scale: float = 1.0

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if not self.count_scale > 0:
            raise ValueError(f"count_scale must be positive, got {self.count_scale}")


def _check_category(category: str) -> None:
    if category not in CATEGORY_DEFECT_TYPES:
        known = ", ".join(CATEGORY_DEFECT_TYPES)
        raise ValueError(f"unknown synthetic category {category!r}; known categories: {known}")


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even, which makes counts jump oddly
    # as count_scale changes.
    return int(math.floor(value + 0.5))


def split_counts(category: str, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, int]:
    """How many images each folder of a category holds, without rendering any.

    Parameters
    ----------
    category : str
        One of ``CATEGORY_DEFECT_TYPES``.
    spec : SyntheticSpec
        Only ``count_scale`` matters here.

    Returns
    -------
    dict of str to int
        Keys ``"train/good"``, ``"test/good"`` and ``"test/<defect_type>"`` for
        each defect type of the category, in that order. Defects are split
        evenly over the types, the first types taking any remainder.
    """
    _check_category(category)
    train_good, test_good, defects = _DEFAULT_COUNTS[category]
    defect_types = CATEGORY_DEFECT_TYPES[category]
    total_defects = _round_half_up(defects * spec.count_scale)
    per_type, remainder = divmod(total_defects, len(defect_types))
    counts = {
        "train/good": max(1, _round_half_up(train_good * spec.count_scale)),
        "test/good": max(1, _round_half_up(test_good * spec.count_scale)),
    }
    for position, defect_type in enumerate(defect_types):
        counts[f"test/{defect_type}"] = max(1, per_type + (1 if position < remainder else 0))
    return counts


# ---------------------------------------------------------------------------
# Drawing helpers. Coordinates are in units of the image side (0..1), so the
# same scene renders at any size; arrays are float32 albedo in 0..1.
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Camera: lighting gradient, colour cast and sensor noise, shared by all
# categories and drawn from the image's base random stream.
# ---------------------------------------------------------------------------


@dataclass
class _Camera:
    """Lighting and sensor of one shot.

    ``lighting_variation`` 1 means up to 12 % brightness change, a 30 % gradient
    across the image and a 35 % vignette; each category scales that down to
    what a fixed inspection fixture shows.
    """

    gain: float
    channel_gain: np.ndarray
    gradient: float
    gradient_angle: float
    vignette: float
    noise: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, size: int, lighting_variation: float, noise_level: float):
        return cls(
            gain=float(rng.uniform(1.0 - 0.12 * lighting_variation, 1.0 + 0.12 * lighting_variation)),
            channel_gain=rng.normal(1.0, 0.025 * lighting_variation, 3).astype(np.float32),
            gradient=float(rng.uniform(0.0, 0.3 * lighting_variation)),
            gradient_angle=float(rng.uniform(0, 2 * np.pi)),
            vignette=float(rng.uniform(0.0, 0.35 * lighting_variation)),
            noise=rng.standard_normal((size, size, 3), dtype=np.float32)
            * np.float32(noise_level * rng.uniform(0.6, 1.4)),
        )

    def expose(self, albedo: np.ndarray) -> np.ndarray:
        size = albedo.shape[0]
        x, y = _pixel_grid(size)
        light = self.gain * (
            1.0
            + self.gradient * ((x - 0.5) * math.cos(self.gradient_angle) + (y - 0.5) * math.sin(self.gradient_angle))
            - self.vignette * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
        )
        image = albedo * light[..., None] * self.channel_gain + self.noise
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Carpet: woven tufts of fibres in two shades.
# ---------------------------------------------------------------------------


def _carpet_albedo(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _pixel_grid(size)
    pixel_scale = size / 256.0
    light_shade = np.array([0.62, 0.57, 0.50], np.float32) * rng.uniform(0.98, 1.02)
    light_shade += rng.normal(0, 0.004, 3).astype(np.float32)
    dark_shade = light_shade * rng.uniform(0.5, 0.56)
    # Tufts sit on a slightly wavy grid, as real weaving never is perfectly regular.
    period = rng.uniform(5.5, 6.5) / 256.0
    warp_x = _low_frequency_noise(rng, size, 6) * 0.3 * period
    warp_y = _low_frequency_noise(rng, size, 6) * 0.3 * period
    u = (x + warp_x) / period
    v = (y + warp_y) / period
    tuft = np.sin(np.pi * (u - np.floor(u))) * np.sin(np.pi * (v - np.floor(v)))
    # Neighbouring tufts run their fibres crosswise (a basket weave).
    crosswise = ((np.floor(u) + np.floor(v)) % 2).astype(bool)
    fibre_noise = rng.standard_normal((size, size), dtype=np.float32)
    along_x = ndimage.gaussian_filter(fibre_noise, (0.6 * pixel_scale, 3.0 * pixel_scale), mode="wrap")
    along_y = ndimage.gaussian_filter(fibre_noise, (3.0 * pixel_scale, 0.6 * pixel_scale), mode="wrap")
    fibres = _normalised(np.where(crosswise, along_x, along_y))
    patches = _low_frequency_noise(rng, size, int(rng.integers(5, 12)))
    height = 0.5 * tuft + 0.09 * fibres + 0.04 * patches + 0.25
    albedo = dark_shade + np.clip(height, 0, 1.2)[..., None] * (light_shade - dark_shade)
    return albedo.astype(np.float32)


def _carpet_defect(albedo, rng, defect_type, size) -> None:
    x, y = _pixel_grid(size)
    strength = _strength(rng)
    centre = rng.uniform(0.15, 0.85, 2)
    pixel = 1.0 / size
    if defect_type == "color":
        radius = max(_mix(0.04, 0.25, strength), 3 * pixel)
        distance = _blob_distance(x, y, rng, centre, radius, rng.uniform(1, 2), rng.uniform(0, np.pi), 0.25)
        alpha = np.clip((1.0 - distance) / 0.35, 0, 1) * _mix(0.4, 0.9, strength)
        tint = rng.choice(np.array([[0.55, 0.2, 0.15], [0.2, 0.3, 0.6], [0.25, 0.2, 0.12], [0.6, 0.55, 0.2]]))
        _paint(albedo, alpha, albedo * (tint / 0.55))
    elif defect_type == "cut":
        length = _mix(0.1, 0.5, strength)
        heading = rng.uniform(0, np.pi)
        end = centre + length * np.array([math.cos(heading), math.sin(heading)])
        distance = _segment_distance(x, y, centre, end)
        width = max(_mix(0.005, 0.035, strength), 0.8 * pixel)
        # Cut fibres stand up and catch light around a dark gap.
        _paint(albedo, _edge_alpha(distance - 2.2 * width, size) * 0.5, albedo * 1.35)
        _paint(albedo, _edge_alpha(distance - width, size) * _mix(0.6, 0.95, strength), albedo * 0.2)
    elif defect_type == "hole":
        radius = max(_mix(0.025, 0.15, strength), 2 * pixel)
        distance = _blob_distance(x, y, rng, centre, radius, rng.uniform(1, 1.6), rng.uniform(0, np.pi), 0.3)
        frayed = _filtered_noise(rng, size, 0.8 * size / 256.0) * 0.12
        _paint(albedo, np.clip((1.35 - distance + frayed) / 0.15, 0, 1) * 0.45, albedo * 0.55)
        _paint(albedo, np.clip((1.0 - distance + frayed) / 0.1, 0, 1), (0.06, 0.05, 0.05))
    elif defect_type == "metal_contamination":
        for _ in range(int(rng.integers(1, 6))):
            speck_centre = centre + rng.normal(0, 0.03, 2)
            radius = max(_mix(0.012, 0.08, strength) * rng.uniform(0.5, 1.0), 1.5 * pixel)
            distance = _blob_distance(x, y, rng, speck_centre, radius, rng.uniform(1, 2.5), rng.uniform(0, np.pi), 0.3)
            inside = np.clip((1.0 - distance) / 0.2, 0, 1)
            # Metal: grey, with a specular glint towards one side.
            glint_distance = np.hypot(x - speck_centre[0] + 0.4 * radius, y - speck_centre[1] + 0.4 * radius)
            glint = np.clip(1.0 - glint_distance / radius, 0, 1)
            metal = 0.22 + 0.75 * glint**2
            _paint(albedo, inside, np.stack([metal, metal * 1.02, metal * 1.06], axis=-1))
    elif defect_type == "thread":
        length = _mix(0.2, 0.8, strength)
        points = _random_curve(rng, centre - 0.3 * length, length, rng.uniform(0, 2 * np.pi), 0.25)
        width = max(_mix(0.004, 0.022, strength), 0.7 * pixel)
        distance = _polyline_distance(x, y, points)
        colour = rng.choice(np.array([[0.85, 0.82, 0.75], [0.15, 0.12, 0.1], [0.7, 0.25, 0.2], [0.25, 0.3, 0.55]]))
        _paint(albedo, _edge_alpha(distance - 2 * width, size) * 0.4, albedo * 0.6)  # shadow
        _paint(albedo, _edge_alpha(distance - width, size) * _mix(0.5, 0.95, strength), colour)
    else:
        raise ValueError(f"unknown carpet defect type {defect_type!r}")


# ---------------------------------------------------------------------------
# Leather: smooth brown surface with fine grain, creases and pores.
# ---------------------------------------------------------------------------


def _leather_albedo(rng: np.random.Generator, size: int) -> np.ndarray:
    pixel_scale = size / 256.0
    base = np.array([0.50, 0.32, 0.20], np.float32) * rng.uniform(0.985, 1.015)
    base += rng.normal(0, 0.004, 3).astype(np.float32)
    fine_grain = _filtered_noise(rng, size, 1.6 * pixel_scale)
    coarse_grain = _filtered_noise(rng, size, 4.5 * pixel_scale)
    # Zero crossings of filtered noise form a cellular network, like leather creases.
    creases = np.exp(-((fine_grain / 0.3) ** 2)) * rng.uniform(0.16, 0.18) + np.exp(-((coarse_grain / 0.2) ** 2)) * 0.1
    pore_noise = rng.standard_normal((size, size), dtype=np.float32)
    pores = ndimage.gaussian_filter((pore_noise > 2.9).astype(np.float32), 0.7 * pixel_scale) * 0.6
    mottling = _low_frequency_noise(rng, size, int(rng.integers(3, 8))) * 0.015
    shade = 1.0 - creases - pores + mottling
    return (base * shade[..., None]).astype(np.float32)


def _leather_defect(albedo, rng, defect_type, size) -> None:
    x, y = _pixel_grid(size)
    strength = _strength(rng)
    centre = rng.uniform(0.15, 0.85, 2)
    pixel = 1.0 / size
    if defect_type == "color":
        radius = max(_mix(0.05, 0.28, strength), 3 * pixel)
        distance = _blob_distance(x, y, rng, centre, radius, rng.uniform(1, 2), rng.uniform(0, np.pi), 0.3)
        alpha = np.clip((1.0 - distance) / 0.4, 0, 1) * _mix(0.5, 0.95, strength)
        factor = rng.choice(np.array([[0.4, 0.4, 0.45], [1.7, 1.5, 1.35], [0.6, 0.75, 1.4], [1.4, 0.7, 0.6]]))
        _paint(albedo, alpha, albedo * factor)
    elif defect_type == "cut":
        length = _mix(0.08, 0.45, strength)
        points = _random_curve(rng, centre, length, rng.uniform(0, 2 * np.pi), 0.08, steps=8)
        distance = _polyline_distance(x, y, points)
        width = max(_mix(0.004, 0.02, strength), 0.7 * pixel)
        _paint(albedo, _edge_alpha(distance - 2 * width, size) * 0.3, albedo * 1.3)
        _paint(albedo, _edge_alpha(distance - width, size) * _mix(0.6, 0.95, strength), albedo * 0.25)
    elif defect_type == "fold":
        heading = rng.uniform(0, np.pi)
        length = _mix(0.25, 0.8, strength)
        direction = np.array([math.cos(heading), math.sin(heading)])
        start, end = centre - 0.5 * length * direction, centre + 0.5 * length * direction
        along = ((x - start[0]) * direction[0] + (y - start[1]) * direction[1]) / length
        signed_across = -(x - centre[0]) * direction[1] + (y - centre[1]) * direction[0]
        width = _mix(0.015, 0.06, strength)
        # A crease: lit on one flank, shadowed on the other, fading at both ends.
        taper = np.clip(np.sin(np.pi * np.clip(along, 0, 1)), 0, 1) ** 0.5
        profile = signed_across / width * np.exp(-((signed_across / width) ** 2))
        shading = 1.0 + _mix(0.25, 0.8, strength) * profile * taper
        shading -= _mix(0.15, 0.45, strength) * np.exp(-((signed_across / (0.25 * width)) ** 2)) * taper
        shading -= _mix(0.05, 0.35, strength) * np.exp(-((signed_across / (1.5 * width)) ** 2)) * taper
        albedo *= shading[..., None]
    elif defect_type == "glue":
        radius = max(_mix(0.04, 0.2, strength), 3 * pixel)
        distance = _blob_distance(x, y, rng, centre, radius, rng.uniform(1, 1.8), rng.uniform(0, np.pi), 0.35)
        inside = np.clip((1.0 - distance) / 0.25, 0, 1)
        # Dried glue hides the grain and shines.
        smooth = ndimage.gaussian_filter(albedo, (3 * size / 256.0, 3 * size / 256.0, 0))
        glossy = smooth * np.array([1.45, 1.4, 1.2], np.float32) + 0.15 * np.clip(0.6 - distance, 0, 1)[..., None]
        _paint(albedo, inside * _mix(0.55, 0.95, strength), glossy)
    elif defect_type == "poke":
        for _ in range(int(rng.integers(1, 7))):
            poke_centre = centre + rng.normal(0, 0.04, 2)
            radius = max(_mix(0.008, 0.05, strength), 1.2 * pixel)
            distance = np.hypot(x - poke_centre[0], y - poke_centre[1])
            _paint(albedo, _edge_alpha(distance - 1.8 * radius, size) * 0.35, albedo * 1.35)
            _paint(albedo, _edge_alpha(distance - radius, size) * _mix(0.6, 0.95, strength), albedo * 0.2)
    else:
        raise ValueError(f"unknown leather defect type {defect_type!r}")


# ---------------------------------------------------------------------------
# Cable: a round cross-section with three coloured wires, as in MVTec AD.
# The scene is a plain dict so that a defect edits a copy and both versions
# render through the same code.
# ---------------------------------------------------------------------------

_CABLE_WIRE_COLOURS = np.array([[0.20, 0.55, 0.28], [0.18, 0.32, 0.68], [0.52, 0.48, 0.42]], np.float32)
_CABLE_OUTER_RADIUS = 0.46
_CABLE_INNER_RADIUS = 0.41
_CABLE_WIRE_OFFSET = 0.2
_CABLE_INSULATION_RADIUS = 0.17
_CABLE_CORE_RADIUS = 0.1


def _cable_scene(rng: np.random.Generator, size: int) -> dict:
    # Pose jitter stays below a pixel at 256 px, as on MVTec AD's fixture: at 64
    # px a pixel of shift outweighs most defects for pixel-space baselines.
    # Per-wire shades vary instead, as real insulation and copper do.
    wire_colours = _CABLE_WIRE_COLOURS * rng.normal(1.0, 0.02, (3, 1)).astype(np.float32)
    return {
        "centre": 0.5 + rng.normal(0, 0.0025, 2),
        "angle": float(rng.normal(0, np.radians(0.75))),
        "scale": float(rng.normal(1.0, 0.003)),
        "wire_colours": [tuple(colour) for colour in np.clip(wire_colours, 0, 1)],
        "wire_present": [True, True, True],
        "core_present": [True, True, True],
        "strand_angles": rng.normal(0.2, 0.05, 3),
        "copper_shades": rng.normal(1.0, 0.02, 3).tolist(),
        "bent_strands": [],  # (wire, direction, length, width)
        "overlays": [],  # (kind, centre, radius or points, width)
        "filler_texture": _filtered_noise(rng, size, 1.5 * size / 256.0),
        "background": float(rng.uniform(0.0625, 0.0875)),
    }


def _cable_albedo(scene: dict, size: int) -> np.ndarray:
    x, y = _pixel_grid(size)
    u, v = _rotate_into_frame(x, y, scene["centre"], scene["angle"], scene["scale"])
    scale = scene["scale"]

    def alpha(distance):  # distances in the object frame
        return _edge_alpha(distance * scale, size)

    radius = np.hypot(u, v)
    albedo = np.full((size, size, 3), scene["background"], np.float32)
    # Jacket and filler
    jacket_shading = 1.0 - 0.25 * (radius / _CABLE_OUTER_RADIUS) ** 6
    jacket = np.array([0.82, 0.81, 0.78], np.float32) * jacket_shading[..., None]
    _paint(albedo, alpha(radius - _CABLE_OUTER_RADIUS), jacket)
    filler = 0.5 + 0.02 * scene["filler_texture"]
    _paint(albedo, alpha(radius - _CABLE_INNER_RADIUS), np.stack([filler, filler * 0.97, filler * 0.92], axis=-1))
    # Wires, each an insulation ring around a core of copper strands
    for wire in range(3):
        wire_angle = np.pi / 2 + wire * 2 * np.pi / 3
        wire_u = _CABLE_WIRE_OFFSET * math.cos(wire_angle)
        wire_v = _CABLE_WIRE_OFFSET * math.sin(wire_angle)
        bent_reaches = [length + width for bent, _, length, width in scene["bent_strands"] if bent == wire]
        reach = max([_CABLE_INSULATION_RADIUS] + bent_reaches)
        window = _frame_window(scene, (wire_u - reach, wire_u + reach), (wire_v - reach, wire_v + reach), size)
        wire_albedo = albedo[window]
        local_u, local_v = u[window] - wire_u, v[window] - wire_v
        wire_radius = np.hypot(local_u, local_v)
        if not scene["wire_present"][wire]:
            # The wire's channel in the filler stays, empty and dark.
            _paint(wire_albedo, alpha(wire_radius - _CABLE_INSULATION_RADIUS * 0.95) * 0.8, (0.12, 0.11, 0.1))
            continue
        insulation_shading = 1.05 - 0.3 * (wire_radius / _CABLE_INSULATION_RADIUS) ** 4
        colour = np.asarray(scene["wire_colours"][wire], np.float32)
        _paint(wire_albedo, alpha(wire_radius - _CABLE_INSULATION_RADIUS), colour * insulation_shading[..., None])
        if not scene["core_present"][wire]:
            _paint(wire_albedo, alpha(wire_radius - _CABLE_CORE_RADIUS), (0.07, 0.06, 0.05))
            continue
        core_distance = wire_radius - _CABLE_CORE_RADIUS
        for bent_wire, direction, length, width in scene["bent_strands"]:
            if bent_wire == wire:
                tip = (length * math.cos(direction), length * math.sin(direction))
                core_distance = np.minimum(core_distance, _segment_distance(local_u, local_v, (0.0, 0.0), tip) - width)
        # Strands: a hexagonal lattice of bright discs (three crossed cosines).
        strand_angle = scene["strand_angles"][wire]
        wavenumber = 2 * np.pi / (_CABLE_CORE_RADIUS / 2.2)
        lattice = sum(
            np.cos(wavenumber * (local_u * math.cos(direction) + local_v * math.sin(direction)))
            for direction in (strand_angle, strand_angle + np.pi / 3, strand_angle + 2 * np.pi / 3)
        )
        strands = 0.75 + 0.25 * np.clip((lattice + 1.5) / 4.5, 0, 1)
        copper = np.array([0.86, 0.55, 0.3], np.float32) * scene["copper_shades"][wire] * strands[..., None]
        _paint(wire_albedo, alpha(core_distance), copper)
    for kind, centre, extent, width in scene["overlays"]:
        if kind == "cut":  # a notch: the insulation is sliced open onto a dark gap
            us, vs = [point[0] for point in extent], [point[1] for point in extent]
            window = _frame_window(scene, (min(us) - width, max(us) + width), (min(vs) - width, max(vs) + width), size)
            distance = _polyline_distance(u[window], v[window], extent)
            _paint(albedo[window], alpha(distance - width), (0.1, 0.09, 0.08))
        elif kind == "poke":  # a dent: shadowed pit with a lit rim
            reach = 1.6 * extent
            window = _frame_window(
                scene, (centre[0] - reach, centre[0] + reach), (centre[1] - reach, centre[1] + reach), size
            )
            distance = np.hypot(u[window] - centre[0], v[window] - centre[1])
            poked = albedo[window]
            _paint(poked, alpha(distance - reach) * 0.5, poked * 1.4)
            _paint(poked, alpha(distance - extent), poked * 0.3)
    return albedo


def _cable_defect(scene, rng, defect_type, size) -> None:
    strength = _strength(rng)
    wire = int(rng.integers(0, 3))
    wire_angle = np.pi / 2 + wire * 2 * np.pi / 3
    wire_centre = _CABLE_WIRE_OFFSET * np.array([math.cos(wire_angle), math.sin(wire_angle)])
    pixel = 1.0 / size
    if defect_type == "bent_wire":
        # A few strands splay out of the core over the insulation.
        direction = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(1, 4))):
            length = _mix(0.11, 0.24, strength) * rng.uniform(0.8, 1.0)
            width = max(_mix(0.012, 0.06, strength), pixel)
            scene["bent_strands"] = scene["bent_strands"] + [(wire, direction + rng.normal(0, 0.3), length, width)]
    elif defect_type == "cable_swap":
        # Two wires of one colour: another wire's insulation colour repeated.
        other = (wire + int(rng.integers(1, 3))) % 3
        colours = list(scene["wire_colours"])
        colours[wire] = colours[other]
        scene["wire_colours"] = colours
    elif defect_type == "combined":
        parts = ["bent_wire", "cut_inner_insulation", "cut_outer_insulation", "poke_insulation", "missing_wire"]
        for part in rng.choice(parts, 2, replace=False):
            _cable_defect(scene, rng, str(part), size)
    elif defect_type == "cut_inner_insulation":
        direction = rng.uniform(0, 2 * np.pi)
        radial = np.array([math.cos(direction), math.sin(direction)])
        start = wire_centre + radial * _CABLE_INSULATION_RADIUS * 1.05
        depth = _mix(0.4, 0.9, strength) * (_CABLE_INSULATION_RADIUS - _CABLE_CORE_RADIUS) + 0.02
        tangent = np.array([-radial[1], radial[0]]) * rng.uniform(-0.4, 0.4) * depth
        points = [tuple(start), tuple(start - radial * depth + tangent)]
        width = max(_mix(0.005, 0.04, strength), 0.7 * pixel)
        scene["overlays"] = scene["overlays"] + [("cut", None, points, width)]
    elif defect_type == "cut_outer_insulation":
        direction = rng.uniform(0, 2 * np.pi)
        radial = np.array([math.cos(direction), math.sin(direction)])
        tangent = np.array([-radial[1], radial[0]])
        length = _mix(0.05, 0.25, strength)
        middle = radial * (_CABLE_OUTER_RADIUS - 0.025)
        offset = tangent * 0.5 * length + radial * rng.uniform(-0.3, 0.3) * 0.5 * length
        points = [tuple(middle - offset), tuple(middle + offset)]
        width = max(_mix(0.005, 0.025, strength), 0.7 * pixel)
        scene["overlays"] = scene["overlays"] + [("cut", None, points, width)]
    elif defect_type == "missing_cable":
        present = list(scene["wire_present"])
        present[wire] = False
        scene["wire_present"] = present
    elif defect_type == "missing_wire":
        present = list(scene["core_present"])
        present[wire] = False
        scene["core_present"] = present
    elif defect_type == "poke_insulation":
        direction = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(1.1, 0.9 * _CABLE_INSULATION_RADIUS / _CABLE_CORE_RADIUS) * _CABLE_CORE_RADIUS
        centre = wire_centre + distance * np.array([math.cos(direction), math.sin(direction)])
        radius = max(_mix(0.01, 0.055, strength), 1.2 * pixel)
        scene["overlays"] = scene["overlays"] + [("poke", tuple(centre), radius, None)]
    else:
        raise ValueError(f"unknown cable defect type {defect_type!r}")


# ---------------------------------------------------------------------------
# Capsule: a two-coloured pill lying on a light surface, printed "500".
# ---------------------------------------------------------------------------

_CAPSULE_HALF_STRAIGHT = 0.25  # half the length of the straight part
_CAPSULE_RADIUS = 0.13

# Seven-segment strokes per glyph, in a unit cell (x right, y down).
_SEGMENT_STROKES = {
    "a": ((0.0, 0.0), (1.0, 0.0)),
    "b": ((1.0, 0.0), (1.0, 0.5)),
    "c": ((1.0, 0.5), (1.0, 1.0)),
    "d": ((0.0, 1.0), (1.0, 1.0)),
    "e": ((0.0, 0.5), (0.0, 1.0)),
    "f": ((0.0, 0.0), (0.0, 0.5)),
    "g": ((0.0, 0.5), (1.0, 0.5)),
}
_DIGIT_SEGMENTS = {"5": "afgcd", "0": "abcdef"}
_CAPSULE_PRINT = "500"


def _capsule_print_strokes() -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The imprint as segments in the capsule frame, on the right half."""
    glyph_width, glyph_height, gap = 0.045, 0.085, 0.025
    left = 0.07
    strokes = []
    for position, digit in enumerate(_CAPSULE_PRINT):
        origin_u = left + position * (glyph_width + gap)
        for segment in _DIGIT_SEGMENTS[digit]:
            (start_x, start_y), (end_x, end_y) = _SEGMENT_STROKES[segment]
            strokes.append(
                (
                    (origin_u + start_x * glyph_width, -glyph_height / 2 + start_y * glyph_height),
                    (origin_u + end_x * glyph_width, -glyph_height / 2 + end_y * glyph_height),
                )
            )
    return strokes


def _capsule_scene(rng: np.random.Generator, size: int) -> dict:
    # Pose jitter stays below a pixel at 256 px, as on MVTec AD's fixture (see
    # _cable_scene); the pieces themselves vary a little in colour, width and print.
    return {
        "centre": 0.5 + rng.normal(0, 0.0015, 2),
        "angle": float(rng.normal(0, np.radians(0.3))),
        "scale": float(rng.normal(1.0, 0.002)),
        "seam": float(rng.normal(-0.02, 0.001)),
        "left_colour": tuple(np.array([0.16, 0.15, 0.15], np.float32) * rng.uniform(0.98, 1.02)),
        "right_colour": tuple(np.array([0.88, 0.52, 0.18], np.float32) * rng.uniform(0.985, 1.015)),
        "print_colour": (0.93, 0.92, 0.88),
        "print_strokes": _capsule_print_strokes(),
        "radius": float(rng.normal(_CAPSULE_RADIUS, 0.001)),
        "print_width": float(rng.uniform(0.0085, 0.0095)),
        "print_strength": float(rng.uniform(0.8875, 0.9625)),
        "print_offset": tuple(rng.normal(0, 0.00075, 2)),
        "squeeze": None,  # (position along, depth, width, side)
        "overlays": [],  # (kind, points or centre, width or radius, colour factor)
        "background_texture": _low_frequency_noise(rng, size, 4) * 0.0025,
        "background": float(rng.uniform(0.705, 0.715)),
    }


def _capsule_albedo(scene: dict, size: int) -> np.ndarray:
    background = scene["background"] + scene["background_texture"]
    albedo = np.repeat(background[..., None], 3, axis=-1).astype(np.float32)
    # Everything below happens inside the capsule's window, shadow included
    # (the shadow fades out 0.015 beyond its outline).
    half_length = _CAPSULE_HALF_STRAIGHT + scene["radius"] + 0.03
    window = _frame_window(scene, (-half_length, half_length), (-scene["radius"] - 0.03, scene["radius"] + 0.05), size)
    x, y = _pixel_grid(size)
    u, v = _rotate_into_frame(x[:, window[1]], y[window[0]], scene["centre"], scene["angle"], scene["scale"])
    scale = scene["scale"]

    def alpha(distance):
        return _edge_alpha(distance * scale, size)

    # Body: a stadium whose radius can be pinched on one side (squeeze).
    radius = np.full(u.shape, scene["radius"], np.float32)
    if scene["squeeze"] is not None:
        position, depth, width, side = scene["squeeze"]
        pinch = depth * np.exp(-(((u - position) / width) ** 2))
        radius = np.where(np.sign(v) == side, radius - pinch, radius)
    along_axis = np.abs(u) - _CAPSULE_HALF_STRAIGHT
    radial = np.where(along_axis <= 0, np.abs(v) / radius, np.hypot(along_axis, v) / scene["radius"])
    body_distance = np.where(along_axis <= 0, np.abs(v) - radius, np.hypot(along_axis, v) - scene["radius"])
    body_alpha = alpha(body_distance)

    capsule_albedo = albedo[window]
    # A soft shadow below-right of the capsule.
    shadow_v = v - 0.02
    shadow_distance = np.where(along_axis <= 0, np.abs(shadow_v) - radius, np.hypot(along_axis, shadow_v) - scene["radius"])
    capsule_albedo *= (1.0 - 0.3 * np.clip(0.5 - shadow_distance / 0.03, 0, 1))[..., None]

    left_alpha = alpha(u - scene["seam"])
    surface = np.empty_like(capsule_albedo)
    surface[:] = scene["right_colour"]
    _paint(surface, left_alpha, scene["left_colour"])
    seam_line = alpha(np.abs(u - scene["seam"]) - 0.003) * 0.5
    surface *= (1.0 - seam_line)[..., None]
    # Imprint, drawn only around its strokes
    offset_u, offset_v = scene["print_offset"]
    reach = scene["print_width"]
    stroke_us = [point[0] + offset_u for stroke in scene["print_strokes"] for point in stroke]
    stroke_vs = [point[1] + offset_v for stroke in scene["print_strokes"] for point in stroke]
    if stroke_us:
        print_box = _frame_window(
            scene, (min(stroke_us) - reach, max(stroke_us) + reach), (min(stroke_vs) - reach, max(stroke_vs) + reach), size
        )
        print_window = _within(window, print_box)
        print_distance = _polyline_distance_many(
            u[print_window] - offset_u, v[print_window] - offset_v, scene["print_strokes"]
        )
        _paint(surface[print_window], alpha(print_distance - reach) * scene["print_strength"], scene["print_colour"])
    for kind, shape, extent, factor in scene["overlays"]:
        if kind == "line":  # cracks and scratches
            _paint(surface, alpha(_polyline_distance(u, v, shape) - extent), surface * factor)
        elif kind == "dent":
            distance = np.hypot(u - shape[0], v - shape[1])
            _paint(surface, alpha(distance - 1.5 * extent) * 0.6, np.minimum(surface * 1.6 + 0.1, 1.0))
            _paint(surface, alpha(distance - extent), surface * factor)
        elif kind == "smudge":  # ink smeared or rubbed off around the imprint
            distance = np.hypot((u - shape[0]) / extent[0], (v - shape[1]) / extent[1])
            smeared = np.clip(1.0 - distance, 0, 1) ** 0.5
            _paint(surface, smeared * factor, scene["right_colour"])
    # Cylinder shading: darker towards the rims, a highlight band above the axis.
    across = np.clip(np.where(along_axis <= 0, v / radius, v / scene["radius"]), -1, 1)
    depth = np.sqrt(np.clip(1.0 - np.clip(radial, 0, 1) ** 2, 0, 1))
    shading = 0.55 + 0.45 * depth + 0.3 * np.exp(-(((across + 0.45) / 0.15) ** 2)) * depth
    _paint(capsule_albedo, body_alpha, surface * shading[..., None])
    return albedo


def _polyline_distance_many(x, y, segments) -> np.ndarray:
    distance = _segment_distance(x, y, *segments[0])
    for start, end in segments[1:]:
        distance = np.minimum(distance, _segment_distance(x, y, start, end))
    return distance


def _capsule_defect(scene, rng, defect_type, size) -> None:
    strength = _strength(rng)
    pixel = 1.0 / size
    along = rng.uniform(-_CAPSULE_HALF_STRAIGHT - 0.05, _CAPSULE_HALF_STRAIGHT + 0.05)
    across = rng.uniform(-0.7, 0.7) * _CAPSULE_RADIUS
    if defect_type == "crack":
        side = rng.choice([-1.0, 1.0])
        start = (along, side * _CAPSULE_RADIUS * 0.98)
        heading = -side * np.pi / 2 + rng.uniform(-0.6, 0.6)
        length = _mix(0.06, 0.4, strength)
        points = _jagged_line(rng, start, length, heading, int(rng.integers(3, 7)), 0.8)
        width = max(_mix(0.003, 0.018, strength), 0.6 * pixel)
        # The shell around a crack is stressed and dull, so it shows wider than the gap.
        scene["overlays"] = scene["overlays"] + [("line", points, 4 * width, 0.7), ("line", points, width, 0.2)]
    elif defect_type == "faulty_imprint":
        strokes = list(scene["print_strokes"])
        flaw = rng.choice(["missing", "shifted", "smudged"])
        if flaw == "missing":
            count = max(1, int(round(_mix(2, 17, strength))))
            drop = set(rng.choice(len(strokes), count, replace=False).tolist())
            scene["print_strokes"] = [stroke for index, stroke in enumerate(strokes) if index not in drop]
        elif flaw == "shifted":
            # One glyph printed out of place.
            glyph = int(rng.integers(0, len(_CAPSULE_PRINT)))
            first = sum(len(_DIGIT_SEGMENTS[d]) for d in _CAPSULE_PRINT[:glyph])
            last = first + len(_DIGIT_SEGMENTS[_CAPSULE_PRINT[glyph]])
            shift = rng.normal(0, 1, 2)
            shift *= _mix(0.012, 0.06, strength) / (np.linalg.norm(shift) + 1e-9)
            strokes[first:last] = [
                ((start[0] + shift[0], start[1] + shift[1]), (end[0] + shift[0], end[1] + shift[1]))
                for start, end in strokes[first:last]
            ]
            scene["print_strokes"] = strokes
        else:
            centre = (rng.uniform(0.07, 0.25), rng.uniform(-0.04, 0.04))
            extent = (_mix(0.04, 0.15, strength), _mix(0.03, 0.1, strength))
            scene["overlays"] = scene["overlays"] + [("smudge", centre, extent, _mix(0.5, 1.0, strength))]
    elif defect_type == "poke":
        radius = max(_mix(0.012, 0.085, strength), 1.2 * pixel)
        scene["overlays"] = scene["overlays"] + [("dent", (along, across), radius, 0.35)]
    elif defect_type == "scratch":
        heading = rng.uniform(0, np.pi)
        # Scratches show light on the dark half and dark on the light half.
        factor = 2.8 if along < scene["seam"] else 0.6
        # Scuffs often come as a few roughly parallel scratches.
        for _ in range(int(rng.integers(1, 5))):
            length = _mix(0.1, 0.45, strength) * rng.uniform(0.6, 1.0)
            start = (along + rng.normal(0, 0.02), across + rng.normal(0, 0.02))
            points = _random_curve(rng, start, length, heading + rng.normal(0, 0.1), 0.03, steps=6)
            width = max(_mix(0.003, 0.018, strength), 0.5 * pixel)
            scene["overlays"] = scene["overlays"] + [("line", points, width, factor)]
    elif defect_type == "squeeze":
        position = rng.uniform(-0.8, 0.8) * _CAPSULE_HALF_STRAIGHT
        depth = max(_mix(0.02, 0.09, strength), 1.5 * pixel)
        width = _mix(0.05, 0.15, rng.uniform())
        scene["squeeze"] = (position, depth, width, float(rng.choice([-1.0, 1.0])))
    else:
        raise ValueError(f"unknown capsule defect type {defect_type!r}")


# ---------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _CategoryRenderer:
    draw_scene: Callable  # (base_rng, size) -> scene
    render: Callable  # (scene, size) -> albedo
    apply_defect: Callable  # (scene, defect_rng, defect_type, size) -> None, edits scene in place
    copy_scene: Callable
    lighting_variation: float
    noise_level: float


def _texture_renderer(make_albedo, apply_defect, lighting_variation, noise_level) -> _CategoryRenderer:
    # For textures the scene is the albedo itself; a defect paints on a copy.
    return _CategoryRenderer(
        draw_scene=make_albedo,
        render=lambda albedo, size: albedo,
        apply_defect=apply_defect,
        copy_scene=np.copy,
        lighting_variation=lighting_variation,
        noise_level=noise_level,
    )


def _object_renderer(draw_scene, render, apply_defect, lighting_variation, noise_level) -> _CategoryRenderer:
    return _CategoryRenderer(draw_scene, render, apply_defect, dict.copy, lighting_variation, noise_level)


# Lighting varies little, as under the fixed lights of an inspection station:
# at 64 px a few percent of brightness outweigh most defects for pixel-space
# baselines (PCA + LOF on pixels lands between about 0.65 and 0.9 image AUROC
# per category with these settings; stronger lighting drives it to chance).
_RENDERERS = {
    "carpet": _texture_renderer(_carpet_albedo, _carpet_defect, lighting_variation=0.15, noise_level=0.015),
    "leather": _texture_renderer(_leather_albedo, _leather_defect, lighting_variation=0.08, noise_level=0.012),
    "cable": _object_renderer(_cable_scene, _cable_albedo, _cable_defect, lighting_variation=0.05, noise_level=0.012),
    "capsule": _object_renderer(_capsule_scene, _capsule_albedo, _capsule_defect, lighting_variation=0.05, noise_level=0.01),
}


def render_sample(
    category: str,
    image_size: int,
    base_seed: Sequence[int],
    defect_type: str | None = None,
    defect_seed: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one image, with or without a defect.

    The defect-free content depends only on ``base_seed``, so rendering the
    same ``base_seed`` with and without a defect gives two images that differ
    only inside the returned mask.

    Parameters
    ----------
    category : str
        One of ``CATEGORY_DEFECT_TYPES``.
    image_size : int
        Side of the square image in pixels.
    base_seed : sequence of int
        Seeds the good content: texture or pose, lighting and sensor noise.
    defect_type : str or None
        A defect type of ``category``; None renders a good image.
    defect_seed : sequence of int or None
        Seeds the defect's place, size and strength; required with ``defect_type``.

    Returns
    -------
    image : ndarray of uint8, shape (image_size, image_size, 3)
        RGB image.
    mask : ndarray of uint8, shape (image_size, image_size), or None
        0/255 ground truth of the defect, never empty; None for a good image.
    """
    _check_category(category)
    renderer = _RENDERERS[category]
    base_rng = np.random.default_rng(list(base_seed))
    # Draw everything of the good image first, so that the defect's own
    # random stream cannot shift it.
    scene = renderer.draw_scene(base_rng, image_size)
    camera = _Camera.draw(base_rng, image_size, renderer.lighting_variation, renderer.noise_level)
    good_albedo = renderer.render(scene, image_size)
    if defect_type is None:
        return camera.expose(good_albedo), None
    if defect_type not in CATEGORY_DEFECT_TYPES[category]:
        known = ", ".join(CATEGORY_DEFECT_TYPES[category])
        raise ValueError(f"unknown defect type {defect_type!r} for {category}; known: {known}")
    if defect_seed is None:
        raise ValueError("defect_seed is required when defect_type is given")
    defect_rng = np.random.default_rng(list(defect_seed))
    # A defect drawn too faint or too small for this image size would leave an
    # empty mask; draw again (deterministically) until it shows.
    minimum_pixels = max(3, (image_size // 64) ** 2 * 3)
    for _ in range(20):
        defective_scene = renderer.copy_scene(scene)
        renderer.apply_defect(defective_scene, defect_rng, defect_type, image_size)
        defective_albedo = renderer.render(defective_scene, image_size)
        changed = np.abs(defective_albedo - good_albedo).max(axis=-1) > _MASK_THRESHOLD
        if changed.sum() >= minimum_pixels:
            break
    else:
        raise RuntimeError(f"could not draw a visible {category}/{defect_type} defect at {image_size} px")
    # Outside the mask the defect may leave sub-threshold residue; restore the
    # good pixels there so the mask covers every change.
    defective_albedo = np.where(changed[..., None], defective_albedo, good_albedo)
    return camera.expose(defective_albedo), changed.astype(np.uint8) * 255


# ---------------------------------------------------------------------------
# Writing datasets
# ---------------------------------------------------------------------------


def _stable_id(name: str) -> int:
    # hash() of a str changes between processes; crc32 does not.
    return zlib.crc32(name.encode("utf-8"))


def _save_png(array: np.ndarray, path: Path) -> None:
    # Sensor noise barely compresses; a light level saves a third of the time
    # for files about a tenth larger.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_category(category_dir: Path, category: str, spec: SyntheticSpec) -> None:
    category_id = _stable_id(category)
    for folder, count in split_counts(category, spec).items():
        split, kind = folder.split("/")
        defect_type = None if kind == "good" else kind
        image_dir = category_dir / split / kind
        image_dir.mkdir(parents=True)
        if defect_type is not None:
            mask_dir = category_dir / "ground_truth" / defect_type
            mask_dir.mkdir(parents=True)
        digits = max(3, len(str(count - 1)))
        for index in range(count):
            seed = [spec.seed, category_id, _stable_id(folder), index]
            image, mask = render_sample(
                category,
                spec.image_size,
                base_seed=seed + [0],
                defect_type=defect_type,
                defect_seed=seed + [1],
            )
            name = f"{index:0{digits}d}"
            _save_png(image, image_dir / f"{name}.png")
            if mask is not None:
                _save_png(mask, mask_dir / f"{name}_mask.png")


def generate_dataset(
    out_dir: str | os.PathLike,
    spec: SyntheticSpec = SyntheticSpec(),
    categories: Sequence[str] | None = None,
) -> Path:
    """Write synthetic categories in MVTec AD layout under ``out_dir``.

    Each category is built in a hidden temporary folder beside its target and
    renamed into place only when complete, so a crash never leaves half a
    category and concurrent writers never tear files. A category folder that
    already exists is kept as it is.

    Parameters
    ----------
    out_dir : str or path-like
        Dataset root; created if missing.
    spec : SyntheticSpec
        Image size, seed and count scale.
    categories : sequence of str or None
        Categories to write; None writes all four.

    Returns
    -------
    Path
        ``out_dir``, holding ``CATEGORY/train/good``, ``CATEGORY/test/<type>``
        and ``CATEGORY/ground_truth/<defect_type>/<name>_mask.png``.

    Raises
    ------
    ValueError
        If a category is unknown (checked before anything is written).
    """
    categories = tuple(CATEGORY_DEFECT_TYPES) if categories is None else tuple(categories)
    for category in categories:
        _check_category(category)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for category in categories:
        target = out_dir / category
        if target.exists():
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{category}.partial-", dir=out_dir))
        try:
            _write_category(staging, category, spec)
            try:
                os.rename(staging, target)
            except OSError:
                # Another writer finished the same category first; theirs is complete.
                if not target.is_dir():
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _spec_fingerprint(spec: SyntheticSpec) -> str:
    described = json.dumps({**asdict(spec), "generator_version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(described.encode("utf-8")).hexdigest()[:12]


def ensure_synthetic_dataset(spec: SyntheticSpec = SyntheticSpec(), cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the root of the cached synthetic dataset for ``spec``, generating it once.

    Parameters
    ----------
    spec : SyntheticSpec
        What to generate.
    cache_dir : str or path-like or None
        Cache folder; None uses :func:`default_cache_dir`.

    Returns
    -------
    Path
        ``cache_dir / "synthetic-<hash>"`` holding all four categories, where the
        hash covers ``spec`` and ``GENERATOR_VERSION``. Its ``.complete`` marker,
        written last, records both.

    Notes
    -----
    Safe when several processes call it at once: they serialise on an
    ``fcntl.flock`` of a lock file beside the root, and whoever comes second
    finds the marker and returns without generating.
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    root = cache_dir / f"synthetic-{_spec_fingerprint(spec)}"
    marker = root / _COMPLETE_MARKER
    if marker.is_file():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{root.name}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if not marker.is_file():
                # Under the lock nobody else writes here, so staging folders
                # left are a killed process's: remove them before retrying.
                for stale in root.glob(".*.partial-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                generate_dataset(root, spec)
                described = json.dumps(
                    {**asdict(spec), "generator_version": GENERATOR_VERSION}, indent=2, sort_keys=True
                )
                partial_marker = root / f"{_COMPLETE_MARKER}.partial"
                partial_marker.write_text(described + "\n")
                os.replace(partial_marker, marker)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return root
