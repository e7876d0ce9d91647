"""Costs of L2-softmax metric learning on one category, as ratios measured in one run.

1. Training images/s through the real pipeline (`metric_learning.training_dataset`:
   tf.data over the cached uint8 arrays, shuffle, batch, cast, prefetch) against
   the same compiled model fitted on float tensors already in memory (the
   ceiling). Goal: ratio >= 0.9. After one untimed epoch each (graph
   tracing), the two fit one epoch each per round, alternately.
2. Detector images/s (the ``detector`` pyfunc from PNG bytes: decode, resize,
   embed, LOF) against the bare Keras embedding network on decoded arrays.
   Goal: ratio >= 0.8. The two run alternately, ``--rounds`` passes each.
   Both ratios compare each side's fastest round (`benchmark_utils.paired_ratio`).
3. MLflow logging time as a share of a whole `run_training` at the CPU demo
   settings: every MLflow call the run makes is timed. Goal: <= 10%.

Run: ``python benchmarks/bench_metric.py`` (defaults are the demo's CPU settings:
96 px, batch 32; ``--quick`` for a smaller check). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark_utils import paired_ratio  # noqa: E402
from defectlab import data
from defectlab.methods.metric import training as metric_learning  # noqa: E402
from defectlab.methods.metric import MetricConfig  # noqa: E402
from defectlab.data import ImageDecoder  # noqa: E402
from defectlab.methods import get_method  # noqa: E402
from defectlab.serving.bundle import write_bundle  # noqa: E402
from defectlab.serving.detector import IMAGE_COLUMN, DefectDetector, encode_png  # noqa: E402
from defectlab.runner import run_training  # noqa: E402
from defectlab.methods.metric.network import build_l2_softmax_classifier, embedding_model  # noqa: E402


def compiled_classifier(config: MetricConfig, num_classes: int) -> keras.Model:
    keras.utils.set_random_seed(config.seed)
    classifier = build_l2_softmax_classifier(
        num_classes, config.image_size, config.backbone_alpha, None, config.softmax_scale
    )
    classifier.compile(
        optimizer=metric_learning.make_optimizer(config.optimizer, config.learning_rate),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"],
    )
    return classifier


def training_throughput(config, target_images, references, rounds: int):
    """(pipeline images/s, in-memory images/s, the pipeline's model): one epoch of each per round, alternately."""
    images = np.concatenate([target_images, references.images])
    labels = np.concatenate([np.zeros(len(target_images), np.int32), references.labels])
    num_classes = 1 + len(references.class_names)

    pipeline_model = compiled_classifier(config, num_classes)
    pipeline_batches = metric_learning.training_dataset(images, labels, config.batch_size, config.seed)
    ceiling_model = compiled_classifier(config, num_classes)
    float_images = images.astype(np.float32)

    def pipeline_epoch():
        pipeline_model.fit(pipeline_batches, epochs=1, verbose=0)

    def ceiling_epoch():
        ceiling_model.fit(float_images, labels, batch_size=config.batch_size, epochs=1, verbose=0, shuffle=True)

    pipeline_epoch(), ceiling_epoch()  # warm-up: traces each train step
    pipeline_seconds, ceiling_seconds, _ = paired_ratio(pipeline_epoch, ceiling_epoch, rounds)
    return len(images) / pipeline_seconds, len(images) / ceiling_seconds, pipeline_model


def inference_throughput(config, classifier, dataset, rounds: int):
    embedder = embedding_model(classifier)
    scorer = metric_learning.EmbeddingLOFDetector([embedder], config.lof_neighbors).fit(dataset.images_of("train"))
    with tempfile.TemporaryDirectory() as folder:
        bundle = write_bundle(Path(folder) / "bundle", scorer, get_method("metric").tag,
                              ImageDecoder(config.image_size, grayscale=False), 1.0)
        detector = DefectDetector().load_bundle(bundle)
        test_images = dataset.images[dataset.table["split"].isin(["val", "test"]).to_numpy()]
        request = pd.DataFrame({IMAGE_COLUMN: [encode_png(image) for image in test_images]})
        detector.predict(None, request.head(4))  # warm-up: tracing
        embedder.predict(test_images[:4].astype(np.float32), verbose=0)
        detector_seconds, bare_seconds, _ = paired_ratio(
            lambda: detector.predict(None, request),
            lambda: embedder.predict(test_images.astype(np.float32), batch_size=64, verbose=0),
            rounds,
        )
    return len(test_images) / detector_seconds, len(test_images) / bare_seconds


def logging_share(config: MetricConfig, tracking_dir: Path) -> tuple[float, float]:
    """(seconds in MLflow calls, seconds of the whole run) of one run_training.

    Times MLflow's own functions and defectlab's tracking functions (which
    also build the logged figures and models); a call inside another timed
    call is counted once, in the outer one.
    """
    from defectlab import tracking

    spent = {"seconds": 0.0, "depth": 0}
    by_call: dict[str, float] = {}
    targets = [
        (mlflow, name) for name in (
            "start_run", "end_run", "log_params", "log_metrics", "set_tags", "set_tag",
            "log_artifact", "log_figure", "register_model",
        )
    ] + [
        (tracking, name) for name in (
            "log_evaluation", "log_keras_model", "log_detector", "register_model", "check_artifact_store",
        ) if hasattr(tracking, name)
    ]
    originals = []
    for owner, name in targets:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, __original=original, __label=f"{owner.__name__}.{name}", **kwargs):
            spent["depth"] += 1
            start = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                spent["depth"] -= 1
                if spent["depth"] == 0:
                    elapsed = time.perf_counter() - start
                    spent["seconds"] += elapsed
                    by_call[__label] = by_call.get(__label, 0.0) + elapsed

        originals.append((owner, name, original))
        setattr(owner, name, timed)
    mlflow.set_tracking_uri(f"sqlite:///{tracking_dir / 'mlflow.db'}")
    # A user's store exists after the first run: create it (schema migrations) before timing.
    mlflow.search_experiments()
    previous = os.getcwd()
    os.chdir(tracking_dir)
    try:
        start = time.perf_counter()
        run_training(config)
        total = time.perf_counter() - start
    finally:
        os.chdir(previous)
        for owner, name, original in originals:
            setattr(owner, name, original)
    for label, seconds in sorted(by_call.items(), key=lambda item: -item[1]):
        print(f"  {label}: {seconds:.2f} s")
    return spent["seconds"], total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="carpet")
    parser.add_argument("--data-dir", default="synthetic")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs / passes of each side")
    parser.add_argument("--quick", action="store_true", help="64 px, 3 epochs (a smoke run of the script)")
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    if arguments.quick:
        arguments.image_size, arguments.epochs = 64, 3
    config = MetricConfig(
        category=arguments.category, data_dir=arguments.data_dir, image_size=arguments.image_size,
        epochs=arguments.epochs, batch_size=arguments.batch_size, weights="none",
    )
    dataset = data.load_category(config.data_dir, config.category, config.image_size, seed=config.seed)
    references = metric_learning.load_reference_set(dataset.root, config.category, config.image_size)
    target_images = dataset.images_of("train")
    print(f"category {config.category}: {len(target_images)} target + {len(references.images)} reference images, "
          f"{config.image_size} px, batch {config.batch_size}, {config.epochs} epochs")

    pipeline, ceiling, classifier = training_throughput(config, target_images, references, arguments.rounds)
    print(f"training: pipeline {pipeline:.1f} img/s, in-memory tensors {ceiling:.1f} img/s, "
          f"ratio {pipeline / ceiling:.2f} (goal >= 0.9)")

    detector_rate, bare_rate = inference_throughput(config, classifier, dataset, arguments.rounds)
    print(f"inference: detector from PNG bytes {detector_rate:.1f} img/s, bare Keras {bare_rate:.1f} img/s, "
          f"ratio {detector_rate / bare_rate:.2f} (goal >= 0.8)")

    with tempfile.TemporaryDirectory() as folder:
        logging_seconds, total_seconds = logging_share(config, Path(folder))
    print(f"run_training at {config.image_size} px, {config.epochs} epochs: {total_seconds:.1f} s, "
          f"MLflow calls {logging_seconds:.1f} s = {100 * logging_seconds / total_seconds:.1f}% (goal <= 10%)")


if __name__ == "__main__":
    main()
