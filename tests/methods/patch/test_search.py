"""Nearest bank patches: the faiss index, exact and IVF."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.exceptions import NotFittedError

from defectlab.methods.patch import search
from defectlab.methods.patch.search import nearest_distances


def test_nearest_distances_equal_brute_force():
    rng = np.random.default_rng(3)
    query, bank = rng.normal(size=(120, 16)), rng.normal(size=(90, 16))
    distances, indices = nearest_distances(query, bank, k=3)
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


# The index


def clustered_points(rng, count: int, dim: int = 8) -> np.ndarray:
    centres = rng.normal(scale=5.0, size=(40, dim))
    return (centres[rng.integers(40, size=count)] + rng.normal(size=(count, dim))).astype(np.float32)


def test_an_ivf_index_finds_nearly_every_nearest_patch_and_returns_exact_distances():
    rng = np.random.default_rng(5)
    bank, query = clustered_points(rng, 5000), clustered_points(rng, 500)
    index = search.PatchIndex(search.IVF, seed=0).fit(bank)
    assert index.kind_ == "ivf" and index.nlist_ == search.ivf_cells(5000) and index.nprobe_ == search.IVF_NPROBE
    distances, indices = index.search(query, k=1)
    exact_distances, exact_indices = nearest_distances(query, bank)
    # Whatever row IVF returns, its distance is that row's true distance, never below the exact nearest.
    np.testing.assert_allclose(distances[:, 0], np.linalg.norm(query - bank[indices[:, 0]], axis=1), rtol=1e-5)
    assert np.all(distances[:, 0] >= exact_distances[:, 0] - 1e-5)
    assert np.mean(indices[:, 0] == exact_indices[:, 0]) >= 0.9


def test_rows_whose_searched_cells_hold_too_few_patches_are_searched_exactly(monkeypatch):
    rng = np.random.default_rng(6)
    bank = rng.normal(size=(5000, 8)).astype(np.float32)  # 128 cells of about 39; 16 searched hold about 620
    index = search.PatchIndex(search.IVF).fit(bank)
    assert index.nlist_ == 128
    query = rng.normal(size=(20, 8)).astype(np.float32)
    searched_exactly = []
    exact_candidates = index._exact_candidates
    monkeypatch.setattr(index, "_exact_candidates", lambda rows, k: searched_exactly.append(len(rows)) or exact_candidates(rows, k))
    distances, indices = index.search(query, k=1000)
    exact_distances, _ = nearest_distances(query, bank, k=1000)
    assert sum(searched_exactly) == len(query) and np.all(indices >= 0)
    np.testing.assert_allclose(distances, exact_distances, rtol=1e-5)


def test_an_ivf_index_on_a_bank_too_small_to_train_searches_exactly_with_a_note(caplog):
    bank = np.random.default_rng(7).normal(size=(search.IVF_MIN_BANK - 1, 4))
    with caplog.at_level("INFO", logger="defectlab.methods.patch.search"):
        index = search.PatchIndex(search.IVF).fit(bank)
    assert index.kind_ == "exact"
    assert "too few to train an IVF index" in caplog.text and "searching it exactly" in caplog.text


def test_auto_is_exact_up_to_its_bank_size_and_ivf_above(monkeypatch):
    monkeypatch.setattr(search, "AUTO_IVF_BANK", 1000)
    rng = np.random.default_rng(8)
    assert search.PatchIndex().fit(rng.normal(size=(1000, 4))).kind_ == "exact"
    assert search.PatchIndex().fit(rng.normal(size=(1001, 4))).kind_ == "ivf"


def test_a_serialised_index_searches_the_same_cells():
    rng = np.random.default_rng(9)
    bank, query = clustered_points(rng, 3000), clustered_points(rng, 200)
    index = search.PatchIndex(search.IVF).fit(bank)
    reloaded = search.PatchIndex.from_bytes(index.to_bytes(), bank, index.description())
    for first, second in zip(index.search(query, k=3), reloaded.search(query, k=3)):
        np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match="holds 3000 patches but the bank 2999"):
        search.PatchIndex.from_bytes(index.to_bytes(), bank[:-1], index.description())


def test_an_unknown_index_kind_and_an_unfitted_index_are_refused():
    with pytest.raises(ValueError, match="search index must be one of auto, exact, ivf, got 'hnsw'"):
        search.PatchIndex("hnsw").fit(np.zeros((4, 2)))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        search.PatchIndex().search(np.zeros((1, 2)))


def test_missing_faiss_is_one_error_naming_the_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(search.FaissMissingError, match=r"needs faiss.*pip install faiss-cpu"):
        search.PatchIndex().fit(np.zeros((4, 2)))
