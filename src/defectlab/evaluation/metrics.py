"""Detection metrics on anomaly scores (higher score = more anomalous, defects positive).

A sample is flagged anomalous when ``score > threshold``; every threshold in
defectlab follows that rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from defectlab.errors import DefectlabError

CONTRACT_IMAGE_METRICS = (
    "image_auroc",
    "tpr_tnr_best",
    "tpr_at_best",
    "tnr_at_best",
    "threshold_best",
    "tpr_at_val_threshold",
    "tnr_at_val_threshold",
)


# Seeded percentile bootstrap of the image-level headline metrics (`bootstrap_interval`).
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_SEED = 0
INTERVAL_METRICS = ("test_image_auroc", "test_tpr_tnr_best", "val_image_auroc")
# Quantile bins of the map values in which `pixel_auroc_interval` counts pixels.
PIXEL_INTERVAL_BINS = 4096


class MetricError(DefectlabError, ValueError):
    """Metrics cannot be computed from these inputs (e.g. one class only)."""


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise MetricError(f"{labels.size} labels but {scores.size} scores")
    if not np.all(np.isfinite(scores)):
        raise MetricError(f"{int(np.sum(~np.isfinite(scores)))} scores are not finite")
    if not np.any(labels == 1) or not np.any(labels == 0):
        raise MetricError("need both good (0) and defect (1) samples to compute this metric")
    return labels, scores


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve, defects (label 1) positive."""
    labels, scores = _check_binary(labels, scores)
    return float(roc_auc_score(labels, scores))


def rates_at_threshold(labels, scores, threshold: float) -> tuple[float, float]:
    """(TPR, TNR) when ``score > threshold`` is flagged anomalous."""
    labels, scores = _check_binary(labels, scores)
    flagged = scores > threshold
    true_positive_rate = float(np.mean(flagged[labels == 1]))
    true_negative_rate = float(np.mean(~flagged[labels == 0]))
    return true_positive_rate, true_negative_rate


def best_tpr_tnr(labels, scores) -> dict[str, float]:
    """Maximum over thresholds of TPR + TNR (an oracle threshold, as in the MVTec AD paper).

    Candidate thresholds are every distinct score and one below the lowest, so
    each way of cutting the sorted scores is tried once. Ties in the maximum go
    to the lowest threshold.

    Returns
    -------
    dict
        ``tpr_tnr_best``, ``tpr_at_best``, ``tnr_at_best``, ``threshold_best``.
    """
    labels, scores = _check_binary(labels, scores)
    distinct_scores = np.unique(scores)
    candidates = np.concatenate([[distinct_scores[0] - 1.0], distinct_scores])
    flagged = scores[np.newaxis, :] > candidates[:, np.newaxis]
    tpr = flagged[:, labels == 1].mean(axis=1)
    tnr = (~flagged[:, labels == 0]).mean(axis=1)
    best = int(np.argmax(tpr + tnr))
    return {
        "tpr_tnr_best": float(tpr[best] + tnr[best]),
        "tpr_at_best": float(tpr[best]),
        "tnr_at_best": float(tnr[best]),
        "threshold_best": float(candidates[best]),
    }


