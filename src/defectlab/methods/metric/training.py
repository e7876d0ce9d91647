"""L2-softmax metric learning: the classes, the training loop, the embeddings.

The target category's train images are class 0; each other category of the
dataset contributes its train/good images as one more class (capped in total
at ``reference_size``), and an optional ``reference_dir`` is one class more.
After training, the pooled features of the network are the embedding a
`defectlab.methods.scorers.LOFScorer` scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from defectlab import data
from defectlab.methods.keras_training import RaiseOnBadLoss, make_optimizer, progress_verbosity
from defectlab.methods.metric.config import MetricConfig
from defectlab.methods.metric.network import build_l2_softmax_classifier
# The detector lives in its own module (no TensorFlow at import: exported detectors reuse it);
# re-exported here, where training code and examples have always found it.
from defectlab.methods.metric.detector import EmbeddingLOFDetector, embed  # noqa: F401


@dataclass(frozen=True)
class ReferenceSet:
    """Reference images, one class per source.

    Attributes
    ----------
    class_names : list of str
        Name of each reference class (a category name, or ``reference_dir``).
    images : numpy.ndarray, uint8, (n, size, size, 3)
    labels : numpy.ndarray, int, (n,)
        Index into ``class_names`` plus one (class 0 is the target).
    """

    class_names: list
    images: np.ndarray
    labels: np.ndarray


def reference_paths(
    root: Path, category: str, reference_size: int, reference_dir: str, seed: int
) -> dict[str, list[str]]:
    """Reference image paths per class: other categories' train/good, then ``reference_dir``.

    ``reference_size`` caps the images taken from the other categories (-1: all);
    the cap is drawn seeded and spread over the categories in proportion to
    their sizes. Classes left without images are dropped.
    """
    pools = data.good_train_paths_of_other_categories(root, category)
    total = sum(len(paths) for paths in pools.values())
    if 0 <= reference_size < total:
        rng = np.random.default_rng(seed)
        flat = [(name, path) for name, paths in pools.items() for path in paths]
        chosen = sorted(rng.choice(len(flat), size=reference_size, replace=False))
        pools = {name: [] for name in pools}
        for index in chosen:
            name, path = flat[index]
            pools[name].append(path)
    if reference_dir:
        pools[f"reference_dir:{Path(reference_dir).name}"] = data.image_paths_in(reference_dir)
    return {name: paths for name, paths in pools.items() if paths}


def load_reference_set(
    root: Path,
    category: str,
    image_size: int,
    reference_size: int = -1,
    reference_dir: str = "",
    seed: int = 0,
    pseudo_defects: int = 0,
    resize: str = "stretch",
) -> ReferenceSet:
    """Load the reference classes (decoded with the target's ``resize``).

    Raises `data.DatasetError` when there are none and no ``pseudo_defects``
    class makes the second softmax class either.
    """
    paths_by_class = reference_paths(root, category, reference_size, reference_dir, seed)
    if not paths_by_class and pseudo_defects == 0:
        raise data.DatasetError(
            f"no reference images for {category!r}: the dataset at {root} has no other category "
            f"with train/good images, reference_size={reference_size} and reference_dir="
            f"{reference_dir!r} adds none, and pseudo_defects=0; a softmax needs at least two "
            "classes (give pseudo_defects > 0 or a reference_dir)"
        )
    if not paths_by_class:
        return ReferenceSet(
            class_names=[], images=np.zeros((0, image_size, image_size, 3), dtype=np.uint8),
            labels=np.zeros(0, dtype=np.int32),
        )
    images, labels = [], []
    for class_index, paths in enumerate(paths_by_class.values(), start=1):
        images.append(data.load_images(paths, image_size, grayscale=False, resize=resize))
        labels.append(np.full(len(paths), class_index, dtype=np.int32))
    return ReferenceSet(
        class_names=list(paths_by_class), images=np.concatenate(images), labels=np.concatenate(labels)
    )


def training_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int
) -> tf.data.Dataset:
    """Shuffled, batched, prefetched tf.data pipeline over in-memory arrays (no decoding per epoch)."""
    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda batch_images, batch_labels: (tf.cast(batch_images, tf.float32), batch_labels),
             num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def training_dataset_with_pseudo_defects(
    images: np.ndarray, labels: np.ndarray, target_images: np.ndarray, pseudo_defects: int,
    pseudo_defect_label: int, batch_size: int, seed: int, sources: np.ndarray | None,
) -> tuple[tf.data.Dataset, int]:
    """The reference/target images mixed with ``pseudo_defects`` fresh synthesised defects per epoch.

    The synthesised images (`defectlab.augment.pseudo_defects`, made on the fly
    from the target's good images, never written) carry ``pseudo_defect_label``;
    real and synthesised samples are drawn in proportion to their counts.
    Returns the endless dataset and the steps that make one epoch.
    """
    from defectlab.augment.pseudo_defects_tf import pseudo_defect_dataset

    real = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .repeat()
    )
    synthesised = (
        pseudo_defect_dataset(
            target_images, pseudo_defects, seed, sources=sources, batch_size=min(batch_size, pseudo_defects),
            epochs=None,
        )
        .unbatch()
        .map(lambda image, mask: (image, tf.constant(pseudo_defect_label, dtype=tf.int32)))
    )
    mixed = tf.data.Dataset.sample_from_datasets(
        [real, synthesised], weights=[float(len(images)), float(pseudo_defects)], seed=seed
    )
    steps_per_epoch = max(1, math.ceil((len(images) + pseudo_defects) / batch_size))
    dataset = (
        mixed.batch(batch_size)
        .map(lambda batch_images, batch_labels: (tf.cast(batch_images, tf.float32), batch_labels),
             num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    return dataset, steps_per_epoch


def pseudo_defect_examples_figure(target_images: np.ndarray, sources: np.ndarray | None, seed: int):
    """``training/pseudo_defects.png``: a grid of the synthesised defects the network trains on."""
    from defectlab.augment.pseudo_defects import PseudoDefectGenerator, example_grid

    count = min(8, len(target_images))
    images, masks, kinds = PseudoDefectGenerator(seed=seed).batch(target_images[:count], seed=seed, sources=sources)
    return example_grid(images, masks, kinds, title="synthesised training defects (pseudo_defects class)")


def train_l2_softmax(
    target_images: np.ndarray,
    references: ReferenceSet,
    config: MetricConfig,
    weights_path: str | None,
    seed: int,
    callbacks: list | None = None,
    verbose: int | None = None,
) -> tuple[keras.Model, keras.callbacks.History]:
    """Train the L2-softmax classifier: target (class 0) against the reference classes.

    With ``config.pseudo_defects`` > 0, synthesised defects of the target's own
    good images are one more class, made afresh each epoch (the reference images
    are the Perlin blends' source textures).

    Returns the trained classifier and Keras's history. Raises
    `NonFiniteLossError` if the loss stops being finite.
    """
    keras.utils.set_random_seed(seed)
    num_classes = 1 + len(references.class_names) + (1 if config.pseudo_defects else 0)
    classifier = build_l2_softmax_classifier(
        num_classes,
        config.image_size,
        backbone_alpha=config.backbone_alpha,
        weights_path=weights_path,
        backbone_arch=config.backbone_arch,
        softmax_scale=config.softmax_scale,
    )
    classifier.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    images = np.concatenate([target_images, references.images])
    labels = np.concatenate([np.zeros(len(target_images), dtype=np.int32), references.labels])
    steps_per_epoch = None
    if config.pseudo_defects:
        dataset, steps_per_epoch = training_dataset_with_pseudo_defects(
            images, labels, target_images, config.pseudo_defects, num_classes - 1,
            config.batch_size, seed, references.images if len(references.images) else None,
        )
    else:
        dataset = training_dataset(images, labels, config.batch_size, seed)
    history = classifier.fit(
        dataset,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn that it ignores this
        callbacks=[RaiseOnBadLoss(), *(callbacks or [])],
        verbose=progress_verbosity() if verbose is None else verbose,
    )
    return classifier, history
