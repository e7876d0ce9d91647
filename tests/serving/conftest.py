"""Fixtures of the serving tests: a tiny detector of every method."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from defectlab.data import ImageDecoder
from defectlab.serving.bundle import write_bundle
from tests.conftest import TINY_IMAGE_SIZE


def untrained_metric_bundle(folder: Path, data_root: Path) -> Path:
    import keras

    from defectlab.methods.metric.detector import EmbeddingLOFDetector
    from defectlab.methods.metric.network import build_l2_softmax_classifier, embedding_model

    keras.utils.set_random_seed(0)
    decoder = ImageDecoder(TINY_IMAGE_SIZE)
    good = np.stack([decoder.decode(path) for path in sorted((data_root / "carpet" / "train" / "good").glob("*.png"))])
    embedder = embedding_model(build_l2_softmax_classifier(2, TINY_IMAGE_SIZE))
    detector = EmbeddingLOFDetector([embedder], lof_neighbors=3).fit(good)
    return write_bundle(folder, detector, "l2_softmax", decoder, threshold=1.5)


def untrained_ssim_bundle(folder: Path) -> Path:
    import keras

    from defectlab.methods.ssim.network import build_ssim_autoencoder
    from defectlab.methods.ssim.training import SSIMDetectorScorer, min_defect_area_for

    keras.utils.set_random_seed(0)
    autoencoder = build_ssim_autoencoder(TINY_IMAGE_SIZE, 1, 16)
    detector = SSIMDetectorScorer(autoencoder, ssim_window=11, min_defect_area=min_defect_area_for(TINY_IMAGE_SIZE))
    return write_bundle(folder, detector, "ssim_ae", ImageDecoder(TINY_IMAGE_SIZE, grayscale=True), threshold=0.5)


@pytest.fixture
def source_detector(request, tmp_path, tiny_dataset_root):
    """(model URI, ExportConfig options) of a tiny detector of the method ``request.param``."""
    if request.param == "patch":
        store = request.getfixturevalue("use_tiny_patch_store")
        return SimpleNamespace(model_uri=store.detector_uri, options={})
    category_options = {"category": "carpet", "data_dir": str(tiny_dataset_root)}
    if request.param == "metric":
        return SimpleNamespace(
            model_uri=str(untrained_metric_bundle(tmp_path / "bundle", tiny_dataset_root)), options=category_options,
        )
    return SimpleNamespace(model_uri=str(untrained_ssim_bundle(tmp_path / "bundle")), options=category_options)
