"""Network outputs that depend on the image alone, never on its batch.

CPU kernels (oneDNN under TensorFlow, MLAS under onnxruntime) pick their code
path by the shape of the batch, and on x86 the last row of a batch often goes
through a different one. The same image scored alone, among seven others, or
last in a batch got features that differed by about 1e-6 (relative), which a
LocalOutlierFactor and the z-scores of an ensemble amplify to about 1e-3 in
its score: ``predict``, serving and evaluation then disagreed on one image.

So every call of a detector's network has one shape, `FIXED_BATCH` rows, and
its last row is always padding. An image's output then depends on that image
only, whatever else is scored with it and wherever it sits. A single image
costs `FIXED_BATCH` rows of compute; a large set costs 1/`FIXED_BATCH` more.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

FIXED_BATCH = 8
IMAGES_PER_BATCH = FIXED_BATCH - 1  # the last row is padding


def whole_batches(images_per_chunk: int) -> int:
    """``images_per_chunk`` rounded up to a multiple of `IMAGES_PER_BATCH`.

    A caller that works through images in chunks (to bound memory) fills every
    network call then, instead of padding the last call of each chunk.
    """
    return max(1, -(-int(images_per_chunk) // IMAGES_PER_BATCH)) * IMAGES_PER_BATCH


def fixed_shape_batches(images: np.ndarray, dtype=None) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(batch, count)`` over ``images`` in order: ``FIXED_BATCH`` rows, the first ``count`` real.

    The rows after the images are zeros, and there is always at least one.
    """
    images = np.asarray(images)
    dtype = images.dtype if dtype is None else dtype
    for start in range(0, len(images), IMAGES_PER_BATCH):
        chunk = images[start:start + IMAGES_PER_BATCH]
        batch = np.zeros((FIXED_BATCH, *images.shape[1:]), dtype=dtype)
        batch[:len(chunk)] = chunk
        yield batch, len(chunk)


def predict_fixed_shape(network, images: np.ndarray, dtype=np.float32):
    """``network.predict_on_batch`` over ``images`` in `fixed_shape_batches`, padding dropped.

    Parameters
    ----------
    network : keras.Model or OnnxNetwork
        Anything with ``predict_on_batch``, one input, one or several outputs.
    images : ndarray of shape (n, ...)
        ``n`` may be 0 (``network.output_shape`` then gives the empty outputs' shape).
    dtype : numpy dtype, default float32
        What the network is fed.

    Returns
    -------
    ndarray, or a list of ndarrays (one per output) for a network with several outputs.
    """
    images = np.asarray(images)
    outputs = []
    for batch, count in fixed_shape_batches(images, dtype):
        batch_outputs = network.predict_on_batch(batch)
        if isinstance(batch_outputs, (list, tuple)):
            outputs.append([np.asarray(output)[:count] for output in batch_outputs])
        else:
            outputs.append(np.asarray(batch_outputs)[:count])
    if not outputs:
        shapes = network.output_shape
        if isinstance(shapes, list):
            return [np.zeros((0, *shape[1:]), dtype=np.float32) for shape in shapes]
        return np.zeros((0, *shapes[1:]), dtype=np.float32)
    if isinstance(outputs[0], list):
        return [np.concatenate(parts) for parts in zip(*outputs)]
    return np.concatenate(outputs)
