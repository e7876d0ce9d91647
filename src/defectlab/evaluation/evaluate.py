"""From scores to the contract's metrics: one path for every method.

A method produces one anomaly score per image of the ``threshold``, ``val``
and ``test`` splits (higher = more anomalous). This module chooses the
deployed threshold from the held-out good images and computes the metrics;
``tracking.log_evaluation`` logs them with the plots and ranked grids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from defectlab.errors import DefectlabError
from defectlab.evaluation import metrics as metrics_module

SCORED_SPLITS = ("threshold", "val", "test")
SCORES_COLUMNS = ("path", "label", "defect_type", "score", "split")
# Held-out good scores whose spread is below this fraction of their size are one value:
# float32 networks differ far more than that between any two real images.
COLLAPSED_RELATIVE_SPREAD = 1e-6


class CollapsedModelError(DefectlabError, RuntimeError):
    """The detector gives (nearly) every held-out good image the same score: it cannot tell images apart."""


@dataclass
class Evaluation:
    """Scores of one run with their threshold and metrics.

    Attributes
    ----------
    scored_table : pandas.DataFrame
        The scored rows (splits ``threshold``, ``val``, ``test``) with a ``score`` column.
    threshold : float
        Chosen from the ``threshold`` split (good images only): ``score > threshold`` is a defect.
    metrics : dict
        Contract metrics (``test_*``, ``val_image_auroc``) plus any extras.
    """

    scored_table: pd.DataFrame
    threshold: float
    metrics: dict = field(default_factory=dict)

    def test_rows(self) -> np.ndarray:
        return (self.scored_table["split"] == "test").to_numpy()

    def scores_frame(self) -> pd.DataFrame:
        """The ``scores.csv`` table: path, label, defect_type, score, split."""
        return self.scored_table.loc[:, list(SCORES_COLUMNS)].reset_index(drop=True)


def scored_rows(table: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows a method must score (every split but ``train``)."""
    return table["split"].isin(SCORED_SPLITS).to_numpy()


def check_scores_vary(table: pd.DataFrame, scores) -> None:
    """Raise `CollapsedModelError` if the held-out good images all get (nearly) the same score.

    A collapsed network (e.g. ``learning_rate`` far too large: every
    embedding the same) flags everything or nothing whatever the threshold,
    and must fail its run rather than be logged, registered and promoted.
    ``table`` holds the scored rows, aligned with ``scores``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    good_heldout = (table["label"].to_numpy() == 0) & table["split"].isin(SCORED_SPLITS).to_numpy()
    good_scores = scores[good_heldout]
    if good_scores.size < 2 or not np.all(np.isfinite(good_scores)):
        return
    spread = float(good_scores.max() - good_scores.min())
    if spread <= COLLAPSED_RELATIVE_SPREAD * max(float(np.median(np.abs(good_scores))), 1e-12):
        raise CollapsedModelError(
            f"the model collapsed: all {good_scores.size} held-out good images score "
            f"{float(np.median(good_scores)):.6g} (spread {spread:.3g}), so the detector cannot tell "
            "images apart; it is not logged or registered (check learning_rate, epochs and the loss curve)"
        )


def evaluate(
    table: pd.DataFrame, scores, threshold: float | None = None, threshold_fpr: float = 0.0,
) -> Evaluation:
    """Metrics of ``scores`` on the scored rows of ``table``.

    Parameters
    ----------
    table : pandas.DataFrame
        The scored rows only (``split`` in threshold/val/test), aligned with ``scores``.
    scores : array-like of shape (len(table),)
        Higher = more anomalous.
    threshold : float, optional
        A threshold already chosen (e.g. by a registered detector). By default
        it is `metrics.threshold_from_good_scores` of the ``threshold`` split.
    threshold_fpr : float, default=0
        Its target false-alarm rate on those good images (0: their largest score).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(table):
        raise ValueError(f"{len(scores)} scores for {len(table)} scored images")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int(np.sum(~np.isfinite(scores)))} anomaly scores are not finite")
    scored_table = table.reset_index(drop=True).copy()
    scored_table["score"] = scores
    if threshold is None:
        good_heldout = (scored_table["split"] == "threshold").to_numpy()
        threshold = metrics_module.threshold_from_good_scores(scores[good_heldout], threshold_fpr)
    image_metrics = metrics_module.image_metrics(scored_table, scores, threshold)
    return Evaluation(scored_table=scored_table, threshold=float(threshold), metrics=image_metrics)
