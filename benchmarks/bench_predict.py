"""Throughput of ``defectlab predict`` on a folder against the detector's own in-process predict.

Fits a detector on the built-in synthetic set in a throwaway SQLite store
(``--method patch``: ``backbone=pixels`` or ``none``, no download; ``--method
ssim``: one short epoch, a detector about 50x faster than the patch one, so
that reading the files is a large share of the work), writes ``--images``
PNG files (the dataset's test images, repeated) into a folder, then times

- ``run_predict``: the folder listed, each image decoded by the bundle's
  `ImageDecoder` in a background thread one batch ahead, scored, and the
  CSV files, summary grid and overlays of flagged images written;
- ``predict_images``: the same detector on the same images already decoded in
  memory, in batches of the same size (the ceiling).

``run_predict`` is timed whole (loading the detector and writing
``summary.png`` included), on ``--images`` files (a text file listing them)
and on twice as many (the folder). The difference of the two is its
streaming rate, the fixed cost left out; the same is done for
``predict_images``. Each is warmed up once, then the two sizes run
alternately ``--rounds`` times each and each one's fastest round counts
(`benchmark_utils.paired_ratio`). Prints images/s, the whole-run and the
streaming ratio (goal >= 0.9) and the fixed cost; asserts nothing.

Run: ``python benchmarks/bench_predict.py --method ssim --source good --images 512 --rounds 5``
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmark_utils import paired_ratio  # noqa: E402
from defectlab import data  # noqa: E402
from defectlab.config import PredictConfig  # noqa: E402
from defectlab.methods.patch import PatchConfig  # noqa: E402
from defectlab.methods.ssim import SSIMConfig  # noqa: E402
from defectlab.runner import run_training  # noqa: E402
from defectlab.serving.detector import load_detector  # noqa: E402
from defectlab.serving.predict import run_predict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--method", choices=("patch", "ssim"), default="patch")
    parser.add_argument("--images", type=int, default=256,
                        help="predict runs on these many files and on twice as many")
    parser.add_argument("--source", choices=("test", "good"), default="test",
                        help="the files repeat the test images (mostly defective: an overlay each) "
                             "or only the good ones (a production line's usual mix)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="pixels", help="patch method only")
    parser.add_argument("--category", default="carpet")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each side")
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    if arguments.method == "patch":
        config = PatchConfig(category=arguments.category, image_size=arguments.image_size,
                             backbone=arguments.backbone, log_system_metrics=False)
        described = f"patch detector (backbone={arguments.backbone}"
    else:
        config = SSIMConfig(category=arguments.category, image_size=arguments.image_size, epochs=1,
                            batch_size=arguments.batch_size, augment_to=64, latent_dim=16,
                            log_system_metrics=False)
        described = "SSIM detector (1 epoch"

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        os.chdir(folder)
        result = run_training(config)
        detector = load_detector(result.detector_uri)
        dataset = data.load_category("synthetic", arguments.category, arguments.image_size)
        chosen = dataset.rows("test")
        if arguments.source == "good":
            chosen = chosen & (dataset.table["label"].to_numpy() == 0)
        source_images = dataset.images[chosen]
        count = 2 * arguments.images
        images = np.concatenate([source_images] * (count // len(source_images) + 1))[:count]
        input_dir = folder / "input"
        input_dir.mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(input_dir / f"{index:05d}.png")
        paths = sorted(str(path) for path in input_dir.iterdir())
        first_half = folder / "first_half.txt"
        first_half.write_text("\n".join(paths[:arguments.images]) + "\n")
        # The ceiling's input: the same files, already decoded as the detector reads them (grayscale for SSIM).
        images = np.stack([detector.decoder.decode(path) for path in paths])

        def in_memory(count: int):
            def run() -> None:
                for start in range(0, count, arguments.batch_size):
                    detector.predict_images(images[start:min(start + arguments.batch_size, count)])
            return run

        flagged = []

        def from_folder(input_spec: str):
            def run() -> None:
                flagged.append(run_predict(PredictConfig(
                    model_uri=result.detector_uri, input=input_spec, out=str(folder / "out"),
                    batch_size=arguments.batch_size, overwrite=True, allow_errors=True, progress_every=10 ** 9,
                )).flagged)
            return run

        for warm_up in (in_memory(count), from_folder(str(input_dir))):
            warm_up()
        folder_all, folder_half, _ = paired_ratio(from_folder(str(input_dir)), from_folder(str(first_half)),
                                                  arguments.rounds)
        memory_all, memory_half, _ = paired_ratio(in_memory(count), in_memory(arguments.images), arguments.rounds)
    half = arguments.images
    streaming_folder, streaming_memory = half / (folder_all - folder_half), half / (memory_all - memory_half)
    print(f"{described}, {arguments.image_size} px, {arguments.source} images, batch {arguments.batch_size}, "
          f"{arguments.rounds} alternating rounds, fastest of each; {flagged[0]} of {count} flagged):")
    print(f"  whole run of {count} images: in-process predict_images {count / memory_all:8.1f} images/s, "
          f"defectlab predict {count / folder_all:8.1f} images/s: ratio {memory_all / folder_all:.2f}")
    print(f"  streaming (the second {half} images' extra time): in-process {streaming_memory:8.1f} images/s, "
          f"defectlab predict {streaming_folder:8.1f} images/s: ratio {streaming_folder / streaming_memory:.2f} "
          f"(goal >= 0.9)")
    print(f"  defectlab predict's fixed cost (loading the detector, summary.png): "
          f"{2 * folder_half - folder_all:.2f} s")


if __name__ == "__main__":
    main()