def _auroc_of_rows(labels: np.ndarray, score_rows: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``score_rows`` against the same ``labels`` (Mann-Whitney, ties halved)."""
    positives = labels == 1
    n_positive, n_negative = int(positives.sum()), int((~positives).sum())
    ranks = rankdata(score_rows, axis=1)
    return (ranks[:, positives].sum(axis=1) - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def bootstrap_interval(labels, scores, metric: str = "image_auroc", resamples: int = BOOTSTRAP_RESAMPLES,
                       level: float = CONFIDENCE_LEVEL, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of ``image_auroc`` or ``tpr_tnr_best``.

    Good and defect images are resampled separately (stratified), so every
    resample keeps the set's class sizes and both metrics stay defined. With
    about 15 good and 40 defect images, as in an MVTec AD test half, the
    95 % interval of an AUROC near 0.8 is about 0.15 wide: differences
    inside it are not evidence.

    Returns
    -------
    (low, high) : tuple of float
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.
    """
    labels, scores = _check_binary(labels, scores)
    if metric not in ("image_auroc", "tpr_tnr_best"):
        raise MetricError(f"no bootstrap interval for {metric!r}: image_auroc or tpr_tnr_best")
    picked, resampled_labels = _stratified_resamples(labels, resamples, level, seed)
    if metric == "image_auroc":
        values = _auroc_of_rows(resampled_labels, scores[picked])
    else:
        values = np.array([best_tpr_tnr(resampled_labels, row)["tpr_tnr_best"] for row in scores[picked]])
    return _percentile_interval(values, level)


def _stratified_resamples(labels: np.ndarray, resamples: int, level: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(resamples, n)`` indices drawn with replacement, good and defect apart, and the rows' labels."""
    if resamples < 2 or not 0 < level < 1:
        raise MetricError(f"need resamples >= 2 and 0 < level < 1, got {resamples} and {level}")
    rng = np.random.default_rng(seed)
    good, defect = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    picked = np.concatenate([
        rng.choice(good, size=(resamples, good.size)), rng.choice(defect, size=(resamples, defect.size))
    ], axis=1)
    return picked, np.concatenate([np.zeros(good.size, int), np.ones(defect.size, int)])


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def threshold_from_good_scores(good_scores, false_alarm_rate: float = 0.0) -> float:
    """Decision threshold from defect-free images only, as a deployed detector must choose it.

    With ``score > threshold`` flagged, at most ``floor(false_alarm_rate * n)``
    of the ``n`` held-out good images are false alarms: the threshold is the
    ``(n - k)``-th smallest good score for ``k = floor(false_alarm_rate * n)``.
    ``false_alarm_rate`` 0 gives the largest good score (no held-out good image
    flagged), which one outlier good image can push above most defects; a small
    rate (e.g. 0.01) leaves that outlier flagged instead.
    """
    good_scores = np.asarray(good_scores, dtype=np.float64).ravel()
    if good_scores.size == 0:
        raise MetricError("no good scores to choose a threshold from")
    if not np.all(np.isfinite(good_scores)):
        raise MetricError("good scores contain non-finite values")
    if not 0 <= false_alarm_rate < 1:
        raise MetricError(f"false_alarm_rate must be in [0, 1), got {false_alarm_rate}")
    allowed_false_alarms = int(np.floor(false_alarm_rate * good_scores.size + 1e-9))
    return float(np.sort(good_scores)[good_scores.size - 1 - allowed_false_alarms])


def per_defect_type_auroc(defect_types, labels, scores) -> dict[str, float]:
    """AUROC of good images against each defect type alone: ``{defect_type: auroc}``."""
    defect_types = np.asarray(defect_types).astype(str)
    labels, scores = _check_binary(labels, scores)
    good = labels == 0
    result = {}
    for defect_type in sorted(set(defect_types[labels == 1])):
        of_type = defect_types == defect_type
        selected = good | of_type
        result[defect_type] = image_auroc(labels[selected], scores[selected])
    return result


def image_metrics(
    table: pd.DataFrame, scores: np.ndarray, threshold: float
) -> dict[str, float]:
    """The contract's image-level metrics for the ``val`` and ``test`` rows of a scored table.

    Parameters
    ----------
    table : pandas.DataFrame
        Columns ``label``, ``defect_type``, ``split``; one row per scored image.
    scores : numpy.ndarray of shape (len(table),)
        Anomaly scores, higher = more anomalous.
    threshold : float
        Threshold chosen from good images only (``score > threshold`` is a defect).

    Returns
    -------
    dict
        ``test_image_auroc``, ``test_tpr_tnr_best`` and its parts,
        ``test_tpr_at_val_threshold``, ``test_tnr_at_val_threshold``,
        ``test_auroc_<defect_type>``, ``val_image_auroc``, and the seeded
        bootstrap 95 % interval ``<name>_ci_low``/``<name>_ci_high`` of each of
        `INTERVAL_METRICS`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(table):
        raise MetricError(f"{len(scores)} scores for {len(table)} table rows")
    split = table["split"].to_numpy()
    labels = table["label"].to_numpy()
    test = split == "test"
    metrics = {"test_image_auroc": image_auroc(labels[test], scores[test])}
    metrics.update(
        {f"test_{key}": value for key, value in best_tpr_tnr(labels[test], scores[test]).items()}
    )
    tpr, tnr = rates_at_threshold(labels[test], scores[test], threshold)
    metrics["test_tpr_at_val_threshold"] = tpr
    metrics["test_tnr_at_val_threshold"] = tnr
    for defect_type, auroc in per_defect_type_auroc(
        table["defect_type"].to_numpy()[test], labels[test], scores[test]
    ).items():
        metrics[f"test_auroc_{defect_type}"] = auroc
    val = split == "val"
    if np.any(val):
        metrics["val_image_auroc"] = image_auroc(labels[val], scores[val])
    for name in INTERVAL_METRICS:
        if name in metrics:
            rows = test if name.startswith("test_") else val
            low, high = bootstrap_interval(labels[rows], scores[rows], name.split("_", 1)[1])
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    return metrics


# Pixel-level metrics of anomaly maps (methods that localise defects)


def _check_masks_and_maps(masks, anomaly_maps) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks).astype(bool)
    anomaly_maps = np.asarray(anomaly_maps, dtype=np.float64)
    if masks.shape != anomaly_maps.shape:
        raise MetricError(f"masks have shape {masks.shape} but anomaly maps {anomaly_maps.shape}")
    if masks.ndim != 3:
        raise MetricError(f"expected masks and maps of shape (n, height, width), got {masks.shape}")
    if not np.all(np.isfinite(anomaly_maps)):
        raise MetricError(f"{int(np.sum(~np.isfinite(anomaly_maps)))} anomaly map values are not finite")
    if not masks.any() or masks.all():
        raise MetricError("need both defect and defect-free pixels to compute a pixel metric")
    return masks, anomaly_maps


def pixel_auroc(masks, anomaly_maps) -> float:
    """ROC AUC over every pixel of every image, defect pixels (mask True) positive.

    Parameters
    ----------
    masks : array-like of bool, shape (n, height, width)
        Ground truth; good images have all-False masks.
    anomaly_maps : array-like of float, shape (n, height, width)
        Higher = more anomalous.
    """
    masks, anomaly_maps = _check_masks_and_maps(masks, anomaly_maps)
    return float(roc_auc_score(masks.ravel(), anomaly_maps.ravel()))


def pixel_auroc_interval(masks, anomaly_maps, resamples: int = BOOTSTRAP_RESAMPLES, level: float = CONFIDENCE_LEVEL,
                         seed: int = BOOTSTRAP_SEED, bins: int = PIXEL_INTERVAL_BINS) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of `pixel_auroc`, resampling whole images.

    Pixels of one image are not independent draws (a defect is one region), so
    the unit resampled is the image, good and defect images apart as in
    `bootstrap_interval`; an image is a defect image when its mask has a
    defect pixel. Each resample's AUROC is computed from per-image histograms
    of the map values over ``bins`` quantile bins of all pixels, values in one
    bin counted as ties: tens of millions of pixels per resample would
    otherwise take seconds each. The binning moves an AUROC by at most half
    the share of (defect, good) pixel pairs that fall in one bin, about
    ``1 / bins``; a value that many pixels share gets a bin of its own.

    Returns
    -------
    (low, high) : tuple of float
    """
    masks, anomaly_maps = _check_masks_and_maps(masks, anomaly_maps)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise MetricError(f"bins must be an integer of at least 2, got {bins!r}")
    image_labels = masks.reshape(len(masks), -1).any(axis=1).astype(int)
    if image_labels.all():
        # Every image has defect pixels: the good pixels are in the same images, resample them all together.
        image_labels = np.zeros_like(image_labels)
    picked, _ = _stratified_resamples(image_labels, resamples, level, seed)
    values = anomaly_maps.reshape(len(anomaly_maps), -1)
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    # Each quantile value also closes a bin of its own: a value many pixels share (a flat
    # map's zeros) would otherwise pull the pixels just above it into its bin, as ties.
    edges = np.unique(np.concatenate([quantiles, np.nextafter(quantiles, np.inf)]))
    width = len(edges) + 1
    positives, negatives = np.zeros((len(values), width)), np.zeros((len(values), width))
    for index, (image_values, mask) in enumerate(zip(values, masks.reshape(len(masks), -1))):
        bin_of = np.searchsorted(edges, image_values, side="right")  # 0..len(edges)
        positives[index] = np.bincount(bin_of[mask], minlength=width)
        negatives[index] = np.bincount(bin_of[~mask], minlength=width)
    aurocs = []
    for chunk in np.array_split(picked, max(1, len(picked) // 100)):
        counts = np.zeros((len(chunk), len(values)))
        np.add.at(counts, (np.arange(len(chunk))[:, None], chunk), 1.0)
        positive, negative = counts @ positives, counts @ negatives  # (chunk, bins)
        below = np.cumsum(negative, axis=1) - negative  # good pixels in lower bins
        wins = np.sum(positive * (below + 0.5 * negative), axis=1)
        pairs = positive.sum(axis=1) * negative.sum(axis=1)
        aurocs.append(np.divide(wins, pairs, out=np.full(len(chunk), np.nan), where=pairs > 0))
    aurocs = np.concatenate(aurocs)
    return _percentile_interval(aurocs[np.isfinite(aurocs)], level)


def pro_curve(masks, anomaly_maps) -> tuple[np.ndarray, np.ndarray]:
    """Per-region overlap (PRO) against the false positive rate, one point per distinct map value.

    A region is a connected component (4-connected, ``scipy.ndimage.label``)
    of one image's mask. At threshold ``t`` (``map > t`` flagged) the PRO is
    the mean over all regions of the fraction of the region flagged; the false
    positive rate is the fraction of defect-free pixels (of all images)
    flagged. Returns ``(false_positive_rates, overlaps)``, both ascending,
    starting at (0, 0).
    """
    masks, anomaly_maps = _check_masks_and_maps(masks, anomaly_maps)
    # Each pixel's weight in the two sums: a defect pixel counts 1 / (region size x regions),
    # a defect-free pixel 1 / (defect-free pixels).
    overlap_weights = np.zeros(masks.shape, dtype=np.float64)
    region_sizes = []
    for image_index, mask in enumerate(masks):
        regions, region_count = ndimage.label(mask)
        for region_label in range(1, region_count + 1):
            in_region = regions == region_label
            region_sizes.append(int(in_region.sum()))
            overlap_weights[image_index][in_region] = 1.0 / region_sizes[-1]
    overlap_weights /= len(region_sizes)
    false_positive_weights = (~masks).astype(np.float64) / np.sum(~masks)

    # Lower the threshold one distinct value at a time (highest first).
    order = np.argsort(-anomaly_maps.ravel(), kind="stable")
    sorted_values = anomaly_maps.ravel()[order]
    false_positive_rates = np.cumsum(false_positive_weights.ravel()[order])
    overlaps = np.cumsum(overlap_weights.ravel()[order])
    last_of_each_value = np.append(np.diff(sorted_values) != 0, True)
    false_positive_rates = np.clip(false_positive_rates[last_of_each_value], 0.0, 1.0)
    overlaps = np.clip(overlaps[last_of_each_value], 0.0, 1.0)
    return np.concatenate([[0.0], false_positive_rates]), np.concatenate([[0.0], overlaps])


def aupro(masks, anomaly_maps, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve up to ``max_fpr``, divided by ``max_fpr`` (MVTec AD's AU-PRO).

    The curve (`pro_curve`) is integrated with the trapezoidal rule, linearly
    interpolated at ``max_fpr``. 1.0 is perfect; a map unrelated to the masks
    scores about ``max_fpr / 2``.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise MetricError(f"max_fpr must be in (0, 1], got {max_fpr}")
    false_positive_rates, overlaps = pro_curve(masks, anomaly_maps)
    # Points up to max_fpr, then the curve linearly interpolated at max_fpr.
    first_beyond = int(np.searchsorted(false_positive_rates, max_fpr, side="right"))
    if first_beyond == len(false_positive_rates):
        overlap_at_max = float(overlaps[-1])
    else:
        left_x, right_x = false_positive_rates[first_beyond - 1], false_positive_rates[first_beyond]
        left_y, right_y = overlaps[first_beyond - 1], overlaps[first_beyond]
        overlap_at_max = float(left_y + (right_y - left_y) * (max_fpr - left_x) / (right_x - left_x))
    curve_x = np.concatenate([false_positive_rates[:first_beyond], [max_fpr]])
    curve_y = np.concatenate([overlaps[:first_beyond], [overlap_at_max]])
    return float(np.trapezoid(curve_y, curve_x) / max_fpr)
