"""The exported (ONNX) detector against the TensorFlow one: latency, throughput, cold start, install size.

Fits one tiny detector on the built-in synthetic set (in a throwaway SQLite
store; ``--method patch`` with its random backbone by default: seconds, no
download), downloads its logged ``detector`` folder and exports it with
``defectlab export --format onnx``. Then, for each of the two model folders:

- single-image latency: median seconds of ``score`` on one decoded image,
  ``--requests`` calls, alternating between the two detectors in one process
  (the first ``--warmup`` of each not timed);
- batch throughput: images/s of ``score`` on ``--batch-size`` decoded images
  (best of ``--batch-repeats``);
- cold start: a fresh ``python`` process that loads the folder with
  ``mlflow.pyfunc.load_model`` and predicts one image file, timed from just
  before the process starts to its answer (median of ``--cold-starts``,
  alternating; the ONNX one under an import blocker, so it cannot use
  TensorFlow even by accident);
- install size: the installed size of the folder's ``requirements.txt`` and
  everything those packages require (their ``Requires-Dist`` closure, extras
  left out), summed from the files each distribution lists in this
  environment (``importlib.metadata``): what a serving environment for the
  model would hold.

Run: ``python benchmarks/bench_onnx.py --image-size 64``. Prints the figures
and the ONNX/TensorFlow ratios (goal: cold start and install size both at most
1/3); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

from defectlab.config import ExportConfig  # noqa: E402
from defectlab.data.synthetic import SyntheticSpec, generate_dataset  # noqa: E402
from defectlab.methods import get_method  # noqa: E402
from defectlab.runner import run_training  # noqa: E402
from defectlab.serving.detector import load_detector  # noqa: E402
from defectlab.serving.export import run_export  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
from tests.tensorflow_blocker import blocked_environment  # noqa: E402

COLD_START = """
import sys, time
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.DataFrame({"image": [sys.argv[2]]}))
print("ANSWERED", time.time())
"""


def cold_start_seconds(model_dir: Path, image_path: str, environment: dict) -> float:
    """Seconds from just before a fresh process starts to its first prediction."""
    started = time.time()
    completed = subprocess.run(
        [sys.executable, "-c", COLD_START, str(model_dir), image_path],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    (line,) = [line for line in completed.stdout.splitlines() if line.startswith("ANSWERED ")]
    return float(line.split()[1]) - started


def requirement_names(requirements_file: Path) -> list[str]:
    lines = [line.strip() for line in requirements_file.read_text().splitlines()]
    return [Requirement(line).name for line in lines if line and not line.startswith(("#", "-"))]


def requirement_closure(names: list[str]) -> set[str]:
    """Canonical names of ``names`` and every distribution they require, recursively (no extras)."""
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform package not installed here
        seen.add(name)
        for requirement_text in distribution.requires or []:
            requirement = Requirement(requirement_text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def installed_bytes(distribution_name: str) -> int:
    total = 0
    for file in metadata.distribution(distribution_name).files or []:
        path = Path(file.locate())
        if path.is_file():
            total += path.stat().st_size
    return total


def install_size(requirements_file: Path) -> tuple[int, int]:
    """(bytes, distributions) of the requirement closure of a model's ``requirements.txt``."""
    closure = requirement_closure(requirement_names(requirements_file))
    return sum(installed_bytes(name) for name in closure), len(closure)


def median_latency(detectors: dict, image: np.ndarray, requests: int, warmup: int) -> dict:
    timings = {name: [] for name in detectors}
    for call in range(warmup + requests):
        for name, detector in detectors.items():
            started = time.perf_counter()
            detector.score(image)
            if call >= warmup:
                timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def throughput(detector, images: np.ndarray, repeats: int) -> float:
    detector.score(images)
    best = min(_timed(detector.score, images) for _ in range(repeats))
    return len(images) / best


