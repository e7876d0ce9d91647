"""The SSIM detector's image score: the MVTec AD paper's region rule made one number (NumPy only).

See `defectlab.methods.ssim.training` for the rule. Kept apart from the
training code so that an exported detector scores without TensorFlow.

`region_scores` scores a whole batch at once: every step of the search
labels the connected regions of all the batch's maps in one
``scipy.ndimage.label`` call (a 3-D structure that connects pixels within a
map, never across maps), and the search starts between two bounds that
usually leave only a few levels to try:

- above: the ``min_defect_area``-th largest value of the map (a region of
  that many pixels needs that many pixels at or above the level);
- below: the best rectangle of at least ``min_defect_area`` pixels, i.e. the
  maximum of the map's minimum filter over that rectangle (a rectangle is a
  connected region, so its minimum is a level that qualifies).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

MIN_DEFECT_AREA_FRACTION = 0.001
# 4-connected within each map of a stack (n, h, w), nothing between maps.
_STACK_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STACK_STRUCTURE[1] = ndimage.generate_binary_structure(2, 1)


def min_defect_area_for(image_size: int) -> int:
    """The minimum defect area in pixels: `MIN_DEFECT_AREA_FRACTION` of the image, at least 1."""
    return max(1, round(MIN_DEFECT_AREA_FRACTION * image_size * image_size))


def largest_region_area(anomaly_map: np.ndarray, level: float) -> int:
    """Pixel count of the largest connected region (4-connected) of ``anomaly_map >= level``."""
    return int(largest_region_areas(np.asarray(anomaly_map)[np.newaxis], np.array([level]))[0])


def largest_region_areas(anomaly_maps: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Largest connected region (4-connected) of ``anomaly_maps[i] >= levels[i]`` for each map: ``(n,)`` int."""
    count = len(anomaly_maps)
    above = anomaly_maps >= np.asarray(levels, dtype=anomaly_maps.dtype)[:, np.newaxis, np.newaxis]
    regions, region_count = ndimage.label(above, structure=_STACK_STRUCTURE)
    largest = np.zeros(count, dtype=np.int64)
    if region_count == 0:
        return largest
    areas = np.bincount(regions.ravel(), minlength=region_count + 1)
    # Labels are numbered in scan order, so map i owns labels last[i-1] + 1 .. last[i].
    last = regions.reshape(count, -1).max(axis=1)
    first = np.concatenate([[0], np.maximum.accumulate(last)[:-1]]) + 1
    has_regions = last >= first
    largest[has_regions] = np.maximum.reduceat(areas, first[has_regions])[: has_regions.sum()]
    return largest


def _rectangle_of_area(min_defect_area: int, height: int, width: int) -> tuple[int, int]:
    """The most nearly square rectangle of at least ``min_defect_area`` pixels that fits the map."""
    rows = min(height, max(1, math.isqrt(min_defect_area)))
    columns = min(width, -(-min_defect_area // rows))
    while rows * columns < min_defect_area:  # a thin map: grow the other side
        rows = min(height, rows + 1)
        columns = min(width, -(-min_defect_area // rows))
    return rows, columns


def region_scores(anomaly_maps: np.ndarray, min_defect_area: int) -> np.ndarray:
    """`region_score` of each map ``(n, h, w)``: float64 ``(n,)``, higher = more anomalous.

    Exact: a binary search over each map's values between the two bounds
    (sorted; the rest of the map is never sorted), all maps in step.
    """
    anomaly_maps = np.asarray(anomaly_maps)
    if anomaly_maps.ndim != 3:
        raise ValueError(f"anomaly maps must have shape (n, h, w), got {anomaly_maps.shape}")
    count, height, width = anomaly_maps.shape
    pixels = height * width
    if min_defect_area > pixels:
        raise ValueError(f"min_defect_area {min_defect_area} exceeds the map's {pixels} pixels")
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    flat = anomaly_maps.reshape(count, pixels)
    if min_defect_area == 1:
        return flat.max(axis=1).astype(np.float64)
    rectangle = _rectangle_of_area(min_defect_area, height, width)
    # The minimum over each placement of the rectangle; only placements wholly inside the map
    # count (the filter centres its window, and one hanging over the edge would see padding).
    window_minimum = ndimage.minimum_filter(anomaly_maps, size=(1, *rectangle), mode="nearest")
    row_start, column_start = rectangle[0] // 2, rectangle[1] // 2
    inside = window_minimum[
        :, row_start:height - (rectangle[0] - 1 - row_start), column_start:width - (rectangle[1] - 1 - column_start)
    ]
    lower_bound = inside.reshape(count, -1).max(axis=1)
    # The answer is one of the values from the lower bound up: only those are sorted (the
    # `candidates` largest of each map, ascending), and positions below index into them.
    at_or_above = np.count_nonzero(flat >= lower_bound[:, np.newaxis], axis=1)
    candidates = int(max(at_or_above.max(), min_defect_area))
    sorted_values = np.sort(np.partition(flat, pixels - candidates, axis=1)[:, pixels - candidates:], axis=1)
    rows = np.arange(count)
    # low always qualifies (the lower bound); high is the min_defect_area-th largest value.
    low = candidates - at_or_above
    high = np.full(count, candidates - min_defect_area)
    low = np.minimum(low, high)
    while True:
        searching = np.flatnonzero(low < high)
        if len(searching) == 0:
            break
        middle = (low[searching] + high[searching] + 1) // 2
        levels = sorted_values[searching, middle]
        qualifies = largest_region_areas(anomaly_maps[searching], levels) >= min_defect_area
        low[searching] = np.where(qualifies, middle, low[searching])
        high[searching] = np.where(qualifies, high[searching], middle - 1)
    return sorted_values[rows, low].astype(np.float64)


def region_score(anomaly_map: np.ndarray, min_defect_area: int) -> float:
    """Highest level ``t`` such that ``anomaly_map >= t`` holds a connected region of ``min_defect_area`` pixels.

    With ``min_defect_area == 1`` this is the map's maximum. The largest region
    only grows as the level falls, so a binary search over the map's values finds it.
    """
    return float(region_scores(np.asarray(anomaly_map)[np.newaxis], min_defect_area)[0])
