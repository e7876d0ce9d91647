"""``defectlab export``: a detector that serves without TensorFlow, checked for parity before it is written.

`run_export` is what the command calls::

    checks (format, out folder, the detector, tf2onnx, the tracking server) -> threshold-split images
    -> bundle with ONNX networks (the method's ``onnx_export.write``) -> parity: exported vs original scores
    -> MLflow model folder ``out`` -> optional run (tag ``runtime=onnx``) and registration

The exported folder is an MLflow model like a logged ``detector``: the same
`defectlab.serving.detector.DefectDetector` pyfunc and signature, over a
bundle whose ``detector.json`` says ``"runtime": "onnx"`` and whose networks
are ``.onnx`` graphs run by onnxruntime; everything after the networks is
the method's own NumPy/scikit-learn code. Its pip requirements are
``requirements-onnx.txt`` pinned to the installed versions (no TensorFlow, no
Keras), so ``mlflow.pyfunc.load_model(out)``, ``mlflow models serve -m out``
and ``defectlab predict --model-uri out`` never import either.

Parity: both detectors score the category's ``threshold`` split (the
training run's ``scores.csv`` rows of that split, or ``category`` of
``data_dir``), each image decoded once by the detector's own decoder. The
export fails with `ParityError`, leaving ``out`` untouched, when an image's
scores differ by more than ``parity_tolerance`` (default
`PARITY_RELATIVE_TOLERANCE`) relative to the original's (`relative_differences`).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectlab import tracking
from defectlab.config import PARITY_TOLERANCE_LIMIT, ExportConfig
from defectlab.errors import DefectlabError, spell_setting
from defectlab.serving.bundle import (
    KERAS_RUNTIME, ONNX_RUNTIME, bundle_runtime, onnx_export_of, write_bundle,
)
from defectlab.serving.detector import (
    DefectDetector, bundle_to_local_detector, detector_signature_and_example, load_detector,
)

PARITY_RELATIVE_TOLERANCE = ExportConfig.parity_tolerance  # the default
# Below this magnitude of the original score a difference is measured against it (not a smaller divisor).
PARITY_SCALE_FLOOR = 1e-6
THRESHOLD_SPLIT = "threshold"
ONNX_REQUIREMENTS_FILE = Path(__file__).with_name("requirements-onnx.txt")
EXPORT_TAGS = {"runtime": ONNX_RUNTIME}


class ExportError(DefectlabError, ValueError):
    """The export cannot start (folder, detector, data, exporter); raised before any work."""


class ParityError(DefectlabError, RuntimeError):
    """The exported detector's scores differ from the original's by more than the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    """How closely the exported detector's scores follow the original's on the parity images."""

    images: int
    max_relative_difference: float
    max_absolute_difference: float
    worst_image: str
    worst_original_score: float
    worst_exported_score: float

    def summary(self) -> str:
        return (
            f"max relative difference {self.max_relative_difference:.3g} over {self.images} images "
            f"(worst {self.worst_image}: original {self.worst_original_score:.8g}, "
            f"exported {self.worst_exported_score:.8g})"
        )


@dataclass(frozen=True)
class ExportResult:
    """What an export produced: the folder, the parity figures, and the run and version when logged."""

    out_dir: Path
    method: str
    parity: ParityReport
    parity_source: str
    parity_tolerance: float = PARITY_RELATIVE_TOLERANCE
    run_id: str | None = None
    model_uri: str | None = None
    model_version: str | None = None

    def summary(self) -> str:
        """The result in one line (what ``defectlab export`` prints)."""
        return (
            f"exported the {self.method} detector to {self.out_dir} (ONNX, no TensorFlow); parity on "
            f"{self.parity_source}: {self.parity.summary()}, within {self.parity_tolerance:g}"
        )


# Checks


def check_export_folder(out: str, overwrite: bool) -> Path:
    """``out`` as a path; `ExportError` if it is a file, or a non-empty folder without ``overwrite``.

    ``overwrite`` replaces only an earlier export (a folder holding ``MLmodel``),
    never a folder of other files.
    """
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"out {out} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(
                f"out {out} exists and is not empty; choose another folder or pass --overwrite "
                "(it replaces an earlier export there)"
            )
        if not (out_dir / "MLmodel").is_file():
            raise ExportError(
                f"out {out} holds files that are not an exported model (no MLmodel); --overwrite "
                "replaces only an earlier export, so choose another folder"
            )
    return out_dir


def check_exportable(detector: DefectDetector, model_uri: str) -> None:
    """`ExportError` for a detector that is exported already; `ConfigError` for a method without export."""
    runtime = bundle_runtime(detector.bundle_config)
    if runtime != KERAS_RUNTIME:
        raise ExportError(f"{model_uri} is already an exported detector (runtime {runtime})")
    onnx_export_of(detector.method)


