"""PatchCore's memory bank: greedy coreset, nearest-patch search, score maps.

This module is the NumPy/scikit-learn half of a PatchCore-style detector
(Roth et al., "Towards Total Recall in Industrial Anomaly Detection",
CVPR 2022). It knows nothing about networks: it takes patch feature vectors
``(n_patches, feature_dim)`` from any extractor (``features.py`` builds the
Keras one) and

* keeps a *coreset* of the defect-free patches: a subset chosen by greedy
  k-center selection so that every good patch lies close to some kept patch
  (`greedy_coreset_indices`);
* scores a test patch by its Euclidean distance to the nearest kept patch, and
  an image by its most anomalous patch, reweighted as in the paper's eq. 7
  (`PatchMemoryBank`);
* turns the grid of patch scores into a smooth image-sized anomaly map
  (`upsample_maps`, `gaussian_smooth_maps`).

Everything works in float32 and in chunks, so memory stays bounded by the
bank itself plus one chunk, never by an ``N x N`` distance matrix.
Every score follows the package's sign convention: higher = more anomalous.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage

FLOAT32_BYTES = 4
# Rows handled at once when projecting or taking norms: 16384 rows of 1024
# float32 channels are 64 MiB, small next to any bank worth a coreset.
DEFAULT_ROW_CHUNK = 16384
# Query rows and bank rows per block of the nearest-neighbour search; one block
# of squared distances is 1024 x 16384 float32 = 64 MiB.
DEFAULT_QUERY_BATCH = 1024
DEFAULT_BANK_BATCH = 16384


# Validation shared by the functions and the estimator


def not_fitted_error(message: str) -> Exception:
    """scikit-learn's `NotFittedError`, imported only when raised: serving the patch method needs no
    scikit-learn otherwise, and importing it costs an exported detector's cold start a second."""
    from sklearn.exceptions import NotFittedError

    return NotFittedError(message)


def _as_feature_matrix(features, name: str) -> np.ndarray:
    """``features`` as a C-contiguous float32 ``(n, d)`` array; ValueError otherwise."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_patches, feature_dim), got shape {features.shape}"
        )
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {features.shape}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contain {int(np.sum(~np.isfinite(features)))} non-finite values")
    return features


def _check_ratio(ratio) -> float:
    """The coreset ratio as a float in (0, 1]; ValueError otherwise."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def coreset_size(n_patches: int, ratio: float) -> int:
    """How many patches a coreset of ``ratio`` keeps out of ``n_patches``: ``ceil(ratio * n)``, at least 1.

    The product is rounded to 6 decimals before the ceiling so that float noise
    (``0.7 * 10`` is ``7.000000000000001``) does not keep one patch too many.
    """
    ratio = _check_ratio(ratio)
    n_patches = _check_positive_int(n_patches, "n_patches")
    return min(n_patches, max(1, math.ceil(round(ratio * n_patches, 6))))


# Greedy k-center coreset


def _row_squared_norms(matrix: np.ndarray, chunk_rows: int = DEFAULT_ROW_CHUNK) -> np.ndarray:
    """``||row||^2`` of every row, float32, computed chunk by chunk (no full-size temporary)."""
    norms = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), chunk_rows):
        chunk = matrix[start : start + chunk_rows]
        norms[start : start + chunk_rows] = np.einsum("ij,ij->i", chunk, chunk)
    return norms


