"""Patch scores to anomaly maps: upsampling and smoothing."""

from __future__ import annotations

import numpy as np
import pytest

from defectlab.methods.patch.maps import gaussian_smooth_maps, upsample_maps


def test_upsample_maps_matches_keras_bilinear_resize():
    keras = pytest.importorskip("keras")
    maps = np.random.default_rng(7).random((2, 6, 6)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(
        keras.ops.image.resize(maps[..., None], (64, 64), interpolation="bilinear")
    )[..., 0]
    upsampled = upsample_maps(maps, 64)
    assert upsampled.shape == (2, 64, 64) and upsampled.dtype == np.float32
    np.testing.assert_allclose(upsampled, expected, atol=1e-5)


def test_gaussian_smoothing_blurs_each_map_on_its_own():
    maps = np.zeros((2, 32, 32), dtype=np.float32)
    maps[0, 16, 16] = 1.0
    smoothed = gaussian_smooth_maps(maps, sigma=2.0)
    assert smoothed.shape == (2, 32, 32) and smoothed.dtype == np.float32
    assert np.all(smoothed[1] == 0)  # nothing leaks into the other image
    assert smoothed[0].sum() == pytest.approx(1.0, rel=1e-4)  # mass kept, away from the edges
    assert np.unravel_index(np.argmax(smoothed[0]), (32, 32)) == (16, 16)
    np.testing.assert_array_equal(gaussian_smooth_maps(maps, sigma=0), maps)
    with pytest.raises(ValueError, match="sigma must be a non-negative number"):
        gaussian_smooth_maps(maps, sigma=-1)
