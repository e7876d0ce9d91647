"""Detector bundles: a folder of plain files (``.keras`` networks, ``.npy`` arrays, ``detector.json``).

``detector.json`` holds the method's tag (``method``), the decoder's settings
(``preprocessing``, also flattened as ``image_size`` and ``grayscale``), the
deployed ``threshold`` and the method's own description of its files. The
method's ``load_detector`` reads the files back; nothing live is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from defectlab.data.decoder import ImageDecoder
from defectlab.methods import method_by_tag

BUNDLE_CONFIG_FILE = "detector.json"


def write_bundle(bundle_dir: Path, detector, method_tag: str, decoder: ImageDecoder, threshold: float) -> Path:
    """Save ``detector`` and ``detector.json`` into ``bundle_dir`` (created); returns the folder."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    bundle_config = {
        "method": method_tag,
        "image_size": int(decoder.image_size),
        "grayscale": bool(decoder.grayscale),
        "preprocessing": decoder.to_dict(),
        "threshold": float(threshold),
        **detector.save(bundle_dir),
    }
    (bundle_dir / BUNDLE_CONFIG_FILE).write_text(json.dumps(bundle_config, indent=2))
    return bundle_dir


def read_bundle(bundle_dir: Path) -> tuple[dict, object]:
    """``(detector.json as a dict, the method's detector)`` of a bundle folder."""
    config_path = Path(bundle_dir) / BUNDLE_CONFIG_FILE
    bundle_config = json.loads(config_path.read_text())
    method = method_by_tag(bundle_config.get("method", ""))
    return bundle_config, method.load_detector(Path(bundle_dir), bundle_config)


def bundle_decoder(bundle_config: dict) -> ImageDecoder:
    """The `ImageDecoder` a bundle was trained with (older bundles: size and colour mode only)."""
    return ImageDecoder.from_dict(bundle_config.get("preprocessing", bundle_config))


def bundle_ensemble_size(bundle_config: dict) -> int:
    """Members of a detector bundle (1 for a single network)."""
    return len(bundle_config.get("members", [])) or 1
