"""Patch features for PatchCore from a Keras backbone (MobileNetV2).

PatchCore (Roth et al., CVPR 2022) describes every image position by the
activations of two intermediate layers of a network: mid-level layers are
local enough to place a defect and abstract enough not to match on raw
colour. This module

* cuts a backbone down to a Keras model that maps uint8-range RGB images to
  the named layers' activations (`patch_feature_extractor`), built from Keras's
  own layers only, so a saved ``.keras`` file loads without this package;
* turns those activations into one feature vector per patch
  (`aggregate_patch_features`): each layer averaged over a small neighbourhood
  (PatchCore's "local neighbourhood aggregation", which widens each vector's
  receptive field without going deeper), the deeper layers resized to the
  shallowest layer's grid, everything concatenated on channels, and optionally
  reduced to fewer channels by adaptive average pooling, as PatchCore does.

The arithmetic after the network is NumPy, so the features do not depend on
the Keras backend, and Keras is imported only to build an extractor: an
exported detector runs the same code on its ONNX network without it.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import numpy as np

from defectlab.methods.batches import predict_fixed_shape, whole_batches
from defectlab.methods.patch.maps import resize_bilinear

if TYPE_CHECKING:
    import keras

DEFAULT_PATCH_SIZE = 3
# MobileNetV2's preprocessing: uint8 [0, 255] to [-1, 1].
PIXEL_SCALE = 1.0 / 127.5
PIXEL_OFFSET = -1.0
# backbone=pixels: every 6 x 6 window of raw RGB values in [0, 1], at stride 2.
# Chosen by measurement (64 px, coreset 0.1, seed 0, image AUROC on the real-photo
# check's brick / grass / gravel, benchmarks/real_photos.py): 6x6/2 0.86 / 0.64 / 0.73,
# 5x5/2 0.83 / 0.65 / 0.67, 7x7/2 0.86 / 0.59 / 0.68, 4x4/2 0.77 / 0.62 / 0.70; averaging
# 3x3 neighbourhoods of 4x4 windows fell to 0.52 / 0.42 / 0.57 (it blurs the texture
# the windows hold), and stride 1 cost 10x the time. Random MobileNetV2 features: 0.65 / 0.30 / 0.65.
PIXEL_WINDOW = 6
PIXEL_STRIDE = 2
PIXEL_LAYER = "pixels"


def feature_layer_names(backbone: keras.Model) -> list[str]:
    """Names of the layers of ``backbone`` whose output is a 4-D ``(batch, h, w, c)`` map.

    These are the layers `patch_feature_extractor` accepts, in network order
    (shallow first).
    """
    names = []
    for layer in backbone.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        if len(shape) == 4:
            names.append(layer.name)
    return names


def patch_feature_extractor(backbone: keras.Model, layer_names: tuple[str, ...],
                            input_scaling: tuple[float, float] = (PIXEL_SCALE, PIXEL_OFFSET)) -> keras.Model:
    """A Keras model from uint8-range RGB images to the activations of ``layer_names``.

    Parameters
    ----------
    backbone : keras.Model
        A functional model that takes images scaled to [-1, 1], e.g.
        ``keras.applications.MobileNetV2(input_shape=(s, s, 3), alpha=0.5,
        include_top=False, weights=None or a weights file)``.
    layer_names : tuple of str
        Layers whose outputs become the features, shallowest first (the first
        one's grid is the patch grid of `aggregate_patch_features`).
    input_scaling : (scale, offset), default MobileNetV2's (1/127.5, -1)
        The backbone's preprocessing of uint8-range pixels
        (`defectlab.methods.backbones.INPUT_SCALING`).

    Returns
    -------
    keras.Model
        Input: images ``(n, s, s, 3)`` with values in [0, 255] (uint8 or
        float); a ``Rescaling(1/127.5, offset=-1)`` layer inside maps them to
        the backbone's [-1, 1], so the model is self-contained. Output: one
        ``(n, h_i, w_i, c_i)`` tensor per name, in the order given, each through
        an ``Identity`` layer named after it. Only the backbone layers the
        outputs need are kept (layers past the deepest one are dropped). Every
        layer is a Keras built-in: ``keras.models.load_model`` reads a saved
        copy without defectlab.

    Raises
    ------
    ValueError
        ``layer_names`` empty, repeated, or naming a layer that does not exist
        or has no 4-D output; the message lists the valid names.
    """
    import keras

    layer_names = tuple(layer_names) if not isinstance(layer_names, str) else (layer_names,)
    if not layer_names:
        raise ValueError("layer_names must name at least one backbone layer")
    if len(set(layer_names)) != len(layer_names):
        raise ValueError(f"layer_names must not repeat a layer, got {layer_names}")
    valid_names = feature_layer_names(backbone)
    unknown = [name for name in layer_names if name not in valid_names]
    if unknown:
        raise ValueError(
            f"unknown feature layer(s) {unknown} for backbone {backbone.name!r}; valid names "
            f"(layers with 4-D outputs, shallow first) are: {', '.join(valid_names)}"
        )

    # The backbone up to the deepest named layer, as a functional sub-model;
    # nesting it keeps its own layer names (and weights) intact in a saved file.
    truncated = keras.Model(
        inputs=backbone.inputs,
        outputs=[backbone.get_layer(name).output for name in layer_names],
        name=f"{backbone.name}_features",
    )
    images = keras.Input(shape=tuple(backbone.input_shape[1:]), name="images")
    scale, offset = input_scaling
    scaled = keras.layers.Rescaling(scale, offset=offset, name="to_minus_one_one")(images)
    activations = truncated(scaled)
    if not isinstance(activations, (list, tuple)):
        activations = [activations]
    outputs = [
        keras.layers.Identity(name=name)(activation)
        for name, activation in zip(layer_names, activations)
    ]
    return keras.Model(inputs=images, outputs=outputs, name="patch_feature_extractor")


def pixel_window_extractor(image_size: int, window: int = PIXEL_WINDOW, stride: int = PIXEL_STRIDE) -> "keras.Model":
    """A Keras model: uint8-range RGB images to every ``window x window`` RGB window, at ``stride``.

    Output ``pixels``: ``(n, ceil(s / stride), ceil(s / stride), window * window * 3)``,
    values in [0, 1] (zero-padded at the borders). A convolution with a fixed
    one-hot kernel does the unfolding, so the extractor is built from Keras
    layers only and saves, reloads and exports like a network's.
    """
    import keras

    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    unit_range = keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")(images)
    unfold = keras.layers.Conv2D(
        window * window * 3, window, strides=stride, padding="same", use_bias=False, trainable=False,
        name="pixel_windows",
    )
    windows = unfold(unit_range)
    one_hot = np.eye(window * window * 3, dtype=np.float32).reshape(window, window, 3, window * window * 3)
    unfold.set_weights([one_hot])
    return keras.Model(images, [keras.layers.Identity(name=PIXEL_LAYER)(windows)], name="pixel_window_extractor")


def extract_layer_outputs(extractor: keras.Model, images) -> list[np.ndarray]:
    """Run ``extractor`` over ``images`` ``(n, s, s, 3)``; one float32 array per layer.

    Always a list, also for a one-layer extractor. Batches have one fixed
    shape (`predict_fixed_shape`), so an image's features do not depend on
    the images scored with it.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, height, width, channels), got shape {images.shape}")
    outputs = predict_fixed_shape(extractor, images)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(output, dtype=np.float32) for output in outputs]


