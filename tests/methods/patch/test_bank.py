"""PatchMemoryBank: coreset, index, patch and image scores, memory estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from defectlab.methods.patch.bank import PatchMemoryBank, estimate_bank_bytes


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
        "index_bytes": 1280,  # faiss's exact index holds a copy of the bank
    }
    assert estimate_bank_bytes(10, 4, 4, 8, 1.0)["coreset_selection_bytes"] == 0
    # 100 x 20 x 20 = 40,000 patches: 5 parts of at most 8192, so the selection also holds
    # two int64 vectors: 40,000 * ((8 + 2) * 4 + 16). A fifth kept: 8,000, not above
    # AUTO_IVF_BANK, so auto searches exactly (a copy: 8,000 * 8 * 4). IVF keeps a copy,
    # int64 ids and min(4 sqrt(8,000), 8,000 // 39) = 205 centroids: 8,000 * 40 + 205 * 32.
    large = estimate_bank_bytes(100, 20, 20, 8, 0.2)
    assert large["coreset_selection_bytes"] == 2_240_000 and large["index_bytes"] == 256_000
    assert estimate_bank_bytes(100, 20, 20, 8, 0.2, search_index="ivf")["index_bytes"] == 326_560
    with pytest.raises(ValueError, match=r"coreset ratio must be in \(0, 1\]"):
        estimate_bank_bytes(10, 4, 4, 8, 0)
