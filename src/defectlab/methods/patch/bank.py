"""PatchCore's memory bank: a coreset of good patches, searched for each test patch's nearest one.

`PatchMemoryBank` keeps a coreset of the defect-free patches (`coreset`), indexes
it (`search`) and scores a test patch by its Euclidean distance to the nearest
kept patch, an image by its most anomalous patch, reweighted as in PatchCore's
eq. 7 (Roth et al., "Towards Total Recall in Industrial Anomaly Detection",
CVPR 2022). It knows nothing about networks: it takes patch feature vectors
``(n_patches, feature_dim)`` from any extractor (``features.py`` builds the
Keras one). Every score follows the package's sign convention: higher = more
anomalous.
"""

from __future__ import annotations

import numpy as np

from defectlab.methods.patch.arrays import (
    FLOAT32_BYTES, as_feature_matrix, check_positive_int, check_ratio, not_fitted_error,
)
from defectlab.methods.patch.coreset import (
    DEFAULT_PROJECTION_DIM, clustered_coreset_indices, coreset_selection_bytes, coreset_size,
)
from defectlab.methods.patch.search import AUTO, PatchIndex, exact_distances, index_bytes
from defectlab.progress import progress


class PatchMemoryBank:
    """PatchCore's detector head: a coreset of good patches and nearest-patch scores.

    Parameters
    ----------
    coreset_ratio : float in (0, 1], default=0.1
        Fraction of the good patches kept by `clustered_coreset_indices`
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
        Seeds the coreset (projection and partition) and the search index.
    search_index : {"auto", "exact", "ivf"}, default="auto"
        How the bank is searched (`defectlab.methods.patch.search.PatchIndex`).

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
    index_ : PatchIndex
        The search index over ``bank_`` (``index_.kind_`` says which was built).
    coreset_seconds_, index_seconds_ : float
        Time `fit` took to choose the coreset and to build the index.

    Notes
    -----
    Scores are raw Euclidean distances in feature space, so they are
    comparable only between images scored by the same fitted bank.
    """

    def __init__(
        self,
        coreset_ratio: float = 0.1,
        patch_neighbors: int = 9,
        projection_dim: int = DEFAULT_PROJECTION_DIM,
        seed: int = 0,
        search_index: str = AUTO,
    ):
        # scikit-learn convention: store the settings untouched, check them in fit.
        self.coreset_ratio = coreset_ratio
        self.patch_neighbors = patch_neighbors
        self.projection_dim = projection_dim
        self.seed = seed
        self.search_index = search_index

    def fit(self, good_patch_features) -> "PatchMemoryBank":
        """Keep a coreset of ``good_patch_features`` ``(n_patches, feature_dim)``; returns ``self``.

        Raises
        ------
        ValueError
            A setting out of range, or features that are not a non-empty
            finite 2-D array.
        """
        check_ratio(self.coreset_ratio)
        check_positive_int(self.patch_neighbors, "patch_neighbors")
        check_positive_int(self.projection_dim, "projection_dim")
        features = as_feature_matrix(good_patch_features, "good_patch_features")
        n_keep = coreset_size(len(features), self.coreset_ratio)
        with progress("choosing the coreset", n_keep, "patches") as step:
            indices = clustered_coreset_indices(
                features, self.coreset_ratio, projection_dim=self.projection_dim, seed=self.seed,
                on_step=step.update,
            )
        self.coreset_seconds_ = step.seconds
        return self._keep(features[indices], indices, n_patches_seen=len(features))

    def fit_bank(self, bank, n_patches_seen: int | None = None, index: PatchIndex | None = None) -> "PatchMemoryBank":
        """Use ``bank`` as it is, every row kept (a saved bank read back), with its saved ``index`` if given."""
        bank = as_feature_matrix(bank, "bank")
        self.coreset_seconds_ = 0.0
        return self._keep(bank, np.arange(len(bank)), n_patches_seen or len(bank), index)

    def _keep(self, bank: np.ndarray, indices: np.ndarray, n_patches_seen: int,
              index: PatchIndex | None = None) -> "PatchMemoryBank":
        self.bank_ = np.ascontiguousarray(bank)
        self.coreset_indices_ = np.asarray(indices, dtype=np.int64)
        self.n_patches_seen_ = int(n_patches_seen)
        self.n_features_in_ = int(bank.shape[1])
        self.index_seconds_ = 0.0
        if index is None:
            with progress("indexing the bank", len(self.bank_), "patches") as step:
                index = PatchIndex(self.search_index, seed=self.seed).fit(self.bank_)
                step.update(len(self.bank_))
            self.index_seconds_ = step.seconds
        self.index_ = index
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
        patch_features = as_feature_matrix(patch_features, "patch_features")
        self._check_feature_dim(patch_features, "patch_features")
        distances, _ = self.index_.search(patch_features, k=1)
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
        flat = as_feature_matrix(features.reshape(-1, features.shape[-1]), "patch_features_of_images")
        distances, nearest = self.index_.search(flat, k=1)
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
        _, support_rows = self.index_.search(nearest_bank, k=neighbors)  # N_b(m*)
        support_distances = exact_distances(test_patches, self.bank_[support_rows]).astype(np.float64)
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
    coreset_ratio: float, projection_dim: int = DEFAULT_PROJECTION_DIM, search_index: str = AUTO,
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
    search_index : {"auto", "exact", "ivf"}, default="auto"

    Returns
    -------
    dict
        ``n_patches`` and ``n_bank_patches`` (counts); ``all_patches_bytes``:
        every training patch as float32, which must be held before the
        coreset is chosen; ``bank_bytes``: the kept patches;
        ``coreset_selection_bytes``: what the selection adds on top of the
        patches (`coreset_selection_bytes`), zero for ``coreset_ratio == 1``;
        and ``index_bytes``: the search index beside the bank. Peak memory of
        `PatchMemoryBank.fit` is about the sum of the four byte counts.
    """
    for value, name in (
        (n_images, "n_images"), (grid_height, "grid_height"), (grid_width, "grid_width"),
        (feature_dim, "feature_dim"), (projection_dim, "projection_dim"),
    ):
        check_positive_int(value, name)
    n_patches = int(n_images) * int(grid_height) * int(grid_width)
    n_bank_patches = coreset_size(n_patches, coreset_ratio)
    return {
        "n_patches": n_patches,
        "n_bank_patches": n_bank_patches,
        "all_patches_bytes": n_patches * int(feature_dim) * FLOAT32_BYTES,
        "bank_bytes": n_bank_patches * int(feature_dim) * FLOAT32_BYTES,
        "coreset_selection_bytes": coreset_selection_bytes(n_patches, feature_dim, coreset_ratio, projection_dim),
        "index_bytes": index_bytes(search_index, n_bank_patches, int(feature_dim)),
    }
