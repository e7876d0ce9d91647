"""The L2-softmax classifier (a backbone + L2-normalised, scaled softmax head).

Only Keras's own layers are used, so a saved model loads in any process
without custom objects.
"""

from __future__ import annotations

import keras

from defectlab.methods.backbones import INPUT_SCALING, MOBILENET_V2, build_backbone

EMBEDDING_LAYER = "embedding"


def build_l2_softmax_classifier(
    num_classes: int,
    image_size: int,
    backbone_alpha: float = 0.5,
    weights_path: str | None = None,
    softmax_scale: float = 16.0,
    backbone_arch: str = MOBILENET_V2,
) -> keras.Model:
    """A backbone (MobileNetV2 by default) with an L2-softmax head (Ranjan et al. 2017).

    Input: ``uint8``-range RGB images ``(image_size, image_size, 3)``.
    Pipeline: the architecture's input scaling (MobileNetV2: [-1, 1]), the
    backbone without top, global average pooling (the layer named ``embedding``),
    L2 normalisation, multiplication by ``softmax_scale``, dense softmax.
    """
    if num_classes < 2:
        raise ValueError(f"a softmax classifier needs at least 2 classes, got {num_classes}")
    # Input and the backbone's preprocessing
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    scale, offset = INPUT_SCALING[backbone_arch]
    scaled_inputs = keras.layers.Rescaling(scale, offset=offset, name="to_unit_range")(inputs)

    # Backbone: its pooled features are the embedding that LOF scores
    backbone = build_backbone(backbone_arch, image_size, backbone_alpha, weights_path)
    features = backbone(scaled_inputs)
    embedding = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(features)

    # L2-softmax head
    normalized = keras.layers.UnitNormalization(name="l2_normalize")(embedding)
    scaled = keras.layers.Rescaling(softmax_scale, name="softmax_scale")(normalized)
    class_probabilities = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="class_probabilities"
    )(scaled)
    return keras.Model(inputs, class_probabilities, name=f"l2_softmax_{backbone_arch}")


def embedding_model(classifier: keras.Model) -> keras.Model:
    """The classifier cut at its pooled features (layer ``embedding``)."""
    return keras.Model(
        classifier.inputs, classifier.get_layer(EMBEDDING_LAYER).output, name="embedding_model"
    )
