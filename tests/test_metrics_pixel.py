"""Pixel-level metrics on hand-computed cases: pixel AUROC and AU-PRO."""

from __future__ import annotations

import numpy as np
import pytest

from defectlab.evaluation import metrics

# Two 1x4 images. Image 0 has one 2-pixel defect region; image 1 is good.
# Sorted map values: 0.9 (defect), 0.6, 0.5, 0.4 (defect), 0.3, 0.2, 0.1, 0.0.
TWO_IMAGE_MASKS = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 0]]], dtype=bool)
TWO_IMAGE_MAPS = np.array([[[0.9, 0.4, 0.5, 0.1]], [[0.2, 0.3, 0.6, 0.0]]])


def test_pixel_auroc_hand_computed():
    # 0.9 beats all 6 good pixels, 0.4 beats 4 of them: 10 of 12 pairs.
    assert metrics.pixel_auroc(TWO_IMAGE_MASKS, TWO_IMAGE_MAPS) == pytest.approx(10 / 12)


def test_pro_curve_hand_computed():
    false_positive_rates, overlaps = metrics.pro_curve(TWO_IMAGE_MASKS, TWO_IMAGE_MAPS)
    np.testing.assert_allclose(false_positive_rates, [0, 0, 1 / 6, 2 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    np.testing.assert_allclose(overlaps, [0, 0.5, 0.5, 0.5, 1, 1, 1, 1, 1])


def test_aupro_hand_computed():
    # PRO is 0.5 up to FPR 1/3, then 1.0.
    assert metrics.aupro(TWO_IMAGE_MASKS, TWO_IMAGE_MAPS, max_fpr=0.3) == pytest.approx(0.5)
    assert metrics.aupro(TWO_IMAGE_MASKS, TWO_IMAGE_MAPS, max_fpr=0.5) == pytest.approx(
        (0.5 / 3 + 1.0 / 6) / 0.5
    )


def test_aupro_averages_regions_not_pixels():
    # Regions of 3 pixels and 1 pixel; only the small one is found first.
    masks = np.array([[[1, 1, 1, 0, 1, 0]]], dtype=bool)
    maps = np.array([[[0.2, 0.2, 0.2, 0.5, 0.9, 0.0]]])
    # PRO 0.5 (one region of two fully found) up to FPR 0.5, then 1.0.
    assert metrics.aupro(masks, maps, max_fpr=0.3) == pytest.approx(0.5)
    assert metrics.aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    # Pixel AUROC weights pixels instead: 3 defect pixels above 1 of 2 good ones, 1 above both.
    assert metrics.pixel_auroc(masks, maps) == pytest.approx((3 * 0.5 + 1 * 1.0) / 4)


def test_aupro_interpolates_at_max_fpr():
    # One tie between a defect and a good pixel: the curve is the diagonal from (0,0) to (1,1).
    masks = np.array([[[1, 0]]], dtype=bool)
    maps = np.array([[[0.5, 0.5]]])
    assert metrics.aupro(masks, maps, max_fpr=0.3) == pytest.approx(0.15)


def test_perfect_map_scores_one():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:5, 2:5] = True
    masks[1, 6:, 6:] = True
    maps = masks.astype(float) + 0.01 * np.random.default_rng(0).random(masks.shape)
    assert metrics.pixel_auroc(masks, maps) == 1.0
    assert metrics.aupro(masks, maps) == pytest.approx(1.0)


def test_pixel_metrics_need_both_pixel_classes():
    maps = np.zeros((1, 2, 2))
    with pytest.raises(metrics.MetricError, match="both defect and defect-free"):
        metrics.pixel_auroc(np.zeros((1, 2, 2), dtype=bool), maps)
    with pytest.raises(metrics.MetricError, match="both defect and defect-free"):
        metrics.aupro(np.ones((1, 2, 2), dtype=bool), maps)


def test_pixel_metrics_reject_mismatched_shapes_and_bad_max_fpr():
    with pytest.raises(metrics.MetricError, match="shape"):
        metrics.pixel_auroc(np.zeros((1, 2, 2), dtype=bool), np.zeros((1, 2, 3)))
    with pytest.raises(metrics.MetricError, match="max_fpr"):
        metrics.aupro(TWO_IMAGE_MASKS, TWO_IMAGE_MAPS, max_fpr=0.0)


# The bootstrap interval of pixel AUROC, resampling whole images


def planted_maps(n_good: int, n_defect: int, seed: int, image_offset: float = 0.5):
    """Maps of noise, each image shifted by its own offset; a square of +1 on each defect image's mask."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_good + n_defect, 12, 12), dtype=bool)
    masks[n_good:, 3:7, 4:9] = True
    maps = rng.normal(size=masks.shape) + masks + image_offset * rng.normal(size=(len(masks), 1, 1))
    return masks, maps


def test_the_pixel_interval_is_the_percentile_bootstrap_of_exact_aurocs_over_resampled_images():
    from sklearn.metrics import roc_auc_score

    masks, maps = planted_maps(6, 6, seed=0)
    picked, _ = metrics._stratified_resamples(np.repeat([0, 1], 6), 200, 0.95, seed=0)
    exact = [roc_auc_score(masks[row].ravel(), maps[row].ravel()) for row in picked]
    # 1728 distinct values in 4096 quantile bins: no two in one bin, so the binned AUROC is exact.
    np.testing.assert_allclose(
        metrics.pixel_auroc_interval(masks, maps, resamples=200), np.quantile(exact, [0.025, 0.975]), atol=1e-9,
    )


def test_the_pixel_interval_covers_the_estimate_narrows_with_more_images_and_is_seeded():
    widths = []
    for n_images in (10, 40, 160):
        masks, maps = planted_maps(n_images, n_images, seed=1)
        low, high = metrics.pixel_auroc_interval(masks, maps)
        assert low <= metrics.pixel_auroc(masks, maps) <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] and widths[2] < 0.6 * widths[0]
    assert metrics.pixel_auroc_interval(masks, maps) == metrics.pixel_auroc_interval(masks, maps)


def test_the_pixel_interval_widens_with_what_differs_between_images_not_pixel_counts():
    # Same pixels per image; only how much whole images differ changes. A pixel-level
    # bootstrap would give both the same width: the image is the unit that varies.
    masks, calm = planted_maps(20, 20, seed=2, image_offset=0.0)
    _, restless = planted_maps(20, 20, seed=2, image_offset=1.5)
    calm_low, calm_high = metrics.pixel_auroc_interval(masks, calm)
    restless_low, restless_high = metrics.pixel_auroc_interval(masks, restless)
    assert restless_high - restless_low > 2 * (calm_high - calm_low)


def test_the_pixel_interval_of_images_that_all_hold_defects_and_bad_settings():
    masks, maps = planted_maps(0, 8, seed=3)
    low, high = metrics.pixel_auroc_interval(masks, maps)
    assert low <= metrics.pixel_auroc(masks, maps) <= high
    with pytest.raises(metrics.MetricError, match="bins must be an integer of at least 2"):
        metrics.pixel_auroc_interval(masks, maps, bins=1)
    with pytest.raises(metrics.MetricError, match="need resamples >= 2"):
        metrics.pixel_auroc_interval(masks, maps, resamples=1)
    with pytest.raises(metrics.MetricError, match="need both defect and defect-free pixels"):
        metrics.pixel_auroc_interval(np.zeros_like(masks), maps)


def test_a_value_most_pixels_share_does_not_swallow_the_pixels_just_above_it():
    from sklearn.metrics import roc_auc_score

    # A flat map: 90 % of the pixels exactly 0, the defects just above 0.
    rng = np.random.default_rng(4)
    masks = np.zeros((40, 16, 16), dtype=bool)
    masks[20:, 4:8, 4:8] = True
    maps = np.where(rng.random(masks.shape) < 0.9, 0.0, rng.random(masks.shape))
    maps[masks] = 1e-3 * rng.random(int(masks.sum())) + 1e-6
    picked, _ = metrics._stratified_resamples(np.repeat([0, 1], 20), 100, 0.95, seed=0)
    exact = np.quantile([roc_auc_score(masks[row].ravel(), maps[row].ravel()) for row in picked], [0.025, 0.975])
    # 64 bins of 160 pixels each: the zeros fill 57 of them, and the defects just above 0 must not join them.
    np.testing.assert_allclose(metrics.pixel_auroc_interval(masks, maps, resamples=100, bins=64), exact, atol=5e-3)
