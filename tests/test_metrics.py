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


@pytest.mark.parametrize("rate, expected, false_alarms", [
    (0.0, 100.0, 0),   # the largest: no good image flagged
    (0.01, 99.0, 1),   # floor(0.01 * 100) = 1 false alarm allowed
    (0.025, 98.0, 2),  # floor(2.5) = 2
    (0.5, 50.0, 50),
])
def test_threshold_at_a_false_alarm_rate_flags_at_most_that_share_of_good_images(rate, expected, false_alarms):
    good = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))
    threshold = metrics.threshold_from_good_scores(good, false_alarm_rate=rate)
    assert threshold == expected
    assert int(np.sum(good > threshold)) == false_alarms


def test_threshold_at_a_false_alarm_rate_never_flags_more_than_allowed_when_scores_tie():
    good = [1.0, 5.0, 5.0, 5.0]
    threshold = metrics.threshold_from_good_scores(good, false_alarm_rate=0.25)  # one allowed
    assert threshold == 5.0 and sum(score > threshold for score in good) == 0
    with pytest.raises(metrics.MetricError, match=r"false_alarm_rate must be in \[0, 1\)"):
        metrics.threshold_from_good_scores(good, false_alarm_rate=1.0)


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


# Bootstrap intervals of the headline metrics


def two_normal_score_sets(n_good: int, n_defect: int, separation: float, seed: int):
    """Good ~ N(0, 1), defects ~ N(separation, 1): the true AUROC is Phi(separation / sqrt(2))."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.zeros(n_good, int), np.ones(n_defect, int)])
    scores = np.concatenate([rng.normal(0.0, 1.0, n_good), rng.normal(separation, 1.0, n_defect)])
    return labels, scores


def test_the_bootstrap_interval_covers_the_true_auroc_and_narrows_as_the_set_grows():
    from scipy.stats import norm

    separation = 1.0
    true_auroc = norm.cdf(separation / np.sqrt(2))  # 0.760
    widths = []
    for n_good, n_defect in ((15, 40), (60, 160), (240, 640)):
        labels, scores = two_normal_score_sets(n_good, n_defect, separation, seed=3)
        low, high = metrics.bootstrap_interval(labels, scores)
        assert low <= metrics.image_auroc(labels, scores) <= high
        assert low <= true_auroc <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.5 * widths[0]  # about 1 / sqrt(16) of it in theory


def test_the_bootstrap_covers_the_truth_in_about_95_of_100_draws():
    from scipy.stats import norm

    true_auroc = norm.cdf(1.0 / np.sqrt(2))
    covered = 0
    for seed in range(100):
        labels, scores = two_normal_score_sets(30, 30, 1.0, seed)
        low, high = metrics.bootstrap_interval(labels, scores, resamples=400)
        covered += low <= true_auroc <= high
    assert 85 <= covered <= 100


def test_the_bootstrap_is_seeded_and_stratified():
    labels, scores = two_normal_score_sets(5, 7, 0.5, seed=0)
    assert metrics.bootstrap_interval(labels, scores) == metrics.bootstrap_interval(labels, scores)
    # A perfectly separated set stays perfect in every stratified resample.
    assert metrics.bootstrap_interval(labels, scores + 100 * labels) == (1.0, 1.0)
    assert metrics.bootstrap_interval(labels, scores + 100 * labels, "tpr_tnr_best") == (2.0, 2.0)


def test_bootstrap_auroc_of_ties_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    labels = np.array([0, 0, 1, 1, 1, 0])
    score_rows = np.array([[0.1, 0.5, 0.5, 0.9, 0.2, 0.5], [1, 1, 1, 1, 1, 1], [3, 2, 1, 0, 5, 4]], float)
    np.testing.assert_allclose(
        metrics._auroc_of_rows(labels, score_rows), [roc_auc_score(labels, row) for row in score_rows]
    )


def test_image_metrics_log_the_intervals_beside_the_headlines():
    labels, scores = two_normal_score_sets(20, 20, 1.0, seed=1)
    table = pd.DataFrame({
        "label": np.concatenate([labels, labels]),
        "defect_type": np.where(np.concatenate([labels, labels]) == 1, "hole", "good"),
        "split": ["test"] * 40 + ["val"] * 40,
    })
    result = metrics.image_metrics(table, np.concatenate([scores, scores[::-1]]), threshold=0.0)
    for name in metrics.INTERVAL_METRICS:
        assert result[f"{name}_ci_low"] <= result[name] <= result[f"{name}_ci_high"]


@pytest.mark.parametrize("metric, resamples, level", [("aupro", 100, 0.95), ("image_auroc", 1, 0.95),
                                                       ("image_auroc", 100, 1.0)])
def test_bad_bootstrap_settings_are_refused(metric, resamples, level):
    labels, scores = two_normal_score_sets(5, 5, 1.0, seed=0)
    with pytest.raises(metrics.MetricError):
        metrics.bootstrap_interval(labels, scores, metric, resamples=resamples, level=level)
