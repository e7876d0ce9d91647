"""Renderers of the texture categories, carpet and leather, without defects.

Each function draws a whole defect-free albedo from the image's base random
stream: carpet as woven tufts of fibres in two shades, leather as a smooth
brown surface with fine grain, creases and pores. For textures the albedo is
the scene itself; their defects are painted on a copy by
:mod:`defectlab.data.synthetic.defects`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from defectlab.data.synthetic.primitives import _filtered_noise, _low_frequency_noise, _normalised, _pixel_grid


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
