"""A ``tf.data`` pipeline of pseudo-defects made on the fly from good images.

`pseudo_defect_dataset` wraps `PseudoDefectGenerator.batch` in
``tf.numpy_function`` over (epoch, batch) index pairs, so nothing is written
to disk and every batch is a pure function of ``(seed, epoch, batch index)``:
iterating the dataset twice gives identical batches, and epoch *k* always
gives the same defects whichever epoch the iteration started from. This is
the only file of the ``augment`` package that imports TensorFlow.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from defectlab.augment.pseudo_defects import (
    DEFAULT_KINDS,
    PseudoDefectError,
    PseudoDefectGenerator,
    derive_seed,
)

# "Run until the caller stops": tf.data.Dataset.range needs a finite end.
_ENDLESS_EPOCHS = np.iinfo(np.int64).max // 2


def _positive_integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PseudoDefectError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _epoch_image_order(image_count: int, count_per_epoch: int, seed: int, epoch: int) -> np.ndarray:
    """Which good image each sample of an epoch starts from.

    Consecutive random permutations, so every good image is used equally
    often (to within one) when ``count_per_epoch`` exceeds their number.
    """
    rng = np.random.default_rng([seed, epoch])
    permutation_count = math.ceil(count_per_epoch / image_count)
    order = np.concatenate([rng.permutation(image_count) for _ in range(permutation_count)])
    return order[:count_per_epoch]


def pseudo_defect_dataset(
    good_images: np.ndarray,
    count_per_epoch: int,
    seed: int,
    sources: np.ndarray | None = None,
    batch_size: int = 32,
    *,
    epochs: int | None = 1,
    first_epoch: int = 0,
    kinds: Sequence[str] = DEFAULT_KINDS,
    min_image_size: int = 32,
) -> tf.data.Dataset:
    """A dataset of ``(defective images, masks)`` batches synthesised from good images.

    Parameters
    ----------
    good_images : numpy.ndarray
        uint8 (count, height, width, channels), channels 1 or 3; kept in
        memory and never modified.
    count_per_epoch : int
        Defective samples per epoch; good images are drawn in shuffled
        order, each about equally often.
    seed : int
        Non-negative seed; together with the epoch number it fixes every
        sample.
    sources : numpy.ndarray or None
        uint8 (source count, height, width, channels) textures for the
        ``perlin_blend`` kind, or None to use rearranged copies of each
        image itself.
    batch_size : int
        Samples per batch; an epoch's last batch is smaller when
        ``batch_size`` does not divide ``count_per_epoch`` (batches never
        straddle epochs).
    epochs : int or None
        Epochs the dataset runs through; None runs endlessly (give Keras
        ``steps_per_epoch = ceil(count_per_epoch / batch_size)`` then, so that
        Keras epochs line up with these).
    first_epoch : int
        Number of the first epoch, to resume a run: ``first_epoch=k`` yields
        exactly what the *k*-th epoch of a run from 0 yielded.
    kinds : sequence of str
        Defect kinds to choose from (see
        ``defectlab.augment.pseudo_defects.DEFECT_KINDS``).
    min_image_size : int
        Smallest accepted height and width.

    Returns
    -------
    tf.data.Dataset
        Elements ``(images, masks)``: uint8 ``(batch, height, width,
        channels)`` and bool ``(batch, height, width)``, prefetched.

    Raises
    ------
    PseudoDefectError
        Invalid images, sources, kinds, seed or counts; raised here, when
        the dataset is built, not later inside the pipeline.
    """
    generator = PseudoDefectGenerator(kinds=kinds, seed=seed, min_image_size=min_image_size)
    generator.check_images(good_images, sources)
    count_per_epoch = _positive_integer(count_per_epoch, "count_per_epoch")
    batch_size = _positive_integer(batch_size, "batch_size")
    if epochs is not None:
        epochs = _positive_integer(epochs, "epochs")
    if isinstance(first_epoch, bool) or not isinstance(first_epoch, (int, np.integer)) or first_epoch < 0:
        raise PseudoDefectError(f"first_epoch must be a non-negative integer, got {first_epoch!r}")
    first_epoch = int(first_epoch)
    height, width, channels = good_images.shape[1:]
    batches_per_epoch = math.ceil(count_per_epoch / batch_size)
    image_count = len(good_images)
    seed = generator.seed

    def make_batch(epoch, batch_index):
        epoch, batch_index = int(epoch), int(batch_index)
        order = _epoch_image_order(image_count, count_per_epoch, seed, epoch)
        picked = order[batch_index * batch_size : (batch_index + 1) * batch_size]
        images, masks, _kinds = generator.batch(
            good_images[picked], seed=derive_seed(seed, epoch, batch_index), sources=sources
        )
        return images, masks

    last_epoch = _ENDLESS_EPOCHS if epochs is None else first_epoch + epochs
    jobs = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(
        lambda epoch: tf.data.Dataset.range(batches_per_epoch).map(
            lambda batch_index: (epoch, batch_index)
        )
    )

    def synthesise(epoch, batch_index):
        # stateful=False: the function is a pure function of its inputs.
        images, masks = tf.numpy_function(
            make_batch, [epoch, batch_index], (tf.uint8, tf.bool), stateful=False
        )
        images.set_shape((None, height, width, channels))
        masks.set_shape((None, height, width))
        return images, masks

    # deterministic=True keeps batch order fixed even when batches are made
    # in parallel threads (NumPy releases the GIL for much of the work).
    dataset = jobs.map(synthesise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
