"""Input checks shared by the patch method's NumPy modules (coreset, search, bank, maps)."""

from __future__ import annotations

import numbers

import numpy as np

FLOAT32_BYTES = 4
INT64_BYTES = 8


def not_fitted_error(message: str) -> Exception:
    """scikit-learn's `NotFittedError`, imported only when raised: serving the patch method needs no
    scikit-learn otherwise, and importing it costs an exported detector's cold start a second."""
    from sklearn.exceptions import NotFittedError

    return NotFittedError(message)


def as_feature_matrix(features, name: str) -> np.ndarray:
    """``features`` as a C-contiguous float32 ``(n, d)`` array; ValueError otherwise."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_patches, feature_dim), got shape {features.shape}"
        )
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {features.shape}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contain {int(np.sum(~np.isfinite(features)))} non-finite values")
    return features


def check_ratio(ratio) -> float:
    """The coreset ratio as a float in (0, 1]; ValueError otherwise."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
