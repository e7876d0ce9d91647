"""Image metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from defectlab.evaluation import metrics


def test_auroc_hand_computed():
    # pairs (defect, good): (0.9>0.1) (0.9>0.4) (0.35<0.4) (0.35>0.1) -> 3 of 4 ordered correctly
    assert metrics.image_auroc([1, 1, 0, 0], [0.9, 0.35, 0.4, 0.1]) == pytest.approx(0.75)


def test_best_tpr_tnr_hand_computed():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.5, 0.7, 0.8]
    best = metrics.best_tpr_tnr(labels, scores)
    # threshold 0.2: flags 0.5, 0.6, 0.7, 0.8 -> TPR 3/3, TNR 2/3 ; threshold 0.6: TPR 2/3, TNR 3/3
    assert best["tpr_tnr_best"] == pytest.approx(1 + 2 / 3)
    assert best["threshold_best"] == pytest.approx(0.2)  # ties go to the lowest threshold
    assert best["tpr_at_best"] == pytest.approx(1.0)
    assert best["tnr_at_best"] == pytest.approx(2 / 3)


def test_perfect_separation_reaches_two():
    best = metrics.best_tpr_tnr([0, 0, 1, 1], [1.0, 2.0, 3.0, 4.0])
    assert best["tpr_tnr_best"] == 2.0 and best["threshold_best"] == 2.0


def test_rates_at_threshold_uses_strict_greater():
    tpr, tnr = metrics.rates_at_threshold([0, 0, 1, 1], [0.5, 0.2, 0.5, 0.9], threshold=0.5)
    assert (tpr, tnr) == (0.5, 1.0)


def test_threshold_from_good_scores_is_their_maximum():
    assert metrics.threshold_from_good_scores([0.3, 1.2, 0.7]) == 1.2
    with pytest.raises(metrics.MetricError):
        metrics.threshold_from_good_scores([])


def test_per_defect_type_auroc():
    result = metrics.per_defect_type_auroc(
        ["good", "good", "cut", "cut", "hole"], [0, 0, 1, 1, 1], [0.1, 0.5, 0.9, 0.3, 0.2]
    )
    assert result == {"cut": pytest.approx(0.75), "hole": pytest.approx(0.5)}


def test_one_class_only_raises():
    with pytest.raises(metrics.MetricError, match="both good"):
        metrics.image_auroc([1, 1], [0.2, 0.3])


def test_non_finite_scores_raise():
    with pytest.raises(metrics.MetricError, match="not finite"):
        metrics.image_auroc([0, 1], [np.nan, 0.3])


def test_image_metrics_uses_val_and_test_splits_separately():
    table = pd.DataFrame(
        {
            "label": [0, 1, 0, 1, 0],
            "defect_type": ["good", "cut", "good", "cut", "good"],
            "split": ["test", "test", "val", "val", "threshold"],
        }
    )
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.5])
    result = metrics.image_metrics(table, scores, threshold=0.5)
    assert result["test_image_auroc"] == 1.0
    assert result["val_image_auroc"] == 0.0
    assert result["test_auroc_cut"] == 1.0
    assert result["test_tpr_at_val_threshold"] == 1.0 and result["test_tnr_at_val_threshold"] == 1.0
