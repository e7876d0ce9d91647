"""PatchCore's memory bank: coreset selection, nearest-patch search, scores and maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.exceptions import NotFittedError

from defectlab.methods.patch.memory_bank import (
    PatchMemoryBank,
    coreset_size,
    estimate_bank_bytes,
    gaussian_smooth_maps,
    greedy_coreset_indices,
    nearest_distances,
    upsample_maps,
)

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


# Nearest neighbours


@pytest.mark.parametrize("batch_size, bank_batch_size", [(1024, 16384), (7, 13), (1, 1)])
def test_nearest_distances_equal_brute_force(batch_size, bank_batch_size):
    rng = np.random.default_rng(3)
    query, bank = rng.normal(size=(120, 16)), rng.normal(size=(90, 16))
    distances, indices = nearest_distances(query, bank, k=3, batch_size=batch_size, bank_batch_size=bank_batch_size)
    reference = cdist(query, bank)
    reference_indices = np.argsort(reference, axis=1)[:, :3]
    # float32 keeps ~7 significant digits; these distances are about 5.7
    # (sqrt(2 * 16)) and come from differences of float32 inputs, so their
    # error is ~1e-6. rtol/atol 1e-4 leave two orders of margin and would
    # still catch any wrong neighbour, which is off by far more than 1e-4 here.
    np.testing.assert_allclose(distances, np.take_along_axis(reference, reference_indices, axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(indices, reference_indices)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_small_distances_stay_accurate_far_from_the_origin():
    # Norms of ~1e3 and distances of ~1e-3: the ||a||^2 - 2ab + ||b||^2
    # expansion loses every digit in float32 here (its rounding is ~1e-1 in
    # squared distance); the recomputation from differences must not.
    rng = np.random.default_rng(4)
    bank = 1000.0 + rng.normal(size=(50, 8))
    offsets = rng.normal(scale=1e-3, size=(50, 8))
    query = bank + offsets
    distances, indices = nearest_distances(query, bank)
    np.testing.assert_array_equal(indices[:, 0], np.arange(50))
    expected = np.linalg.norm(query.astype(np.float32) - bank.astype(np.float32), axis=1)
    np.testing.assert_allclose(distances[:, 0], expected, rtol=1e-3)


def test_nearest_distances_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="query has 3 features per row but the bank has 4"):
        nearest_distances(np.zeros((2, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="k=6 neighbours asked for but the bank holds only 5 rows"):
        nearest_distances(np.zeros((2, 4)), np.zeros((5, 4)), k=6)


# The estimator


def test_fit_keeps_a_float32_coreset_and_counts_the_patches():
    features = np.random.default_rng(5).normal(size=(400, 6))
    bank = PatchMemoryBank(coreset_ratio=0.25, seed=1).fit(features)
    assert bank.bank_.shape == (100, 6) and bank.bank_.dtype == np.float32
    assert bank.n_patches_seen_ == 400 and bank.n_features_in_ == 6
    np.testing.assert_array_equal(bank.bank_, features[bank.coreset_indices_].astype(np.float32))


def test_patch_scores_are_distances_to_the_nearest_bank_patch():
    bank = PatchMemoryBank(coreset_ratio=1.0).fit([[0.0, 0.0], [10.0, 0.0]])
    scores = bank.patch_scores([[0.0, 0.0], [3.0, 4.0], [10.0, 1.0]])
    np.testing.assert_allclose(scores, [0.0, 5.0, 1.0], rtol=1e-6)


def test_image_score_without_reweighting_is_the_largest_patch_score():
    rng = np.random.default_rng(6)
    bank = PatchMemoryBank(coreset_ratio=0.5, patch_neighbors=1).fit(rng.normal(size=(200, 4)))
    images = rng.normal(size=(3, 5, 5, 4))
    image_scores, patch_maps = bank.score_images(images)
    assert patch_maps.shape == (3, 5, 5)
    np.testing.assert_allclose(image_scores, patch_maps.reshape(3, -1).max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(patch_maps.reshape(-1), bank.patch_scores(images.reshape(-1, 4)), rtol=1e-6)


def test_image_score_reweighting_matches_eq_7_by_hand():
    # 1-D bank {0, 0.5, 3}; test patches 0.2 and 1.0. The most anomalous
    # patch is m_test* = 1.0 (nearest bank patch m* = 0.5, s* = 0.5). With
    # b = 2, N_b(m*) = {0.5, 0} (distances 0 and 0.5 from m*), at distances
    # 0.5 and 1.0 from m_test*, so
    # s = (1 - e^0.5 / (e^0.5 + e^1)) * 0.5 = 0.5 * (1 - 1 / (1 + e^0.5)).
    bank = PatchMemoryBank(coreset_ratio=1.0, patch_neighbors=2).fit([[0.0], [0.5], [3.0]])
    score = bank.image_scores([[[0.2], [1.0]]])
    assert score.shape == (1,)
    assert score[0] == pytest.approx(0.5 * (1.0 - 1.0 / (1.0 + math.exp(0.5))), rel=1e-6)


def test_reweighting_keeps_more_of_the_score_when_the_nearest_bank_patch_is_rare():
    # Both test patches are 1 from their nearest bank patch. Around 0 the bank
    # is dense (neighbours as close to the test patch as m* is: weight near
    # 1 - 1/b); around 100 the nearest patch is alone (the others are far:
    # weight near 1).
    dense = [[0.0], [0.0], [0.0]]
    bank = PatchMemoryBank(coreset_ratio=1.0, patch_neighbors=3).fit(dense + [[100.0], [160.0], [230.0]])
    near_dense, near_rare = bank.image_scores([[[-1.0]], [[101.0]]])
    assert near_dense == pytest.approx(1.0 * (1 - 1 / 3), rel=1e-6)
    assert near_rare == pytest.approx(1.0, rel=1e-6) and near_rare > near_dense


def test_unfitted_bank_raises_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        PatchMemoryBank().patch_scores(np.zeros((2, 3)))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        PatchMemoryBank().image_scores(np.zeros((1, 2, 3)))


@pytest.mark.parametrize("ratio", [0, 1.5])
def test_fit_rejects_a_ratio_outside_zero_one(ratio):
    with pytest.raises(ValueError, match=r"coreset ratio must be in \(0, 1\]"):
        PatchMemoryBank(coreset_ratio=ratio).fit(np.zeros((10, 2)))


def test_bank_rejects_wrong_shapes():
    bank = PatchMemoryBank(coreset_ratio=1.0).fit(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="have 2 features per patch but the bank was fitted with 3"):
        bank.patch_scores(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"must be 2-D \(n_patches, feature_dim\)"):
        bank.patch_scores(np.zeros((1, 5, 3)))
    with pytest.raises(ValueError, match=r"must be \(n_images, n_patches, feature_dim\)"):
        bank.image_scores(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="patch_neighbors must be a positive integer"):
        PatchMemoryBank(patch_neighbors=0).fit(np.zeros((4, 3)))


def test_estimate_bank_bytes_by_hand():
    # 10 images x 4 x 4 patches = 160 patches of 8 float32 = 5120 bytes; a
    # quarter kept = 40 patches = 1280 bytes; the selection adds a centred
    # copy (8 channels, under projection_dim) and two vectors: 160 * 10 * 4.
    assert estimate_bank_bytes(10, 4, 4, 8, 0.25) == {
        "n_patches": 160,
        "n_bank_patches": 40,
        "all_patches_bytes": 5120,
        "bank_bytes": 1280,
        "coreset_selection_bytes": 6400,
    }
    assert estimate_bank_bytes(10, 4, 4, 8, 1.0)["coreset_selection_bytes"] == 0
    with pytest.raises(ValueError, match=r"coreset ratio must be in \(0, 1\]"):
        estimate_bank_bytes(10, 4, 4, 8, 0)


# Maps


def test_upsample_maps_matches_keras_bilinear_resize():
    keras = pytest.importorskip("keras")
    maps = np.random.default_rng(7).random((2, 6, 6)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(
        keras.ops.image.resize(maps[..., None], (64, 64), interpolation="bilinear")
    )[..., 0]
    upsampled = upsample_maps(maps, 64)
    assert upsampled.shape == (2, 64, 64) and upsampled.dtype == np.float32
    np.testing.assert_allclose(upsampled, expected, atol=1e-5)


def test_gaussian_smoothing_blurs_each_map_on_its_own():
    maps = np.zeros((2, 32, 32), dtype=np.float32)
    maps[0, 16, 16] = 1.0
    smoothed = gaussian_smooth_maps(maps, sigma=2.0)
    assert smoothed.shape == (2, 32, 32) and smoothed.dtype == np.float32
    assert np.all(smoothed[1] == 0)  # nothing leaks into the other image
    assert smoothed[0].sum() == pytest.approx(1.0, rel=1e-4)  # mass kept, away from the edges
    assert np.unravel_index(np.argmax(smoothed[0]), (32, 32)) == (16, 16)
    np.testing.assert_array_equal(gaussian_smooth_maps(maps, sigma=0), maps)
    with pytest.raises(ValueError, match="sigma must be a non-negative number"):
        gaussian_smooth_maps(maps, sigma=-1)