def local_average(feature_maps, patch_size: int = DEFAULT_PATCH_SIZE) -> np.ndarray:
    """Mean over each ``patch_size x patch_size`` neighbourhood, stride 1, same size out.

    Parameters
    ----------
    feature_maps : array-like of shape (n, h, w, c)
    patch_size : int, default=3
        Odd neighbourhood width; 1 returns the maps unchanged (as float32).

    Returns
    -------
    numpy.ndarray of float32, shape (n, h, w, c)

    Notes
    -----
    At the borders the mean is over the neighbours that exist (padding is not
    counted), like TensorFlow's ``avg_pool`` with ``'same'`` padding; PatchCore
    zero-pads before pooling, which would pull every border patch toward 0
    and make the image frame look different from its inside.
    """
    feature_maps = np.asarray(feature_maps, dtype=np.float32)
    if feature_maps.ndim != 4:
        raise ValueError(f"feature maps must be (n, height, width, channels), got shape {feature_maps.shape}")
    if (
        isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral)
        or patch_size < 1 or patch_size % 2 == 0
    ):
        raise ValueError(f"patch_size must be a positive odd integer, got {patch_size!r}")
    if patch_size == 1:
        return feature_maps.copy()
    radius = patch_size // 2
    sums = feature_maps.astype(np.float64)
    counts = np.ones(feature_maps.shape[1:3], dtype=np.float64)
    # Box sums along one spatial axis at a time, from cumulative sums with a
    # zero in front: sum(x[i-r : i+r+1]) = cumsum[i+r+1] - cumsum[i-r], the
    # window clipped to the map. The same sums over a map of ones count the
    # neighbours that exist.
    for axis in (1, 2):
        sums = _clipped_window_sums(sums, axis, radius)
        counts = _clipped_window_sums(counts, axis - 1, radius)
    return (sums / counts[None, :, :, None]).astype(np.float32)


def _clipped_window_sums(values: np.ndarray, axis: int, radius: int) -> np.ndarray:
    """Sums over ``[i - radius, i + radius]`` along ``axis``, the window clipped to the array."""
    length = values.shape[axis]
    cumulative = np.cumsum(values, axis=axis)
    zero = np.zeros_like(np.take(cumulative, [0], axis=axis))
    cumulative = np.concatenate([zero, cumulative], axis=axis)
    positions = np.arange(length)
    upper = np.minimum(positions + radius + 1, length)
    lower = np.maximum(positions - radius, 0)
    return np.take(cumulative, upper, axis=axis) - np.take(cumulative, lower, axis=axis)


