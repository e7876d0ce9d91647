"""The camera of one shot: lighting gradient, colour cast and sensor noise.

``_Camera`` is shared by all categories and drawn from the image's base random
stream after the scene; ``expose`` turns a float albedo into the uint8 RGB
image that is written to disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from defectlab.data.synthetic.primitives import _pixel_grid


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
