"""Pixel-level metrics and heatmap figures, for methods that make anomaly maps."""

from __future__ import annotations

import logging

import numpy as np

from defectlab.evaluation import figures, metrics

logger = logging.getLogger(__name__)


def rows_with_ground_truth(table, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``split`` whose pixels are all known: good images, and defects with a mask file.

    Returns ``(kept, defects_without_mask)``, boolean arrays over ``table``'s rows;
    a defect without a mask is left out (counting its pixels as good would misread the map).
    """
    in_split = table["split"].to_numpy() == split
    has_mask = table["mask_path"].fillna("").astype(str).str.len().to_numpy() > 0
    defect = table["label"].to_numpy() == 1
    return in_split & (~defect | has_mask), in_split & defect & ~has_mask


def pixel_metrics(scored_table, masks: np.ndarray, anomaly_maps: np.ndarray) -> dict:
    """``test_pixel_auroc`` (with its bootstrap 95 % interval over images), ``test_aupro`` and ``val_pixel_auroc``.

    Computed over the images that have ground truth: good images count with
    their all-clear masks; defect images without a mask file are left out
    (their defect pixels are unknown, and counting them as good pixels would
    misread the map), with one warning and the counts ``test_pixel_images``
    (defect images in the metrics) and ``test_pixel_images_without_mask``
    (left out). The test metrics are left out when no test defect has a mask;
    ``val_pixel_auroc`` (what a study tuning for localisation maximises) when
    the val split has no masked defect.
    """
    result = {}
    val_kept, _ = rows_with_ground_truth(scored_table, "val")
    if masks[val_kept].any() and not masks[val_kept].all():
        result["val_pixel_auroc"] = metrics.pixel_auroc(masks[val_kept], anomaly_maps[val_kept])
    kept, without_mask = rows_with_ground_truth(scored_table, "test")
    defect = scored_table["label"].to_numpy() == 1
    if not masks[kept & defect].any():
        logger.info("no ground-truth defect pixels among the test images: pixel metrics skipped")
        return result
    if without_mask.any():
        logger.warning(
            "%d of %d test defect images have no ground-truth mask (e.g. %s): left out of the pixel metrics",
            int(without_mask.sum()), int((kept & defect).sum() + without_mask.sum()),
            scored_table["path"].to_numpy()[without_mask][0],
        )
    low, high = metrics.pixel_auroc_interval(masks[kept], anomaly_maps[kept])
    return {
        **result,
        "test_pixel_auroc": metrics.pixel_auroc(masks[kept], anomaly_maps[kept]),
        "test_pixel_auroc_ci_low": low,
        "test_pixel_auroc_ci_high": high,
        "test_aupro": metrics.aupro(masks[kept], anomaly_maps[kept]),
        "test_pixel_images": int((kept & defect).sum()),
        "test_pixel_images_without_mask": int(without_mask.sum()),
    }


def heatmap_figures(result, scored_images, anomaly_maps, masks, extra_panels_of=None) -> dict:
    """``heatmaps/<ranking>.png``: input, extra panels, map and mask of the ranked test images.

    ``extra_panels_of(images) -> [(title, images in [0, 1])]`` adds the method's
    own columns (e.g. the SSIM autoencoder's reconstruction).
    """
    test_positions = np.flatnonzero(result.test_rows())
    test_table = result.scored_table.iloc[test_positions]
    scores = test_table["score"].to_numpy()
    rankings = figures.ranked_indices(test_table["label"].to_numpy(), scores, count=figures.HEATMAP_ROWS)
    heatmaps = {}
    for ranking_name, indices in rankings.items():
        rows = test_positions[indices]
        heatmaps[f"heatmaps/{ranking_name}.png"] = figures.heatmap_figure(
            scored_images[rows], anomaly_maps[rows], masks[rows], scores[indices],
            test_table["defect_type"].to_numpy()[indices], figures.RANKED_TITLES[ranking_name],
            extra_panels=extra_panels_of(scored_images[rows]) if extra_panels_of else None,
            threshold=result.threshold,
        )
    return heatmaps