def adaptive_average_channels(features, feature_dim: int) -> np.ndarray:
    """Reduce the last axis to ``feature_dim`` channels by adaptive average pooling.

    Output channel ``j`` is the mean of input channels
    ``floor(j * c / feature_dim)`` to ``ceil((j + 1) * c / feature_dim) - 1``
    (PyTorch's ``adaptive_avg_pool1d``, PatchCore's reduction): no
    parameters and no seed, neighbouring channels merged. Since the
    channels of `aggregate_patch_features` are concatenated layer by layer,
    a bin never mixes more than its share of each layer.

    Parameters
    ----------
    features : array-like of shape (..., c)
    feature_dim : int
        At most ``c``; equal to ``c`` returns the features unchanged.
    """
    features = np.asarray(features, dtype=np.float32)
    channels = features.shape[-1]
    if (
        isinstance(feature_dim, bool) or not isinstance(feature_dim, numbers.Integral)
        or not 1 <= feature_dim <= channels
    ):
        raise ValueError(
            f"feature_dim must be an integer in [1, {channels}] (the concatenated channels), "
            f"got {feature_dim!r}"
        )
    if feature_dim == channels:
        return features
    bins = np.arange(feature_dim)
    starts = (bins * channels) // feature_dim
    stops = -((-(bins + 1) * channels) // feature_dim)  # ceiling division
    # Mean of each channel range from cumulative sums along the channel axis.
    cumulative = np.concatenate(
        [np.zeros(features.shape[:-1] + (1,), dtype=np.float64), np.cumsum(features, axis=-1, dtype=np.float64)],
        axis=-1,
    )
    means = (cumulative[..., stops] - cumulative[..., starts]) / (stops - starts)
    return means.astype(np.float32)


def aggregate_patch_features(
    layer_outputs: list[np.ndarray], patch_size: int = DEFAULT_PATCH_SIZE, feature_dim: int | None = None
) -> np.ndarray:
    """One feature vector per patch of the first layer's grid, from several layers' activations.

    Parameters
    ----------
    layer_outputs : list of array-like, each (n, h_i, w_i, c_i)
        Activations of the same images, shallowest layer first (the output
        of `extract_layer_outputs`).
    patch_size : int, default=3
        Each layer is first averaged over ``patch_size x patch_size``
        neighbourhoods (`local_average`), PatchCore's 3x3 aggregation.
    feature_dim : int, optional
        Reduce the concatenated channels to this many with
        `adaptive_average_channels`; ``None`` keeps all of them (MobileNetV2
        at alpha 0.5 has only 16-48 channels at its middle layers, so a bank
        of them needs no reduction).

    Returns
    -------
    numpy.ndarray of float32, shape (n, grid_height, grid_width, feature_dim)
        ``(grid_height, grid_width)`` is the first layer's grid; deeper
        layers are resized bilinearly (half-pixel centres, as PatchCore's
        ``interpolate(..., align_corners=False)``) after their local average,
        then all layers are concatenated in order along the channels.
    """
    if not isinstance(layer_outputs, (list, tuple)) or not layer_outputs:
        raise ValueError("layer_outputs must be a non-empty list of (n, h, w, c) arrays")
    maps = [np.asarray(output, dtype=np.float32) for output in layer_outputs]
    for index, feature_map in enumerate(maps):
        if feature_map.ndim != 4:
            raise ValueError(
                f"layer_outputs[{index}] must be (n, height, width, channels), got shape {feature_map.shape}"
            )
    if len({len(feature_map) for feature_map in maps}) != 1:
        raise ValueError(
            f"layer_outputs disagree on the number of images: {[len(feature_map) for feature_map in maps]}"
        )
    grid_height, grid_width = maps[0].shape[1:3]
    aggregated = []
    for feature_map in maps:
        averaged = local_average(feature_map, patch_size)
        if averaged.shape[1:3] != (grid_height, grid_width):
            averaged = resize_bilinear(averaged, grid_height, grid_width)
        aggregated.append(averaged)
    features = np.concatenate(aggregated, axis=-1)
    if feature_dim is not None:
        features = adaptive_average_channels(features, feature_dim)
    return np.ascontiguousarray(features, dtype=np.float32)


def extract_patch_features(
    extractor: keras.Model, images, patch_size: int = DEFAULT_PATCH_SIZE,
    feature_dim: int | None = None, batch_size: int = 32, on_batch=None,
) -> np.ndarray:
    """`extract_layer_outputs` then `aggregate_patch_features`, batch by batch.

    Each batch is aggregated as it comes and written into one preallocated
    array, so memory holds the result plus one batch of raw activations,
    never a list of batches to concatenate. ``on_batch(n)`` is called after
    each batch of ``n`` images (progress). Returns float32
    ``(n, grid_height, grid_width, feature_dim)``.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, height, width, channels), got shape {images.shape}")
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    features = None
    batch_size = whole_batches(batch_size)
    for start in range(0, len(images), batch_size):
        batch = aggregate_patch_features(
            extract_layer_outputs(extractor, images[start : start + batch_size]),
            patch_size=patch_size, feature_dim=feature_dim,
        )
        if features is None:
            features = np.empty((len(images), *batch.shape[1:]), dtype=np.float32)
        features[start : start + len(batch)] = batch
        if on_batch is not None:
            on_batch(len(batch))
    return features