def _project_features(
    features: np.ndarray, projection_dim: int, rng: np.random.Generator,
    chunk_rows: int = DEFAULT_ROW_CHUNK,
) -> np.ndarray:
    """Centred, Gaussian-random-projected copy of ``features`` (float32), chunk by chunk.

    A Gaussian matrix scaled by ``1/sqrt(projection_dim)`` keeps pairwise
    distances within a small factor (Johnson-Lindenstrauss), which is all the
    greedy selection needs, and makes each of its N x k distance evaluations
    cost ``projection_dim`` instead of ``feature_dim`` operations. Features that
    already have at most ``projection_dim`` channels are kept as they are
    (projecting up adds cost and no accuracy). Either way the mean is
    subtracted: distances do not change, but the norms in the
    ``||a||^2 - 2ab + ||b||^2`` expansion shrink, and with them float32's
    cancellation error.
    """
    n_patches, feature_dim = features.shape
    mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
    if feature_dim <= projection_dim:
        return features - mean
    projection = rng.standard_normal((feature_dim, projection_dim), dtype=np.float32)
    projection /= np.float32(math.sqrt(projection_dim))
    projected = np.empty((n_patches, projection_dim), dtype=np.float32)
    for start in range(0, n_patches, chunk_rows):
        projected[start : start + chunk_rows] = (features[start : start + chunk_rows] - mean) @ projection
    return projected


def greedy_coreset_indices(
    features, ratio: float, projection_dim: int = 128, seed: int = 0
) -> np.ndarray:
    """Indices of a greedy k-center coreset of ``features`` (PatchCore's subsampling).

    Starting from one seeded random patch, each step adds the patch farthest
    from everything chosen so far (the k-center rule), so the kept patches
    cover the feature space evenly, rare good patches included, instead of
    following the density like random sampling would.

    Parameters
    ----------
    features : array-like of shape (n_patches, feature_dim)
        Patch features of the defect-free training images.
    ratio : float in (0, 1]
        Fraction to keep: ``ceil(ratio * n_patches)`` patches, at least 1 (see
        `coreset_size`). ``1`` returns every index, in order, without selection.
    projection_dim : int, default=128
        Distances are measured after a seeded Gaussian random projection to
        this many dimensions (PatchCore uses a random linear map to 128), or on
        the features themselves when they have no more channels than this.
    seed : int, default=0
        Seeds both the start patch and the projection: the same inputs and seed
        give the same indices.

    Returns
    -------
    numpy.ndarray of int64, shape (n_keep,)
        Distinct row indices in selection order (``indices[0]`` is the start
        patch), except when every patch is kept (``ratio == 1``, or a ratio
        whose ceiling reaches ``n_patches``): then ``arange(n_patches)``.

    Raises
    ------
    ValueError
        ``ratio`` outside (0, 1], ``features`` not a non-empty finite 2-D
        array, or ``projection_dim`` not a positive integer.

    Notes
    -----
    Memory is the projected copy ``(n_patches, min(feature_dim,
    projection_dim))`` float32 plus two length-``n_patches`` vectors: a running
    minimum of each patch's squared distance to the selected set replaces the
    ``N x N`` distance matrix, and each step updates it with one
    matrix-vector product, so the time is O(n_patches * n_keep * dim).
    Squared distances are compared throughout (the order is the same as for
    distances, and no square root is spent). This is exact greedy selection
    on the projected features, not PatchCore's "approximate" variant whose
    start distances average over 10 random anchors.
    """
    ratio = _check_ratio(ratio)
    projection_dim = _check_positive_int(projection_dim, "projection_dim")
    features = _as_feature_matrix(features, "features")
    n_patches = len(features)
    n_keep = coreset_size(n_patches, ratio)
    if ratio == 1 or n_keep == n_patches:
        return np.arange(n_patches, dtype=np.int64)

    rng = np.random.default_rng(seed)
    # The start is drawn before the projection so that it does not depend on
    # whether the features needed projecting.
    start_index = int(rng.integers(n_patches))
    projected = _project_features(features, projection_dim, rng)
    squared_norms = _row_squared_norms(projected)

    def squared_distances_to(index: int) -> np.ndarray:
        point = projected[index]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2: one matrix-vector product,
        # no (n_patches, dim) temporary; rounding can make it slightly
        # negative, and a distance is never below 0.
        squared = squared_norms - 2.0 * (projected @ point) + squared_norms[index]
        return np.maximum(squared, 0.0, out=squared)

    selected = np.empty(n_keep, dtype=np.int64)
    selected[0] = start_index
    min_squared_distance = squared_distances_to(start_index)
    # A chosen patch is marked below every possible distance so it is never
    # chosen twice, even when rounding leaves it a tiny positive distance to
    # itself or the data hold exact duplicates.
    min_squared_distance[start_index] = -1.0
    for step in range(1, n_keep):
        farthest = int(np.argmax(min_squared_distance))
        selected[step] = farthest
        # Chosen patches stay at -1 through the minimum; the new one joins them.
        np.minimum(min_squared_distance, squared_distances_to(farthest), out=min_squared_distance)
        min_squared_distance[farthest] = -1.0
    return selected


