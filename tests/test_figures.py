"""The figures a person reads: the deployed threshold is marked, outliers do not squash the histogram."""

from __future__ import annotations

import numpy as np
import pytest

from defectlab.evaluation import figures


def test_one_outlier_does_not_stretch_the_histograms_axis_and_the_figure_says_so():
    scores = np.r_[np.arange(100.0), 1e4]
    low, high, clipped = figures.histogram_range(scores)
    assert (low, clipped) == (0.0, 1) and high == pytest.approx(np.quantile(scores, 0.99))

    labels = np.r_[np.zeros(50), np.ones(51)]
    figure = figures.score_histogram_figure(labels, scores, threshold=60.0)
    axes = figure.axes[0]
    assert axes.get_xlim()[1] < 200
    assert "1 score(s) above" in axes.get_title()
    assert sum(patch.get_height() for patch in axes.patches) == len(scores)  # the outlier is in the last bin


def test_one_outlier_among_a_few_dozen_scores_is_left_out_too():
    scores = np.r_[np.linspace(0.0, 1.0, 58), 100.0]
    low, high, clipped = figures.histogram_range(scores)
    assert (low, high, clipped) == (0.0, 1.0, 1)


def test_without_outliers_or_below_the_threshold_nothing_is_clipped():
    scores = np.arange(100.0)
    assert figures.histogram_range(scores) == (0.0, 99.0, 0)
    assert figures.histogram_range(np.r_[scores, 1e4], threshold=2e4) == (0.0, 2e4, 0)  # the line stays visible
    assert figures.histogram_range(np.full(5, 3.0)) == (2.5, 3.5, 0)


def test_degenerate_scores_still_draw_a_histogram():
    for scores in (np.r_[np.full(5, 3.0), np.inf], np.r_[np.full(5, 3.0), np.nan], np.array([np.inf, np.nan])):
        low, high, _ = figures.histogram_range(scores)
        assert low < high
        figures.score_histogram_figure(np.zeros(len(scores)), scores, threshold=float("nan"))
    assert figures.histogram_range(np.r_[np.full(5, 3.0), np.inf])[2] == 1  # the infinite one is counted


def test_ranked_grid_frames_and_labels_the_images_above_the_threshold():
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    figure = figures.ranked_grid_figure(images, [3.0, 2.0, 1.0], ["crack", "hole", "good"], "top", threshold=1.5)
    tiles = figure.axes[:3]
    assert [tile.get_title().split()[-1] for tile in tiles] == ["flagged", "flagged", "passed"]
    frames = [tile.patches[0].get_edgecolor() for tile in tiles]
    assert frames[0] == frames[1] != frames[2]
    assert "threshold 1.5" in figure.texts[0].get_text()
    unmarked = figures.ranked_grid_figure(images, [3.0, 2.0, 1.0], ["a", "b", "c"], "top")
    assert not any(tile.patches for tile in unmarked.axes)


def test_heatmaps_outline_only_the_region_above_the_threshold():
    maps = np.zeros((2, 16, 16), dtype=np.float32)
    maps[0, 4:8, 4:8] = 2.0
    maps[0] += np.linspace(0.0, 1.0, 16)[None, :]  # a ramp below the threshold: no level of it is drawn
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    figure = figures.heatmap_figure(images, maps, None, [2.0, 1.0], ["crack", "good"], "top", threshold=1.5)
    map_axes = figure.axes[1], figure.axes[4]  # (input, map, mask) per row
    drawn_levels = [[level for collection in axes.collections for level in np.atleast_1d(collection.levels)]
                    for axes in map_axes]
    assert drawn_levels == [[0.5], []]
