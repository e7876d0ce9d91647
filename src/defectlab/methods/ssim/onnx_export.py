"""The SSIM detector without TensorFlow: reconstruction and anomaly map in one ONNX graph, the image score in NumPy.

`write` (TensorFlow, tf2onnx) exports the detector's own map network
(`defectlab.methods.ssim.training.anomaly_map_network`: ``uint8``-range
images to the autoencoder's reconstruction and the per-pixel ``1 - SSIM``
map, so the map's arithmetic travels inside the graph). `ExportedSSIMDetector` runs that graph with onnxruntime and turns the maps
into image scores with `defectlab.methods.ssim.region` (NumPy, SciPy): this
module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from defectlab.methods.batches import predict_fixed_shape
from defectlab.methods.network_files import ONNX_FORMAT, load_network, save_network
from defectlab.methods.ssim.region import region_scores

MAP_NETWORK_STEM = "anomaly_map_network"


def write(detector, folder: Path) -> dict:
    """Write ``anomaly_map_network.onnx``; returns the JSON-able description `load` reads."""
    return {
        "anomaly_map_network": save_network(detector.map_network, folder, MAP_NETWORK_STEM, ONNX_FORMAT),
        "ssim_window": int(detector.ssim_window),
        "min_defect_area": int(detector.min_defect_area),
    }


def load(folder: Path, description: dict) -> "ExportedSSIMDetector":
    return ExportedSSIMDetector(
        load_network(Path(folder) / description["anomaly_map_network"]),
        min_defect_area=int(description["min_defect_area"]),
    )


class ExportedSSIMDetector:
    """An exported SSIM detector: scores and maps as `SSIMDetectorScorer`'s, without TensorFlow.

    Higher = more anomalous, for the image scores and the maps alike.

    Parameters
    ----------
    map_network : OnnxNetwork
        ``uint8``-range images to (reconstructions, ``1 - SSIM`` maps), from `write`.
    min_defect_area : int
        Minimum defect area in pixels of the image score (`region_score`).
    """

    def __init__(self, map_network, min_defect_area: int = 1):
        self.map_network = map_network
        self.min_defect_area = min_defect_area

    def _network_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(images) == 0:
            return np.zeros(images.shape, dtype=np.float32), np.zeros(images.shape[:3], dtype=np.float32)
        reconstructions, anomaly_maps = predict_fixed_shape(self.map_network, images)
        return np.asarray(reconstructions, dtype=np.float32), np.asarray(anomaly_maps, dtype=np.float32)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Reconstructions of ``uint8`` images: float32 in [0, 1], same shape."""
        return self._network_outputs(images)[0]

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Per-pixel ``1 - SSIM`` of ``uint8`` images and their reconstructions: float32 ``(n, h, w)``."""
        return self._network_outputs(images)[1]

    def score_images_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(n,)`` (higher = more anomalous) and anomaly maps ``(n, h, w)`` of ``uint8`` images."""
        anomaly_maps = self.anomaly_maps(images)
        return region_scores(anomaly_maps, self.min_defect_area), anomaly_maps

    def score_images(self, images: np.ndarray) -> np.ndarray:
        """Anomaly score per ``uint8`` image, shape ``(n,)``; higher = more anomalous."""
        return self.score_images_with_maps(images)[0]
