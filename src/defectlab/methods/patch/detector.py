"""The patch method's detector: backbone patch features, a coreset memory bank, anomaly maps.

No Keras at import: everything after the network is NumPy, and an exported
detector runs this class on its ONNX extractor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from defectlab.methods.batches import whole_batches
from defectlab.methods.network_files import KERAS_FORMAT, load_network, save_network
from defectlab.methods.patch.arrays import not_fitted_error
from defectlab.methods.patch.bank import PatchMemoryBank
from defectlab.methods.patch.features import extract_patch_features
from defectlab.methods.patch.maps import gaussian_smooth_maps, upsample_maps
from defectlab.methods.patch.search import AUTO, EXACT, PatchIndex
from defectlab.progress import progress

if TYPE_CHECKING:
    import keras

EXTRACTOR_STEM = "patch_extractor"
BANK_FILE = "memory_bank.npy"
# The IVF index as faiss serialised it (an exact index is rebuilt from the bank).
INDEX_FILE = "search_index.npy"
# PatchCore smooths its 224 px maps with sigma 4; the same blur relative to the image at other sizes.
SMOOTHING_SIGMA_AT_224 = 4.0
SMOOTHING_REFERENCE_SIZE = 224


def smoothing_sigma_for(image_size: int, map_sigma: float = SMOOTHING_SIGMA_AT_224) -> float:
    """Gaussian sigma in pixels of an ``image_size`` map: ``map_sigma`` pixels at 224 px, scaled."""
    return map_sigma * image_size / SMOOTHING_REFERENCE_SIZE


class PatchCoreDetector:
    """Scores images by their patches' distances to a memory bank of good patches.

    Higher = more anomalous, for the image scores and the maps alike.

    Parameters
    ----------
    extractor : keras.Model
        uint8-range images ``(n, s, s, 3)`` to the feature layers' activations
        (`defectlab.methods.patch.features.patch_feature_extractor`).
    patch_size : int
        Neighbourhood of the local averaging of each layer's features.
    feature_dim : int
        Channels kept per patch (0: all).
    coreset_ratio : float in (0, 1]
        Fraction of the good patches kept in the bank.
    patch_neighbors : int
        PatchCore's reweighting of the image score (1: none).
    map_sigma : float
        Gaussian smoothing of the maps in pixels of a 224 px image, scaled with
        the image size (PatchCore's 4; 0: none).
    seed : int
    batch_size : int
        Images per forward pass.
    search_index : {"auto", "exact", "ivf"}
        How the bank is searched (`defectlab.methods.patch.search.PatchIndex`).

    Attributes
    ----------
    memory_bank_ : PatchMemoryBank
        The fitted bank (``bank_``: the kept patches, float32 ``(m, d)``;
        ``coreset_seconds_``, ``index_seconds_``: its fit, step by step).
    grid_shape_ : tuple of int
        Patch grid of one image.
    extract_seconds_ : float
        Time `fit` took to extract the good images' patch features.
    """

    def __init__(self, extractor: keras.Model, patch_size: int = 3, feature_dim: int = 0,
                 coreset_ratio: float = 0.1, patch_neighbors: int = 9,
                 map_sigma: float = SMOOTHING_SIGMA_AT_224, seed: int = 0,
                 batch_size: int = 32, search_index: str = AUTO):
        self.extractor = extractor
        self.patch_size = patch_size
        self.feature_dim = feature_dim
        self.coreset_ratio = coreset_ratio
        self.patch_neighbors = patch_neighbors
        self.map_sigma = map_sigma
        self.seed = seed
        self.batch_size = batch_size
        self.search_index = search_index

    def patch_features(self, images: np.ndarray, on_batch=None) -> np.ndarray:
        """float32 ``(n, grid_h, grid_w, d)`` patch features of ``uint8`` images."""
        return extract_patch_features(
            self.extractor, images, patch_size=self.patch_size,
            feature_dim=self.feature_dim or None, batch_size=self.batch_size, on_batch=on_batch,
        )

    def _memory_bank(self) -> PatchMemoryBank:
        return PatchMemoryBank(
            coreset_ratio=self.coreset_ratio, patch_neighbors=self.patch_neighbors, seed=self.seed,
            search_index=self.search_index,
        )

    def fit(self, good_images: np.ndarray) -> "PatchCoreDetector":
        """Extract the good images' patches, keep a coreset of them and index it; returns self."""
        with progress("extracting patch features", len(good_images), "images") as step:
            features = self.patch_features(good_images, on_batch=step.update)
        self.extract_seconds_ = step.seconds
        self.grid_shape_ = tuple(int(size) for size in features.shape[1:3])
        self.memory_bank_ = self._memory_bank().fit(features.reshape(-1, features.shape[-1]))
        return self

    def score_images_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(n,)`` and anomaly maps ``(n, s, s)`` of ``uint8`` images; higher = more anomalous.

        The map is each patch's distance to its nearest bank patch, upsampled
        bilinearly to the image and Gaussian-smoothed; the image score is the
        map's maximum, scaled by PatchCore's reweighting factor of the most
        anomalous patch (how common its nearest good patch is).
        """
        if not hasattr(self, "memory_bank_"):
            raise not_fitted_error("PatchCoreDetector is not fitted yet; call fit first")
        image_size = images.shape[1]
        if len(images) == 0:
            return np.zeros(0), np.zeros((0, image_size, image_size), dtype=np.float32)
        scores, maps = [], []
        with progress("scoring", len(images), "images") as step:
            chunk = whole_batches(self.batch_size)
            for start in range(0, len(images), chunk):
                batch_scores, batch_maps = self._score_batch(images[start:start + chunk])
                scores.append(batch_scores)
                maps.append(batch_maps)
                step.update(len(batch_maps))
        return np.concatenate(scores).astype(np.float64), np.concatenate(maps)

    def _score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and maps of one batch (see `score_images_with_maps`)."""
        image_size = images.shape[1]
        reweighted, patch_grids = self.memory_bank_.score_images(self.patch_features(images))
        top_patch = patch_grids.reshape(len(patch_grids), -1).max(axis=1)
        reweighting = np.divide(reweighted, top_patch, out=np.ones_like(reweighted), where=top_patch > 0)
        maps = gaussian_smooth_maps(upsample_maps(patch_grids, image_size), sigma=smoothing_sigma_for(image_size, self.map_sigma))
        return maps.reshape(len(maps), -1).max(axis=1) * reweighting, maps

    def score_images(self, images: np.ndarray) -> np.ndarray:
        """Anomaly score per ``uint8`` image, shape ``(n,)``; higher = more anomalous."""
        return self.score_images_with_maps(images)[0]

    @property
    def bank_bytes(self) -> int:
        return int(self.memory_bank_.bank_.nbytes)

    def save(self, folder: Path, network_format: str = KERAS_FORMAT) -> dict:
        """Write the extractor (``patch_extractor.keras``, or ``.onnx``) and ``memory_bank.npy``; returns the description."""
        folder = Path(folder)
        np.save(folder / BANK_FILE, self.memory_bank_.bank_, allow_pickle=False)
        index = self.memory_bank_.index_
        search = {**index.description(), "index_file": None}
        if index.kind_ != EXACT:
            np.save(folder / INDEX_FILE, index.to_bytes(), allow_pickle=False)
            search["index_file"] = INDEX_FILE
        return {
            "extractor": save_network(self.extractor, folder, EXTRACTOR_STEM, network_format),
            "memory_bank": BANK_FILE,
            "patch_size": int(self.patch_size),
            "feature_dim": int(self.feature_dim),
            "coreset_ratio": float(self.coreset_ratio),
            "patch_neighbors": int(self.patch_neighbors),
            "map_sigma": float(self.map_sigma),
            "grid_shape": list(self.grid_shape_),
            "seed": int(self.seed),
            "search": search,
        }

    @classmethod
    def load(cls, folder: Path, description: dict) -> "PatchCoreDetector":
        """The detector saved by `save`: the bank and its search index read back as saved.

        An ``.onnx`` extractor loads without TensorFlow (`load_network`). A
        bundle saved before the search index was recorded is searched exactly.
        """
        folder = Path(folder)
        detector = cls(
            load_network(folder / description["extractor"]),
            patch_size=int(description["patch_size"]),
            feature_dim=int(description["feature_dim"]),
            coreset_ratio=float(description["coreset_ratio"]),
            patch_neighbors=int(description["patch_neighbors"]),
            # Bundles saved before the smoothing was a setting used PatchCore's.
            map_sigma=float(description.get("map_sigma", SMOOTHING_SIGMA_AT_224)),
            seed=int(description["seed"]),
        )
        search = description.get("search", {"search_index": "exact", "index_file": None})
        detector.search_index = search["search_index"]
        detector.grid_shape_ = tuple(description["grid_shape"])
        bank = np.load(folder / description["memory_bank"], allow_pickle=False)
        index = None
        if search["index_file"]:
            index = PatchIndex.from_bytes(np.load(folder / search["index_file"], allow_pickle=False), bank, search)
        detector.memory_bank_ = detector._memory_bank().fit_bank(bank, index=index)
        return detector
