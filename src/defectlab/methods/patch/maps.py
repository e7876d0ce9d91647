"""From patch scores to anomaly maps: bilinear upsampling and Gaussian smoothing (NumPy, SciPy)."""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from defectlab.methods.patch.arrays import check_positive_int


def _bilinear_matrix(input_size: int, output_size: int) -> np.ndarray:
    """``(output_size, input_size)`` weights of 1-D bilinear resampling with half-pixel centres.

    Output pixel ``i`` samples the input at ``(i + 0.5) * input/output - 0.5``,
    clamped to the first and last pixel: the convention of TensorFlow's
    ``resize(..., 'bilinear')``, Keras's ``ops.image.resize`` and PyTorch's
    ``interpolate(..., align_corners=False)`` (PatchCore's), without
    antialiasing.
    """
    positions = (np.arange(output_size, dtype=np.float64) + 0.5) * (input_size / output_size) - 0.5
    positions = np.clip(positions, 0.0, input_size - 1)
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, input_size - 1)
    upper_weight = positions - lower
    matrix = np.zeros((output_size, input_size), dtype=np.float64)
    rows = np.arange(output_size)
    np.add.at(matrix, (rows, lower), 1.0 - upper_weight)
    np.add.at(matrix, (rows, upper), upper_weight)
    return matrix


def resize_bilinear(arrays, height: int, width: int) -> np.ndarray:
    """Bilinearly resize axes 1 and 2 of ``arrays`` ``(n, h, w, ...)`` to ``(n, height, width, ...)``.

    Half-pixel centres, edges clamped, no antialiasing (see `_bilinear_matrix`);
    computed as two small matrix products, so it needs neither TensorFlow nor
    SciPy and gives float32 for float32 input.
    """
    arrays = np.asarray(arrays)
    if arrays.ndim < 3:
        raise ValueError(f"arrays must be (n, height, width, ...), got shape {arrays.shape}")
    height = check_positive_int(height, "height")
    width = check_positive_int(width, "width")
    dtype = arrays.dtype if np.issubdtype(arrays.dtype, np.floating) else np.float32
    rows = _bilinear_matrix(arrays.shape[1], height).astype(dtype)
    columns = _bilinear_matrix(arrays.shape[2], width).astype(dtype)
    resized = np.einsum("oh,nh...->no...", rows, arrays.astype(dtype, copy=False))
    resized = np.einsum("pw,now...->nop...", columns, resized)
    return np.ascontiguousarray(resized)


def upsample_maps(maps, size) -> np.ndarray:
    """Patch-score grids ``(n, grid_height, grid_width)`` to image size ``(n, size, size)``, bilinearly.

    Parameters
    ----------
    maps : array-like of shape (n, grid_height, grid_width)
    size : int or (height, width)

    Returns
    -------
    numpy.ndarray of float32, shape (n, height, width)
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, grid_height, grid_width), got shape {maps.shape}")
    height, width = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    return resize_bilinear(maps, height, width)


def gaussian_smooth_maps(maps, sigma: float = 4.0) -> np.ndarray:
    """Gaussian-blur each map ``(n, h, w)`` on its own, as PatchCore's segmentor does.

    Parameters
    ----------
    maps : array-like of shape (n, height, width)
        Anomaly maps already at image size (`upsample_maps`).
    sigma : float, default=4.0
        Standard deviation in pixels of these maps (PatchCore: 4 at 224 px);
        0 returns an unblurred copy. The kernel reaches 4 sigma and the edges
        reflect (SciPy's defaults, which PatchCore uses).

    Returns
    -------
    numpy.ndarray of float32, shape (n, height, width)
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, height, width), got shape {maps.shape}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma >= 0:
        raise ValueError(f"sigma must be a non-negative number of pixels, got {sigma!r}")
    if sigma == 0:
        return maps.copy()
    # sigma 0 on the first axis: images are never blurred into each other.
    smoothed = ndimage.gaussian_filter(maps.astype(np.float64), sigma=(0.0, float(sigma), float(sigma)))
    return smoothed.astype(np.float32)
