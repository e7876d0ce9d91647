"""The coreset: greedy k-center selection, exact and inside k-means parts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from defectlab.methods.patch import coreset
from defectlab.methods.patch.coreset import clustered_coreset_indices, coreset_size, greedy_coreset_indices


# Six points on a line, gaps 1, 2, 4, 8, 16: no two candidate distances tie,
# so the greedy order from each start can be worked out by hand.
LINE_POSITIONS = np.array([0.0, 1.0, 3.0, 7.0, 15.0, 31.0])
# Start -> full greedy order. E.g. from x=7 (index 3): 31 is farthest (24);
# then min distances to {7, 31} are 7, 6, 4, 8 for x = 0, 1, 3, 15, so 15;
# then 7, 6, 4 for x = 0, 1, 3, so 0; then min(1, 6) = 1 for x=1 and
# min(3, 4) = 3 for x=3, so 3; then 1.
LINE_GREEDY_ORDERS = {
    0: [0, 5, 4, 3, 2, 1],
    1: [1, 5, 4, 3, 2, 0],
    2: [2, 5, 4, 3, 0, 1],
    3: [3, 5, 4, 0, 2, 1],
    4: [4, 5, 0, 3, 2, 1],
    5: [5, 0, 4, 3, 2, 1],
}


# Coreset


@pytest.mark.parametrize(
    "n_patches, ratio, expected",
    [(1000, 0.1, 100), (1000, 0.25, 250), (1000, 0.0125, 13), (1000, 1e-6, 1), (10, 0.7, 7), (7, 0.5, 4)],
)
def test_coreset_keeps_the_requested_fraction(n_patches, ratio, expected):
    features = np.random.default_rng(0).normal(size=(n_patches, 8))
    indices = greedy_coreset_indices(features, ratio)
    assert coreset_size(n_patches, ratio) == expected
    assert len(indices) == expected
    assert len(np.unique(indices)) == expected  # never the same patch twice
    assert indices.dtype == np.int64 and indices.min() >= 0 and indices.max() < n_patches


def test_ratio_one_keeps_every_patch_in_order():
    features = np.random.default_rng(0).normal(size=(50, 4))
    np.testing.assert_array_equal(greedy_coreset_indices(features, 1.0), np.arange(50))


@pytest.mark.parametrize("seed", range(8))
def test_greedy_order_on_a_line_matches_the_hand_computed_k_center_order(seed):
    # 5 of 6 points, so the selection runs (keeping all 6 skips it); the
    # 1-D features are not projected (1 <= projection_dim).
    indices = greedy_coreset_indices(LINE_POSITIONS[:, None], 5 / 6, seed=seed)
    start = int(indices[0])
    assert indices.tolist() == LINE_GREEDY_ORDERS[start][:5]


def test_each_added_point_is_the_farthest_from_those_already_chosen():
    points = np.random.default_rng(1).normal(size=(200, 2))
    indices = greedy_coreset_indices(points, 0.1, seed=3)
    distances = cdist(points, points)
    for step in range(1, len(indices)):
        min_to_chosen = distances[:, indices[:step]].min(axis=1)
        assert min_to_chosen[indices[step]] == pytest.approx(min_to_chosen.max(), rel=1e-5)


def test_coreset_is_deterministic_under_its_seed():
    # 300 channels > projection_dim, so the random projection is exercised too.
    features = np.random.default_rng(2).normal(size=(500, 300)).astype(np.float32)
    first = greedy_coreset_indices(features, 0.1, projection_dim=32, seed=7)
    again = greedy_coreset_indices(features, 0.1, projection_dim=32, seed=7)
    other = greedy_coreset_indices(features, 0.1, projection_dim=32, seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("ratio", [0, 1.5, -0.1, True, "0.1"])
def test_coreset_rejects_a_ratio_outside_zero_one(ratio):
    with pytest.raises(ValueError, match=r"coreset ratio must be in \(0, 1\]"):
        greedy_coreset_indices(np.zeros((10, 2)), ratio)


def test_coreset_rejects_features_that_are_not_a_matrix():
    with pytest.raises(ValueError, match=r"must be 2-D \(n_patches, feature_dim\)"):
        greedy_coreset_indices(np.zeros(10), 0.5)


# Clustered greedy (the memory bank's selection)


def test_clustered_selection_is_the_exact_rule_on_one_part():
    features = np.random.default_rng(9).normal(size=(600, 12))
    for seed in (0, 5):
        np.testing.assert_array_equal(
            clustered_coreset_indices(features, 0.1, seed=seed), greedy_coreset_indices(features, 0.1, seed=seed)
        )


def blobs_with_a_rare_one(rng) -> tuple[np.ndarray, np.ndarray]:
    """Four dense blobs of 500 points and one rare blob of 5 points far from them (its rows returned too)."""
    centres = np.array([[0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]], dtype=float)
    dense = np.concatenate([centre + rng.normal(size=(500, 3)) for centre in centres])
    rare = np.array([40.0, 40.0, 40.0]) + 0.1 * rng.normal(size=(5, 3))
    features = np.concatenate([dense, rare])
    order = rng.permutation(len(features))
    return features[order], np.flatnonzero(order >= len(dense))


def covering_radius(features: np.ndarray, kept: np.ndarray) -> float:
    return float(cdist(features, features[kept]).min(axis=1).max())


def test_clustered_selection_over_many_parts_keeps_rare_patches_and_covers_like_the_exact_rule(monkeypatch):
    monkeypatch.setattr(coreset, "PART_SIZE", 128)  # 2005 patches: 16 parts
    features, rare_rows = blobs_with_a_rare_one(np.random.default_rng(10))
    steps = []
    kept = clustered_coreset_indices(features, 0.05, seed=1, on_step=steps.append)
    assert len(kept) == coreset_size(len(features), 0.05) == sum(steps)
    assert len(np.unique(kept)) == len(kept)
    assert np.isin(rare_rows, kept).any()  # the 5 rare points are covered by one of their own
    exact = greedy_coreset_indices(features, 0.05, seed=1)
    # Greedy k-center is within 2x of the best covering; inside parts it pays for the borders
    # between parts, by far less than 2x on blobs.
    # (measured about 1.15x over five draws of these blobs)
    assert covering_radius(features, kept) <= 1.5 * covering_radius(features, exact)


def test_clustered_selection_repeats_under_its_seed(monkeypatch):
    monkeypatch.setattr(coreset, "PART_SIZE", 100)
    features = np.random.default_rng(11).normal(size=(1000, 160)).astype(np.float32)  # projected too
    first = clustered_coreset_indices(features, 0.1, seed=4)
    np.testing.assert_array_equal(first, clustered_coreset_indices(features, 0.1, seed=4))
    assert not np.array_equal(first, clustered_coreset_indices(features, 0.1, seed=5))


def test_each_part_keeps_at_least_one_patch_and_parts_never_outnumber_kept_patches():
    assert coreset.number_of_parts(100_000, 10_000) == math.ceil(100_000 / coreset.PART_SIZE)
    assert coreset.number_of_parts(100_000, 3) == 3
    assert coreset.number_of_parts(10, 1) == 1


def test_clustered_selection_rejects_what_the_exact_rule_rejects():
    with pytest.raises(ValueError, match=r"coreset ratio must be in \(0, 1\]"):
        clustered_coreset_indices(np.zeros((10, 2)), 0)
    with pytest.raises(ValueError, match=r"must be 2-D \(n_patches, feature_dim\)"):
        clustered_coreset_indices(np.zeros(10), 0.5)
