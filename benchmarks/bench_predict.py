"""Throughput of ``defectlab predict`` on a folder against the detector's own in-process predict.

Fits a patch detector (``backbone=pixels`` or ``none``: no download) on the
built-in synthetic set in a throwaway SQLite store, writes ``--images`` PNG
files (the dataset's test images, repeated) into a folder, then times

- ``run_predict``: the folder listed, each image decoded by the bundle's
  `ImageDecoder` in a background thread one batch ahead, scored, and the
  CSV files, summary grid and overlays of flagged images written;
- ``predict_images``: the same detector on the same images already decoded in
  memory, in batches of the same size (the ceiling).

Both are warmed up once first. Prints images/s and the ratio (goal >= 0.9);
asserts nothing.

Run: ``python benchmarks/bench_predict.py --image-size 64 --images 512 --batch-size 32``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from defectlab import data  # noqa: E402
from defectlab.config import PredictConfig  # noqa: E402
from defectlab.methods.patch import PatchConfig  # noqa: E402
from defectlab.runner import run_training  # noqa: E402
from defectlab.serving.detector import load_detector  # noqa: E402
from defectlab.serving.predict import run_predict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="pixels")
    parser.add_argument("--category", default="carpet")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        os.chdir(folder)
        result = run_training(PatchConfig(category=arguments.category, image_size=arguments.image_size,
                                          backbone=arguments.backbone, log_system_metrics=False))
        detector = load_detector(result.detector_uri)
        dataset = data.load_category("synthetic", arguments.category, arguments.image_size)
        test_images = dataset.images[dataset.rows("test")]
        images = np.concatenate([test_images] * (arguments.images // len(test_images) + 1))[:arguments.images]
        input_dir = folder / "input"
        input_dir.mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(input_dir / f"{index:05d}.png")

        def in_memory() -> None:
            for start in range(0, len(images), arguments.batch_size):
                detector.predict_images(images[start:start + arguments.batch_size])

        def from_folder() -> None:
            run_predict(PredictConfig(model_uri=result.detector_uri, input=str(input_dir), out=str(folder / "out"),
                                      batch_size=arguments.batch_size, overwrite=True, allow_errors=True,
                                      progress_every=10 ** 9))

        timings = {}
        for name, function in (("in-process predict_images", in_memory), ("defectlab predict (folder)", from_folder)):
            function()  # warm-up
            start = time.perf_counter()
            function()
            timings[name] = len(images) / (time.perf_counter() - start)
    print(f"patch detector (backbone={arguments.backbone}, {arguments.image_size} px, {arguments.images} images, "
          f"batch {arguments.batch_size}):")
    for name, images_per_second in timings.items():
        print(f"  {name:30s} {images_per_second:8.1f} images/s")
    ratio = timings["defectlab predict (folder)"] / timings["in-process predict_images"]
    print(f"  ratio predict / in-process: {ratio:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