# Exact nearest-neighbour search


def _exact_distances(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``||query[i] - candidates[i, j]||`` for query ``(n, d)`` and candidates ``(n, k, d)``.

    Computed from the differences themselves, not the norm expansion, so
    small distances (a good patch next to its bank twin) keep full float32
    relative precision.
    """
    differences = candidates - query[:, None, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", differences, differences))


def nearest_distances(
    query, bank, k: int = 1, batch_size: int = DEFAULT_QUERY_BATCH,
    bank_batch_size: int = DEFAULT_BANK_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k-nearest neighbours of each query row among the bank rows.

    Parameters
    ----------
    query : array-like of shape (n_query, feature_dim)
    bank : array-like of shape (n_bank, feature_dim)
    k : int, default=1
        Neighbours per query row, at most ``n_bank``.
    batch_size : int, default=1024
        Query rows per block.
    bank_batch_size : int, default=16384
        Bank rows per block. Memory beyond the inputs is one
        ``batch_size x bank_batch_size`` float32 block (64 MiB at the
        defaults) plus the running ``batch_size x k`` best lists; for
        ``k > 1`` add the block's int64 partition indices (twice the block).

    Returns
    -------
    distances : numpy.ndarray of float32, shape (n_query, k)
        Ascending along each row.
    indices : numpy.ndarray of int64, shape (n_query, k)
        Bank rows of those distances.

    Raises
    ------
    ValueError
        Inputs not non-empty finite 2-D arrays, different feature dimensions,
        or ``k`` not in ``[1, n_bank]``.

    Notes
    -----
    Candidates are ranked with the ``||a||^2 - 2ab + ||b||^2`` expansion in
    float32 (one matrix product per block; negatives from rounding clipped to
    0), then the returned distances of the k winners are recomputed from the
    differences, so they are accurate even when the expansion's cancellation
    error is not small next to them. Ties (equal distances) may come back in
    either order.
    """
    query = _as_feature_matrix(query, "query")
    bank = _as_feature_matrix(bank, "bank")
    if query.shape[1] != bank.shape[1]:
        raise ValueError(
            f"query has {query.shape[1]} features per row but the bank has {bank.shape[1]}"
        )
    k = _check_positive_int(k, "k")
    if k > len(bank):
        raise ValueError(f"k={k} neighbours asked for but the bank holds only {len(bank)} rows")
    batch_size = _check_positive_int(batch_size, "batch_size")
    bank_batch_size = _check_positive_int(bank_batch_size, "bank_batch_size")

    bank_squared_norms = _row_squared_norms(bank)
    distances = np.empty((len(query), k), dtype=np.float32)
    indices = np.empty((len(query), k), dtype=np.int64)
    for query_start in range(0, len(query), batch_size):
        query_block = query[query_start : query_start + batch_size]
        query_squared_norms = _row_squared_norms(query_block)[:, None]
        best_squared = np.full((len(query_block), 0), np.inf, dtype=np.float32)
        best_indices = np.empty((len(query_block), 0), dtype=np.int64)
        for bank_start in range(0, len(bank), bank_batch_size):
            bank_block = bank[bank_start : bank_start + bank_batch_size]
            squared = query_block @ bank_block.T
            squared *= -2.0
            squared += query_squared_norms
            squared += bank_squared_norms[bank_start : bank_start + len(bank_block)][None, :]
            np.maximum(squared, 0.0, out=squared)
            # This block's best k first (argmin for k=1, which needs no index
            # array the size of the block), then merged with the best k so far.
            if k == 1:
                block_best = np.argmin(squared, axis=1)[:, None]
            elif squared.shape[1] > k:
                block_best = np.argpartition(squared, k - 1, axis=1)[:, :k]
            else:
                block_best = np.broadcast_to(np.arange(squared.shape[1]), squared.shape)
            candidate_squared = np.concatenate(
                [best_squared, np.take_along_axis(squared, block_best, axis=1)], axis=1
            )
            candidate_indices = np.concatenate([best_indices, block_best + bank_start], axis=1)
            if candidate_squared.shape[1] > k:
                keep = np.argpartition(candidate_squared, k - 1, axis=1)[:, :k]
                candidate_squared = np.take_along_axis(candidate_squared, keep, axis=1)
                candidate_indices = np.take_along_axis(candidate_indices, keep, axis=1)
            best_squared, best_indices = candidate_squared, candidate_indices
        exact = _exact_distances(query_block, bank[best_indices])
        order = np.argsort(exact, axis=1, kind="stable")
        distances[query_start : query_start + len(query_block)] = np.take_along_axis(exact, order, axis=1)
        indices[query_start : query_start + len(query_block)] = np.take_along_axis(best_indices, order, axis=1)
    return distances, indices


# The estimator


class PatchMemoryBank:
    """PatchCore's detector head: a coreset of good patches and nearest-patch scores.

    Parameters
    ----------
    coreset_ratio : float in (0, 1], default=0.1
        Fraction of the good patches kept by `greedy_coreset_indices`
        (PatchCore reports 10 % losing almost nothing against 100 %, and 1 %
        still competitive).
    patch_neighbors : int, default=9
        ``b`` of the image-score reweighting (paper eq. 7): how many bank
        neighbours of the nearest bank patch judge how common it is. ``1``
        turns the reweighting off: the image score is then the largest patch
        score.
    projection_dim : int, default=128
        Random-projection size for the coreset distances.
    seed : int, default=0
        Seeds the coreset (start patch and projection).

    Attributes
    ----------
    bank_ : numpy.ndarray of float32, shape (n_bank, feature_dim)
        The kept good patches.
    coreset_indices_ : numpy.ndarray of int64, shape (n_bank,)
        Their rows in the features given to `fit`.
    n_patches_seen_ : int
        Good patches given to `fit` (before the coreset).
    n_features_in_ : int
        Feature dimension, checked on every later call.

    Notes
    -----
    Scores are raw Euclidean distances in feature space, so they are
    comparable only between images scored by the same fitted bank.
    """

    def __init__(
        self,
        coreset_ratio: float = 0.1,
        patch_neighbors: int = 9,
        projection_dim: int = 128,
        seed: int = 0,
    ):
        # scikit-learn convention: store the settings untouched, check them in fit.
        self.coreset_ratio = coreset_ratio
        self.patch_neighbors = patch_neighbors
        self.projection_dim = projection_dim
        self.seed = seed

    def fit(self, good_patch_features) -> "PatchMemoryBank":
        """Keep a coreset of ``good_patch_features`` ``(n_patches, feature_dim)``; returns ``self``.

        Raises
        ------
        ValueError
            A setting out of range, or features that are not a non-empty
            finite 2-D array.
        """
        _check_ratio(self.coreset_ratio)
        _check_positive_int(self.patch_neighbors, "patch_neighbors")
        _check_positive_int(self.projection_dim, "projection_dim")
        features = _as_feature_matrix(good_patch_features, "good_patch_features")
        indices = greedy_coreset_indices(
            features, self.coreset_ratio, projection_dim=self.projection_dim, seed=self.seed
        )
        self.bank_ = np.ascontiguousarray(features[indices])
        self.coreset_indices_ = indices
        self.n_patches_seen_ = int(len(features))
        self.n_features_in_ = int(features.shape[1])
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise not_fitted_error(
                f"this {type(self).__name__} is not fitted yet; call fit with good patch features first"
            )

    def _check_feature_dim(self, features: np.ndarray, name: str) -> None:
        if features.shape[-1] != self.n_features_in_:
            raise ValueError(
                f"{name} have {features.shape[-1]} features per patch but the bank was fitted "
                f"with {self.n_features_in_}"
            )

    def patch_scores(self, patch_features) -> np.ndarray:
        """Distance of each patch to its nearest bank patch, shape ``(n,)``; higher = more anomalous.

        Parameters
        ----------
        patch_features : array-like of shape (n_patches, feature_dim)
        """
        self._check_fitted()
        patch_features = _as_feature_matrix(patch_features, "patch_features")
        self._check_feature_dim(patch_features, "patch_features")
        distances, _ = nearest_distances(patch_features, self.bank_, k=1)
        return distances[:, 0]

    def score_images(self, patch_features_of_images) -> tuple[np.ndarray, np.ndarray]:
        """Image scores and patch scores from one nearest-neighbour search.

        Parameters
        ----------
        patch_features_of_images : array-like of shape (n_images, n_patches, feature_dim) or (n_images, grid_height, grid_width, feature_dim)
            Every patch of each image (a grid is flattened row by row).

        Returns
        -------
        image_scores : numpy.ndarray of float64, shape (n_images,)
            See `image_scores`.
        patch_scores : numpy.ndarray of float32
            Nearest-bank distance of every patch, in the input's layout:
            ``(n_images, n_patches)`` or ``(n_images, grid_height, grid_width)``
            (the grid is what `upsample_maps` takes).
        """
        self._check_fitted()
        features = np.asarray(patch_features_of_images)
        if features.ndim not in (3, 4):
            raise ValueError(
                "patch_features_of_images must be (n_images, n_patches, feature_dim) or "
                f"(n_images, grid_height, grid_width, feature_dim), got shape {features.shape}"
            )
        self._check_feature_dim(features, "patch_features_of_images")
        layout = features.shape[:-1]
        n_images = layout[0]
        flat = _as_feature_matrix(features.reshape(-1, features.shape[-1]), "patch_features_of_images")
        distances, nearest = nearest_distances(flat, self.bank_, k=1)
        patch_scores = distances[:, 0].reshape(n_images, -1)
        nearest_bank_rows = nearest[:, 0].reshape(n_images, -1)
        image_scores = self._reweighted_image_scores(
            flat.reshape(n_images, -1, self.n_features_in_), patch_scores, nearest_bank_rows
        )
        return image_scores, patch_scores.reshape(layout)

    def image_scores(self, patch_features_of_images) -> np.ndarray:
        """One score per image: its most anomalous patch, reweighted (PatchCore eq. 7).

        With ``m_test*`` the test patch farthest from the bank, ``m*`` its
        nearest bank patch and ``s* = ||m_test* - m*||``, the image score is

            s = (1 - exp(s*) / sum_{m in N_b(m*)} exp(||m_test* - m||)) * s*

        where ``N_b(m*)`` are the ``b = patch_neighbors`` bank patches nearest
        to ``m*`` (``m*`` itself among them, at distance 0). The fraction is a
        softmax weight, so the factor lies in ``[1 - 1/b, 1)``: near
        ``1 - 1/b`` when the neighbours of ``m*`` are as close to ``m_test*``
        as ``m*`` is (``m*`` sits in a dense, well-covered region of normal
        patches), near 1 when they are much farther (``m*`` is itself a rare
        normal patch, so matching it is weak evidence of normality and the
        score is kept whole). ``patch_neighbors=1`` (or a one-patch bank)
        skips the weight: the score is ``s*``.

        Parameters
        ----------
        patch_features_of_images : array-like of shape (n_images, n_patches, feature_dim) or (n_images, grid_height, grid_width, feature_dim)

        Returns
        -------
        numpy.ndarray of float64, shape (n_images,)
            Higher = more anomalous.

        Notes
        -----
        The weight sees raw feature distances, so its strength depends on the
        features' scale: distances much larger than 1 make the neighbours'
        exponentials dominate and push the weight to 1 (little reweighting).
        The paper and anomalib use it as written; so does this.
        """
        return self.score_images(patch_features_of_images)[0]

    def _reweighted_image_scores(
        self, features: np.ndarray, patch_scores: np.ndarray, nearest_bank_rows: np.ndarray
    ) -> np.ndarray:
        """Eq. 7 for images given as ``(n_images, n_patches, d)`` with their patch scores and nearest rows."""
        image_rows = np.arange(len(features))
        most_anomalous = np.argmax(patch_scores, axis=1)
        max_scores = patch_scores[image_rows, most_anomalous].astype(np.float64)
        neighbors = min(int(self.patch_neighbors), len(self.bank_))
        if neighbors == 1:
            return max_scores
        test_patches = features[image_rows, most_anomalous]  # m_test*
        nearest_bank = self.bank_[nearest_bank_rows[image_rows, most_anomalous]]  # m*
        _, support_rows = nearest_distances(nearest_bank, self.bank_, k=neighbors)  # N_b(m*)
        support_distances = _exact_distances(test_patches, self.bank_[support_rows]).astype(np.float64)
        # exp(s*) / sum exp(d_j) = 1 / sum exp(d_j - s*): shifting by s* (which
        # no d_j undercuts, m* being the nearest bank patch) keeps the
        # exponentials from overflowing however large the distances are.
        shifted = support_distances - max_scores[:, None]
        log_denominator = np.log(np.sum(np.exp(shifted - shifted.max(axis=1, keepdims=True)), axis=1))
        log_denominator += shifted.max(axis=1)
        softmax_of_nearest = np.exp(-log_denominator)
        return (1.0 - softmax_of_nearest) * max_scores


# Planning memory before extraction


def estimate_bank_bytes(
    n_images: int, grid_height: int, grid_width: int, feature_dim: int,
    coreset_ratio: float, projection_dim: int = 128,
) -> dict[str, int]:
    """Memory of the patches and the bank, so a runner can refuse a run before extracting.

    Parameters
    ----------
    n_images : int
        Good training images.
    grid_height, grid_width : int
        Patch grid of one image (the shallowest feature layer's).
    feature_dim : int
        Channels per patch.
    coreset_ratio : float in (0, 1]
    projection_dim : int, default=128

    Returns
    -------
    dict
        ``n_patches`` and ``n_bank_patches`` (counts); ``all_patches_bytes``:
        every training patch as float32, which must be held before the
        coreset is chosen; ``bank_bytes``: the kept patches; and
        ``coreset_selection_bytes``: what the selection adds on top of the
        patches (the centred/projected copy and two float32 vectors), zero for
        ``coreset_ratio == 1``. Peak memory of `PatchMemoryBank.fit` is about
        ``all_patches_bytes + coreset_selection_bytes + bank_bytes``.
    """
    for value, name in (
        (n_images, "n_images"), (grid_height, "grid_height"), (grid_width, "grid_width"),
        (feature_dim, "feature_dim"), (projection_dim, "projection_dim"),
    ):
        _check_positive_int(value, name)
    n_patches = int(n_images) * int(grid_height) * int(grid_width)
    n_bank_patches = coreset_size(n_patches, coreset_ratio)
    if n_bank_patches == n_patches:
        selection_bytes = 0
    else:
        selection_dim = min(int(feature_dim), int(projection_dim))
        selection_bytes = n_patches * (selection_dim + 2) * FLOAT32_BYTES
    return {
        "n_patches": n_patches,
        "n_bank_patches": n_bank_patches,
        "all_patches_bytes": n_patches * int(feature_dim) * FLOAT32_BYTES,
        "bank_bytes": n_bank_patches * int(feature_dim) * FLOAT32_BYTES,
        "coreset_selection_bytes": selection_bytes,
    }


# From patch scores to anomaly maps


def _bilinear_matrix(input_size: int, output_size: int) -> np.ndarray:
    """``(output_size, input_size)`` weights of 1-D bilinear resampling with half-pixel centres.

    Output pixel ``i`` samples the input at ``(i + 0.5) * input/output - 0.5``,
    clamped to the first and last pixel: the convention of TensorFlow's
    ``resize(..., 'bilinear')``, Keras's ``ops.image.resize`` and PyTorch's
    ``interpolate(..., align_corners=False)`` (PatchCore's), without
    antialiasing.
    """
    positions = (np.arange(output_size, dtype=np.float64) + 0.5) * (input_size / output_size) - 0.5
    positions = np.clip(positions, 0.0, input_size - 1)
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, input_size - 1)
    upper_weight = positions - lower
    matrix = np.zeros((output_size, input_size), dtype=np.float64)
    rows = np.arange(output_size)
    np.add.at(matrix, (rows, lower), 1.0 - upper_weight)
    np.add.at(matrix, (rows, upper), upper_weight)
    return matrix


