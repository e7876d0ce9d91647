"""The SSIM detector's image score: the MVTec AD paper's region rule made one number (NumPy only).

See `defectlab.methods.ssim.training` for the rule. Kept apart from the
training code so that an exported detector scores without TensorFlow.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_DEFECT_AREA_FRACTION = 0.001


def min_defect_area_for(image_size: int) -> int:
    """The minimum defect area in pixels: `MIN_DEFECT_AREA_FRACTION` of the image, at least 1."""
    return max(1, round(MIN_DEFECT_AREA_FRACTION * image_size * image_size))


def largest_region_area(anomaly_map: np.ndarray, level: float) -> int:
    """Pixel count of the largest connected region (4-connected) of ``anomaly_map >= level``."""
    regions, region_count = ndimage.label(anomaly_map >= level)
    if region_count == 0:
        return 0
    return int(np.bincount(regions.ravel())[1:].max())


def region_score(anomaly_map: np.ndarray, min_defect_area: int) -> float:
    """Highest level ``t`` such that ``anomaly_map >= t`` holds a connected region of ``min_defect_area`` pixels.

    With ``min_defect_area == 1`` this is the map's maximum. Found by binary
    search over the map's distinct values (the largest region only grows as the
    level falls).
    """
    levels = np.unique(anomaly_map)  # ascending
    if min_defect_area > anomaly_map.size:
        raise ValueError(
            f"min_defect_area {min_defect_area} exceeds the map's {anomaly_map.size} pixels"
        )
    low, high = 0, len(levels) - 1  # levels[0] (everything) always qualifies
    while low < high:
        middle = (low + high + 1) // 2
        if largest_region_area(anomaly_map, levels[middle]) >= min_defect_area:
            low = middle
        else:
            high = middle - 1
    return float(levels[low])


def region_scores(anomaly_maps: np.ndarray, min_defect_area: int) -> np.ndarray:
    """`region_score` of each map ``(n, h, w)``: float64 ``(n,)``, higher = more anomalous."""
    return np.array(
        [region_score(anomaly_map, min_defect_area) for anomaly_map in anomaly_maps], dtype=np.float64
    )
