"""Throughput of the SSIM autoencoder: the augmentation pipeline and the detector against their ceilings.

Training: images/s through the real on-the-fly augmentation pipeline
(`defectlab.methods.ssim.training.augmented_dataset`) against the same network fitted on
``augment_to`` float images already in memory, batched and cached by tf.data
(no augmentation: the ceiling the pipeline can approach). Inference: images/s of the ``detector`` (reconstruction, full-size
SSIM map, region score), from decoded images and from image files, against
the bare Keras network's ``predict``, and against the bare network called
batch by batch through one compiled function (as the detector calls its own
network: the floor without ``predict``'s per-call overhead).

Run: ``python benchmarks/bench_ssim.py --image-size 64 --augment-to 1024 --rounds 15``.
Each side is warmed up (graph compiled) once, then the two sides of each
comparison run alternately, one epoch or one pass each per round, and the
ratio is that of each side's fastest round (`benchmark_utils.paired_ratio`).
Prints the figures and the ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmark_utils import paired_ratio  # noqa: E402
from defectlab import data
from defectlab.methods.ssim import training as autoencoder  # noqa: E402
from defectlab.methods.ssim import SSIMConfig  # noqa: E402
from defectlab.data import ImageDecoder  # noqa: E402
from defectlab.methods import get_method  # noqa: E402
from defectlab.serving.bundle import write_bundle  # noqa: E402
from defectlab.serving.detector import IMAGE_COLUMN, bundle_to_local_detector  # noqa: E402
from defectlab.methods.keras_training import make_optimizer  # noqa: E402
from defectlab.methods.ssim.network import build_ssim_autoencoder  # noqa: E402
from defectlab.data.synthetic import SyntheticSpec, generate_dataset  # noqa: E402


def compiled_autoencoder(config: SSIMConfig, channels: int) -> keras.Model:
    keras.utils.set_random_seed(config.seed)
    network = build_ssim_autoencoder(config.image_size, channels, config.latent_dim)
    network.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate),
        loss=autoencoder.training_loss(config.loss, config.ssim_window),
    )
    return network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--augment-to", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15, help="timed epochs / passes of each side")
    parser.add_argument("--latent-dim", type=int, default=100)
    parser.add_argument("--category", default="carpet")
    parser.add_argument("--count-scale", type=float, default=0.25)
    parser.add_argument("--inference-images", type=int, default=512)
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")

    config = SSIMConfig(
        category=arguments.category, image_size=arguments.image_size, epochs=1,
        batch_size=arguments.batch_size, augment_to=arguments.augment_to,
        latent_dim=arguments.latent_dim,
    )
    with tempfile.TemporaryDirectory() as folder:
        root = generate_dataset(
            Path(folder) / "data",
            SyntheticSpec(image_size=config.image_size, count_scale=arguments.count_scale),
            [config.category],
        )
        dataset = data.load_category(
            root, config.category, config.image_size, grayscale=config.grayscale,
            cache_dir=Path(folder) / "cache",
        )
        good_images = dataset.images_of("train")
        channels = good_images.shape[-1]
        print(f"{len(good_images)} good {config.category} images at {config.image_size} px, "
              f"augment_to={config.augment_to}, batch_size={config.batch_size}, "
              f"{arguments.rounds} rounds")

        # Training: augmentation pipeline vs in-memory tensors, one epoch per round each
        pipeline_network = compiled_autoencoder(config, channels)
        pipeline_batches = autoencoder.augmented_dataset(
            good_images, config.category, config.augment_to, config.batch_size, config.seed
        )
        # The ceiling: augment_to float images already in memory, batched by tf.data, nothing computed.
        in_memory_images = np.resize(good_images, (config.augment_to, *good_images.shape[1:]))
        in_memory_images = in_memory_images.astype(np.float32) / 255.0
        in_memory_batches = (
            tf.data.Dataset.from_tensor_slices(in_memory_images).batch(config.batch_size)
            .map(lambda images: (images, images)).cache().prefetch(tf.data.AUTOTUNE)
        )
        in_memory_network = compiled_autoencoder(config, channels)

        def pipeline_epoch():
            pipeline_network.fit(pipeline_batches, epochs=1, verbose=0)

        def in_memory_epoch():
            in_memory_network.fit(in_memory_batches, epochs=1, verbose=0)

        pipeline_epoch(), in_memory_epoch()  # warm-up: compiles each train step
        pipeline_seconds, in_memory_seconds, training_ratio = paired_ratio(
            pipeline_epoch, in_memory_epoch, arguments.rounds
        )
        print(f"training  augmentation pipeline: {config.augment_to / pipeline_seconds:8.1f} images/s")
        print(f"training  in-memory tensors:     {config.augment_to / in_memory_seconds:8.1f} images/s")
        print(f"training  ratio pipeline / in-memory: {training_ratio:.2f}")

        # Inference: detector vs bare Keras network
        # Every scored image, repeated up to --inference-images so the timing is not a handful of calls.
        scored = dataset.rows("test") | dataset.rows("val") | dataset.rows("threshold")
        repeats = -(-arguments.inference_images // int(scored.sum()))
        test_images = np.concatenate([dataset.images[scored]] * repeats)[:arguments.inference_images]
        test_paths = (dataset.table.loc[scored, "path"].tolist() * repeats)[:arguments.inference_images]
        trained = keras.Model(pipeline_network.inputs, pipeline_network.outputs)
        scorer = autoencoder.SSIMDetectorScorer(
            trained, config.ssim_window, autoencoder.min_defect_area_for(config.image_size)
        )
        detector = bundle_to_local_detector(
            write_bundle(Path(folder) / "bundle", scorer, get_method("ssim").tag,
                         ImageDecoder(config.image_size, config.grayscale), threshold=0.5)
        )
        unit_images = test_images.astype(np.float32) / 255.0
        count = len(test_images)

        def bare():
            trained.predict(unit_images, batch_size=scorer.batch_size, verbose=0)

        # The network alone, called batch by batch through one compiled function
        # as the detector calls its own: the floor without Keras predict's per-call overhead.
        forward = tf.function(
            lambda batch: trained(batch, training=False),
            input_signature=[tf.TensorSpec((None, *unit_images.shape[1:]), tf.float32)],
        )

        def bare_compiled():
            for start in range(0, count, scorer.batch_size):
                forward(unit_images[start:start + scorer.batch_size]).numpy()

        def decoded():
            detector.predict_images(test_images)

        def files():
            detector.predict(None, pd.DataFrame({IMAGE_COLUMN: test_paths}))

        bare(), bare_compiled(), decoded(), files()  # warm-up
        detector_seconds, bare_seconds, detector_ratio = paired_ratio(decoded, bare, arguments.rounds)
        _, compiled_seconds, compiled_ratio = paired_ratio(decoded, bare_compiled, arguments.rounds)
        files_seconds, _, files_ratio = paired_ratio(files, bare, arguments.rounds)
        print(f"inference bare Keras predict:              {count / bare_seconds:8.1f} images/s ({count} images)")
        print(f"inference bare network, compiled per batch:{count / compiled_seconds:8.1f} images/s")
        print(f"inference detector (decoded images):       {count / detector_seconds:8.1f} images/s")
        print(f"inference detector (image files):          {count / files_seconds:8.1f} images/s")
        print(f"inference ratio detector / bare Keras:     {detector_ratio:.2f}")
        print(f"inference ratio detector / bare compiled:  {compiled_ratio:.2f}")
        print(f"inference ratio detector files / bare:     {files_ratio:.2f}")


if __name__ == "__main__":
    main()