def resize_bilinear(arrays, height: int, width: int) -> np.ndarray:
    """Bilinearly resize axes 1 and 2 of ``arrays`` ``(n, h, w, ...)`` to ``(n, height, width, ...)``.

    Half-pixel centres, edges clamped, no antialiasing (see `_bilinear_matrix`);
    computed as two small matrix products, so it needs neither TensorFlow nor
    SciPy and gives float32 for float32 input.
    """
    arrays = np.asarray(arrays)
    if arrays.ndim < 3:
        raise ValueError(f"arrays must be (n, height, width, ...), got shape {arrays.shape}")
    height = _check_positive_int(height, "height")
    width = _check_positive_int(width, "width")
    dtype = arrays.dtype if np.issubdtype(arrays.dtype, np.floating) else np.float32
    rows = _bilinear_matrix(arrays.shape[1], height).astype(dtype)
    columns = _bilinear_matrix(arrays.shape[2], width).astype(dtype)
    resized = np.einsum("oh,nh...->no...", rows, arrays.astype(dtype, copy=False))
    resized = np.einsum("pw,now...->nop...", columns, resized)
    return np.ascontiguousarray(resized)


def upsample_maps(maps, size) -> np.ndarray:
    """Patch-score grids ``(n, grid_height, grid_width)`` to image size ``(n, size, size)``, bilinearly.

    Parameters
    ----------
    maps : array-like of shape (n, grid_height, grid_width)
    size : int or (height, width)

    Returns
    -------
    numpy.ndarray of float32, shape (n, height, width)
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, grid_height, grid_width), got shape {maps.shape}")
    height, width = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    return resize_bilinear(maps, height, width)


def gaussian_smooth_maps(maps, sigma: float = 4.0) -> np.ndarray:
    """Gaussian-blur each map ``(n, h, w)`` on its own, as PatchCore's segmentor does.

    Parameters
    ----------
    maps : array-like of shape (n, height, width)
        Anomaly maps already at image size (`upsample_maps`).
    sigma : float, default=4.0
        Standard deviation in pixels of these maps (PatchCore: 4 at 224 px);
        0 returns an unblurred copy. The kernel reaches 4 sigma and the edges
        reflect (SciPy's defaults, which PatchCore uses).

    Returns
    -------
    numpy.ndarray of float32, shape (n, height, width)
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, height, width), got shape {maps.shape}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma >= 0:
        raise ValueError(f"sigma must be a non-negative number of pixels, got {sigma!r}")
    if sigma == 0:
        return maps.copy()
    # sigma 0 on the first axis: images are never blurred into each other.
    smoothed = ndimage.gaussian_filter(maps.astype(np.float64), sigma=(0.0, float(sigma), float(sigma)))
    return smoothed.astype(np.float32)