def check_onnx_exporter() -> None:
    """`ExportError` when tf2onnx (Keras's ONNX exporter) or onnxruntime is not installed."""
    import importlib.util

    missing = [name for name in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"exporting to ONNX needs {', '.join(missing)}: pip install 'defectlab[onnx]'"
        )


# Parity


def parity_images(config: ExportConfig, detector: DefectDetector) -> tuple[list[str], np.ndarray, str]:
    """The threshold split's image paths, decoded by the detector's decoder, and a phrase naming their source.

    With ``config.category``: that category of ``config.data_dir``, split with
    ``config.seed``. Otherwise the ``threshold`` rows of the ``scores.csv`` of
    the run that logged ``config.model_uri``. `ExportError` when there is no
    such run, or its images are not on this machine.
    """
    from defectlab import data

    decoder = detector.decoder
    if config.category:
        table = data.split_category_table(
            data.read_category_table(data.resolve_data_root(config.data_dir), config.category),
            seed=config.seed, category=config.category,
        )
        paths = table.loc[table["split"] == THRESHOLD_SPLIT, "path"].tolist()
        source = f"{config.category} of {config.data_dir} (threshold split, seed {config.seed})"
    else:
        paths, source = _threshold_paths_of_run(config.model_uri)
    if not paths:
        raise ExportError(f"{source} holds no threshold-split images to check parity on")
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise ExportError(
            f"{len(missing)} of the {len(paths)} threshold-split images of {source} are not on this "
            f"machine (e.g. {missing[0]}); pass --category and --data-dir"
        )
    images = decoder.empty_batch(len(paths))
    for index, path in enumerate(paths):
        images[index] = decoder.decode(path)
    return paths, images, source


def _threshold_paths_of_run(model_uri: str) -> tuple[list[str], str]:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from defectlab.tracking.registry import run_id_of_model_uri

    run_id = run_id_of_model_uri(model_uri)
    if run_id is None:
        raise ExportError(
            f"{model_uri} names no training run whose scores.csv holds the threshold split; "
            "pass --category (and --data-dir)"
        )
    try:
        scores = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="scores.csv"))
    except (MlflowException, OSError) as error:
        raise ExportError(
            f"the run {run_id} of {model_uri} has no readable scores.csv ({error}); pass --category "
            "(and --data-dir)"
        ) from None
    return scores.loc[scores["split"] == THRESHOLD_SPLIT, "path"].tolist(), f"the scores.csv of run {run_id}"


def relative_differences(original_scores, exported_scores) -> np.ndarray:
    """``|exported - original| / max(|original|, PARITY_SCALE_FLOOR)`` per image, shape ``(n,)``."""
    original_scores = np.asarray(original_scores, dtype=np.float64)
    exported_scores = np.asarray(exported_scores, dtype=np.float64)
    scale = np.maximum(np.abs(original_scores), PARITY_SCALE_FLOOR)
    return np.abs(exported_scores - original_scores) / scale


def check_parity(original: DefectDetector, exported: DefectDetector, paths: list[str],
                 images: np.ndarray, tolerance: float = PARITY_RELATIVE_TOLERANCE) -> ParityReport:
    """Score ``images`` with both detectors; `ParityError` saying by how much when they differ beyond ``tolerance``."""
    original_scores = original.score(images)[0]
    exported_scores = exported.score(images)[0]
    differences = relative_differences(original_scores, exported_scores)
    if not np.all(np.isfinite(exported_scores)):
        differences = np.where(np.isfinite(exported_scores), differences, np.inf)
    worst = int(np.argmax(differences))
    report = ParityReport(
        images=len(images),
        max_relative_difference=float(differences[worst]),
        max_absolute_difference=float(np.max(np.abs(exported_scores - original_scores))),
        worst_image=Path(paths[worst]).name,
        worst_original_score=float(original_scores[worst]),
        worst_exported_score=float(exported_scores[worst]),
    )
    if not report.max_relative_difference <= tolerance:
        raise ParityError(
            f"the exported detector's scores differ from the original's beyond {tolerance:g} relative: "
            f"{report.summary()}; nothing was written. {parity_advice(report)}"
        )
    return report


def parity_advice(report: ParityReport) -> str:
    """What to do about a failed parity check: a broken graph, or rounding the detector magnifies."""
    if not report.max_relative_difference < PARITY_TOLERANCE_LIMIT:
        return (
            "Differences this large are not rounding: the exported graph computes something else; "
            "do not deploy it (report it with the method and the worst image)."
        )
    suggested = min(_round_up_two_digits(2 * report.max_relative_difference), PARITY_TOLERANCE_LIMIT)
    return (
        "Both graphs compute in float32 with different kernels, so their networks' outputs agree to about "
        "1e-6; a detector whose scores magnify that (e.g. a metric detector trained for a few epochs, whose "
        "good images' features barely differ, scored by LOF) misses the default tolerance with neither "
        "graph wrong, and its scores move as much on another CPU or a GPU. Train it longer, or accept the "
        f"difference with {spell_setting('parity_tolerance', suggested)}"
    )


