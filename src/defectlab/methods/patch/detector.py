"""The patch method's detector: backbone patch features, a coreset memory bank, anomaly maps.

No Keras at import: everything after the network is NumPy, and an exported
detector runs this class on its ONNX extractor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from defectlab.methods.network_files import KERAS_FORMAT, load_network, save_network
from defectlab.methods.patch.features import extract_patch_features
from defectlab.methods.patch.memory_bank import (
    PatchMemoryBank, gaussian_smooth_maps, not_fitted_error, upsample_maps,
)

if TYPE_CHECKING:
    import keras

EXTRACTOR_STEM = "patch_extractor"
BANK_FILE = "memory_bank.npy"
# PatchCore smooths its 224 px maps with sigma 4; the same blur relative to the image at other sizes.
SMOOTHING_SIGMA_AT_224 = 4.0


def smoothing_sigma_for(image_size: int) -> float:
    """Gaussian sigma in pixels of an ``image_size`` map: PatchCore's 4 px at 224 px, scaled."""
    return SMOOTHING_SIGMA_AT_224 * image_size / 224.0


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
    seed : int
    batch_size : int
        Images per forward pass.

    Attributes
    ----------
    memory_bank_ : PatchMemoryBank
        The fitted bank (``bank_``: the kept patches, float32 ``(m, d)``).
    grid_shape_ : tuple of int
        Patch grid of one image.
    """

    def __init__(self, extractor: keras.Model, patch_size: int = 3, feature_dim: int = 0,
                 coreset_ratio: float = 0.1, patch_neighbors: int = 9, seed: int = 0,
                 batch_size: int = 32):
        self.extractor = extractor
        self.patch_size = patch_size
        self.feature_dim = feature_dim
        self.coreset_ratio = coreset_ratio
        self.patch_neighbors = patch_neighbors
        self.seed = seed
        self.batch_size = batch_size

    def patch_features(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(n, grid_h, grid_w, d)`` patch features of ``uint8`` images."""
        return extract_patch_features(
            self.extractor, images, patch_size=self.patch_size,
            feature_dim=self.feature_dim or None, batch_size=self.batch_size,
        )

    def fit(self, good_images: np.ndarray) -> "PatchCoreDetector":
        """Extract the good images' patches and keep a coreset of them; returns self."""
        features = self.patch_features(good_images)
        self.grid_shape_ = tuple(int(size) for size in features.shape[1:3])
        return self._fit_bank(features.reshape(-1, features.shape[-1]))

    def _fit_bank(self, patch_features: np.ndarray) -> "PatchCoreDetector":
        self.memory_bank_ = PatchMemoryBank(
            coreset_ratio=self.coreset_ratio, patch_neighbors=self.patch_neighbors, seed=self.seed
        ).fit(patch_features)
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
        for start in range(0, len(images), self.batch_size):
            features = self.patch_features(images[start:start + self.batch_size])
            reweighted, patch_grids = self.memory_bank_.score_images(features)
            top_patch = patch_grids.reshape(len(patch_grids), -1).max(axis=1)
            reweighting = np.divide(
                reweighted, top_patch, out=np.ones_like(reweighted), where=top_patch > 0
            )
            batch_maps = gaussian_smooth_maps(
                upsample_maps(patch_grids, image_size), sigma=smoothing_sigma_for(image_size)
            )
            scores.append(batch_maps.reshape(len(batch_maps), -1).max(axis=1) * reweighting)
            maps.append(batch_maps)
        return np.concatenate(scores).astype(np.float64), np.concatenate(maps)

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
        return {
            "extractor": save_network(self.extractor, folder, EXTRACTOR_STEM, network_format),
            "memory_bank": BANK_FILE,
            "patch_size": int(self.patch_size),
            "feature_dim": int(self.feature_dim),
            "coreset_ratio": float(self.coreset_ratio),
            "patch_neighbors": int(self.patch_neighbors),
            "grid_shape": list(self.grid_shape_),
            "seed": int(self.seed),
        }

    @classmethod
    def load(cls, folder: Path, description: dict) -> "PatchCoreDetector":
        """The detector saved by `save`: the bank is read back as saved (coreset ratio 1 keeps all).

        An ``.onnx`` extractor loads without TensorFlow (`load_network`).
        """
        folder = Path(folder)
        detector = cls(
            load_network(folder / description["extractor"]),
            patch_size=int(description["patch_size"]),
            feature_dim=int(description["feature_dim"]),
            coreset_ratio=1.0,
            patch_neighbors=int(description["patch_neighbors"]),
            seed=int(description["seed"]),
        )
        detector.grid_shape_ = tuple(description["grid_shape"])
        detector._fit_bank(np.load(folder / description["memory_bank"], allow_pickle=False))
        detector.coreset_ratio = float(description["coreset_ratio"])
        return detector
