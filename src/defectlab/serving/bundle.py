"""Detector bundles: a folder of plain files (``.keras`` networks, ``.npy`` arrays, ``detector.json``).

``detector.json`` holds the method's tag (``method``), the decoder's settings
(``preprocessing``, also flattened as ``image_size`` and ``grayscale``), the
deployed ``threshold``, the ``runtime`` its networks need (``keras``, or
``onnx`` for a detector exported without TensorFlow; bundles from before
the key are ``keras``) and the method's own description of its files. The
method's ``load_detector`` (``onnx_export.load`` for ``onnx``) reads the files
back; nothing live is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from defectlab.config import ConfigError
from defectlab.data.decoder import ImageDecoder
from defectlab.methods import method_by_tag

BUNDLE_CONFIG_FILE = "detector.json"
KERAS_RUNTIME = "keras"
ONNX_RUNTIME = "onnx"
RUNTIMES = (KERAS_RUNTIME, ONNX_RUNTIME)


def write_bundle(bundle_dir: Path, detector, method_tag: str, decoder: ImageDecoder, threshold: float,
                 runtime: str = KERAS_RUNTIME) -> Path:
    """Save ``detector`` and ``detector.json`` into ``bundle_dir`` (created); returns the folder.

    ``runtime`` ``onnx`` writes the networks as ONNX graphs (the method's
    ``onnx_export.write``; needs tf2onnx) for serving without TensorFlow.
    """
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    if runtime == KERAS_RUNTIME:
        description = detector.save(bundle_dir)
    else:
        description = onnx_export_of(method_by_tag(method_tag), runtime).write(detector, bundle_dir)
    bundle_config = {
        "method": method_tag,
        "image_size": int(decoder.image_size),
        "grayscale": bool(decoder.grayscale),
        "preprocessing": decoder.to_dict(),
        "threshold": float(threshold),
        "runtime": runtime,
        **description,
    }
    (bundle_dir / BUNDLE_CONFIG_FILE).write_text(json.dumps(bundle_config, indent=2))
    return bundle_dir


def read_bundle(bundle_dir: Path) -> tuple[dict, object]:
    """``(detector.json as a dict, the method's detector)`` of a bundle folder."""
    config_path = Path(bundle_dir) / BUNDLE_CONFIG_FILE
    bundle_config = json.loads(config_path.read_text())
    method = method_by_tag(bundle_config.get("method", ""))
    runtime = bundle_runtime(bundle_config)
    if runtime == KERAS_RUNTIME:
        return bundle_config, method.load_detector(Path(bundle_dir), bundle_config)
    return bundle_config, onnx_export_of(method, runtime).load(Path(bundle_dir), bundle_config)


def bundle_runtime(bundle_config: dict) -> str:
    """``keras`` or ``onnx``: what the bundle's networks run on."""
    return bundle_config.get("runtime", KERAS_RUNTIME)


def onnx_export_of(method, runtime: str = ONNX_RUNTIME):
    """The method's `OnnxExport`; `ConfigError` for an unknown runtime or a method that has none."""
    if runtime != ONNX_RUNTIME:
        raise ConfigError(f"unknown detector runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if method.onnx_export is None:
        raise ConfigError(f"the {method.name} method's detectors cannot be exported to ONNX")
    return method.onnx_export


def bundle_decoder(bundle_config: dict) -> ImageDecoder:
    """The `ImageDecoder` a bundle was trained with (older bundles: size and colour mode only)."""
    return ImageDecoder.from_dict(bundle_config.get("preprocessing", bundle_config))


def bundle_ensemble_size(bundle_config: dict) -> int:
    """Members of a detector bundle (1 for a single network)."""
    return len(bundle_config.get("members", [])) or 1