def _round_up_two_digits(value: float) -> float:
    """``value`` rounded up to two significant digits (0.001026 -> 0.0011)."""
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return float(f"{math.ceil(value / scale - 1e-9) * scale:.2g}")


# The command


def onnx_requirements() -> list[str]:
    """The exported model's pip requirements: `ONNX_REQUIREMENTS_FILE`'s packages at the installed versions."""
    packages = [
        line.split(">=")[0].split("==")[0].strip()
        for line in ONNX_REQUIREMENTS_FILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return tracking.pinned_requirements(packages)


def run_export(config: ExportConfig) -> ExportResult:
    """Export ``config.model_uri`` into ``config.out`` as an MLflow model that serves without TensorFlow.

    Every check comes first, each a one-line error: the out folder
    (`ExportError`), a URI or folder that is not a defectlab detector
    (`defectlab.serving.detector.DetectorUnavailableError`), a detector
    exported already or of a method without ONNX export, a missing exporter,
    the tracking server (with ``log`` or ``register_as``) and the parity
    images. Then the bundle is written and checked in a staging folder beside
    ``out``, which becomes ``out`` only when parity holds (`ParityError`
    otherwise: ``out`` is left as it was).
    """
    out_dir = check_export_folder(config.out, config.overwrite)
    detector = load_detector(config.model_uri)
    check_exportable(detector, config.model_uri)
    check_onnx_exporter()
    logged = bool(config.log or config.register_as)
    if logged:
        tracking.check_tracking_server()
    paths, images, parity_source = parity_images(config, detector)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-export-", dir=out_dir.parent) as staging:
        staging = Path(staging)
        bundle_dir = write_bundle(
            staging / "bundle", detector.scorer, detector.method.tag, detector.decoder,
            detector.threshold, runtime=ONNX_RUNTIME,
        )
        parity = check_parity(
            detector, bundle_to_local_detector(bundle_dir), paths, images, tolerance=config.parity_tolerance
        )
        signature, input_example = detector_signature_and_example(
            detector.decoder.image_size, detector.decoder.grayscale
        )
        requirements = onnx_requirements()
        model_dir = tracking.save_detector(staging / "model", bundle_dir, signature, input_example, requirements)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(model_dir), str(out_dir))
        result = ExportResult(out_dir=out_dir, method=detector.method.name, parity=parity,
                              parity_source=parity_source, parity_tolerance=config.parity_tolerance)
        if logged:
            result = _log_export(config, detector, bundle_dir, signature, input_example, requirements, result)
    return result


def _log_export(config: ExportConfig, detector: DefectDetector, bundle_dir: Path, signature, input_example,
                requirements: list[str], result: ExportResult) -> ExportResult:
    """Log the export as a run's ``detector`` (tags ``runtime=onnx``, ``exported_model``) and register it.

    The run carries the source run's metrics (the exported detector scores
    within the tolerance of it), so ``promote`` compares the version with the
    others of its name; tag ``metrics_from_run`` names where they come from.
    """
    from mlflow import MlflowClient

    from defectlab.tracking.registry import run_id_of_model_uri, version_of_model_uri

    source_run_id = run_id_of_model_uri(config.model_uri)
    source_run = MlflowClient().get_run(source_run_id) if source_run_id else None
    tags = {
        **EXPORT_TAGS,
        "method": detector.method.tag,
        "category": config.category or (source_run.data.tags.get("category", "") if source_run else ""),
        "exported_model": config.model_uri,
        "exported_model_version": version_of_model_uri(config.model_uri),
    }
    if source_run:
        tags["metrics_from_run"] = source_run_id
    with tracking.tracked_run(dataclasses.asdict(config), tags) as run:
        if source_run:
            tracking.log_metrics(source_run.data.metrics)
        tracking.log_metrics({
            "parity_max_relative_difference": result.parity.max_relative_difference,
            "parity_max_absolute_difference": result.parity.max_absolute_difference,
            "parity_images": result.parity.images,
        })
        model_info = tracking.log_detector(bundle_dir, signature, input_example, pip_requirements=requirements)
        model_version = None
        if config.register_as:
            model_version = tracking.register_model(model_info.model_uri, config.register_as).version
            client = MlflowClient()
            for key, value in EXPORT_TAGS.items():
                client.set_model_version_tag(config.register_as, model_version, key, value)
    return dataclasses.replace(
        result, run_id=run.info.run_id, model_uri=model_info.model_uri,
        model_version=str(model_version) if model_version else None,
    )