def _timed(function, *arguments) -> float:
    started = time.perf_counter()
    function(*arguments)
    return time.perf_counter() - started


def trained_detector_uri(method_name: str, data_root: Path, image_size: int) -> str:
    options = {"category": "carpet", "data_dir": str(data_root), "image_size": image_size}
    if method_name == "patch":
        options["backbone"] = "none"
    elif method_name == "metric":
        options.update(epochs=2, batch_size=16, weights="none")
    else:
        options.update(epochs=1, batch_size=16, augment_to=64, latent_dim=16)
    return run_training(get_method(method_name).config_class(**options)).detector_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="patch", choices=["patch", "metric", "ssim"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-repeats", type=int, default=3)
    parser.add_argument("--cold-starts", type=int, default=3)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        os.environ["DEFECTLAB_CACHE"] = str(folder / "cache")
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        data_root = generate_dataset(folder / "data", SyntheticSpec(image_size=64, count_scale=0.25))
        detector_uri = trained_detector_uri(arguments.method, data_root, arguments.image_size)
        tensorflow_dir = Path(mlflow.artifacts.download_artifacts(detector_uri, dst_path=str(folder / "tf")))
        onnx_dir = folder / "onnx"
        export = run_export(ExportConfig(model_uri=str(tensorflow_dir), out=str(onnx_dir), category="carpet",
                                         data_dir=str(data_root)))
        print(export.summary())

        detectors = {"tensorflow": load_detector(str(tensorflow_dir)), "onnx": load_detector(str(onnx_dir))}
        decoder = detectors["tensorflow"].decoder
        image_paths = sorted(str(path) for path in (data_root / "carpet").glob("test/*/*.png"))
        images = np.stack([decoder.decode(path) for path in image_paths])
        batch = images[np.arange(arguments.batch_size) % len(images)]

        latency = median_latency(detectors, images[:1], arguments.requests, arguments.warmup)
        images_per_second = {
            name: throughput(detector, batch, arguments.batch_repeats) for name, detector in detectors.items()
        }
        environments = {
            "tensorflow": dict(os.environ),
            "onnx": blocked_environment(folder / "blocker"),
        }
        model_dirs = {"tensorflow": tensorflow_dir, "onnx": onnx_dir}
        cold = {name: [] for name in model_dirs}
        for _ in range(arguments.cold_starts):
            for name, model_dir in model_dirs.items():
                cold[name].append(cold_start_seconds(model_dir, image_paths[0], environments[name]))
        cold_start = {name: statistics.median(values) for name, values in cold.items()}
        sizes = {name: install_size(model_dir / "requirements.txt") for name, model_dir in model_dirs.items()}

    print(
        f"\n{arguments.method} detector, {arguments.image_size} px; {arguments.requests} single-image calls, "
        f"batches of {arguments.batch_size}, {arguments.cold_starts} cold starts each"
    )
    rows = [
        ("single-image latency (ms, median)", {n: 1000 * v for n, v in latency.items()}, "{:.1f}"),
        (f"batch throughput (img/s, batch {arguments.batch_size})", images_per_second, "{:.1f}"),
        ("cold start: process start to first answer (s, median)", cold_start, "{:.2f}"),
        ("install size of the serving environment (MB)", {n: size / 1e6 for n, (size, _) in sizes.items()}, "{:.0f}"),
    ]
    print(f"{'':58s} {'TensorFlow':>12s} {'ONNX':>12s} {'ONNX/TF':>9s}")
    for label, values, number in rows:
        print(f"{label:58s} {number.format(values['tensorflow']):>12s} {number.format(values['onnx']):>12s} "
              f"{values['onnx'] / values['tensorflow']:9.2f}")
    print(f"distributions in each environment: TensorFlow {sizes['tensorflow'][1]}, ONNX {sizes['onnx'][1]}")
    print("goal: cold start and install size ONNX/TF <= 0.33")


if __name__ == "__main__":
    main()
