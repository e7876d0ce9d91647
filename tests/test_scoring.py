"""Scorer contract: fit returns self, anomaly_score is (n,), higher = more anomalous."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from defectlab.methods.scorers import (
    LOFScorer,
    PCALOFScorer,
    average_standardized_scores,
    reference_statistics,
    standardize_scores,
)


@pytest.fixture
def inliers():
    return np.random.default_rng(0).normal(size=(60, 4))


def test_lof_ranks_a_planted_outlier_above_inliers(inliers):
    scorer = LOFScorer(n_neighbors=5)
    assert scorer.fit(inliers) is scorer
    queries = np.vstack([inliers[:10] + 0.01, [[8.0, 8.0, 8.0, 8.0]]])
    scores = scorer.anomaly_score(queries)
    assert scores.shape == (11,)
    assert scores[-1] > scores[:-1].max()
    assert scores[:-1].mean() == pytest.approx(1.0, abs=0.3)  # LOF of inliers is about 1


def test_lof_checks_fitted_and_input(inliers):
    with pytest.raises(NotFittedError):
        LOFScorer().anomaly_score(inliers)
    with pytest.raises(ValueError, match="2-D"):
        LOFScorer().fit(inliers[0])
    with pytest.raises(ValueError, match="non-finite"):
        LOFScorer().fit(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        LOFScorer().fit(inliers[:1])


def test_pca_lof_baseline_flags_a_bright_square():
    rng = np.random.default_rng(1)
    good = rng.normal(120, 5, size=(40, 16, 16, 1)).clip(0, 255)
    defect = good[:1].copy()
    defect[0, 4:10, 4:10] = 255
    scorer = PCALOFScorer(n_components=8).fit(good[:30])
    scores = scorer.anomaly_score(np.concatenate([good[30:], defect]))
    assert scores.shape == (11,) and scores[-1] > scores[:-1].max()


def test_standardized_ensemble_average_hand_computed():
    assert reference_statistics([1.0, 3.0]) == (2.0, 1.0)
    assert reference_statistics([2.0, 2.0]) == (2.0, 1.0)  # zero spread keeps the ordering
    np.testing.assert_allclose(standardize_scores([4.0, 2.0], 2.0, 1.0), [2.0, 0.0])
    combined = average_standardized_scores([[4.0, 2.0], [10.0, 30.0]], [2.0, 10.0], [1.0, 10.0])
    np.testing.assert_allclose(combined, [(2.0 + 0.0) / 2, (0.0 + 2.0) / 2])
    with pytest.raises(ValueError):
        average_standardized_scores([[1.0]], [0.0, 1.0], [1.0])


def test_the_pixel_baseline_repeats_on_wide_images():
    # 40 images of 48x48x3 pixels: wide enough that scikit-learn's PCA picks its randomized solver.
    rng = np.random.default_rng(5)
    good, test = rng.random((40, 48, 48, 3)) * 255, rng.random((6, 48, 48, 3)) * 255
    first = PCALOFScorer(n_components=8, seed=1).fit(good).anomaly_score(test)
    np.testing.assert_array_equal(PCALOFScorer(n_components=8, seed=1).fit(good).anomaly_score(test), first)
