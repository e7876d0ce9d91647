"""The L2-softmax classifier (MobileNetV2 + L2-normalised, scaled softmax head).

Only Keras's own layers are used, so a saved model loads in any process
without custom objects.
"""

from __future__ import annotations

import keras

EMBEDDING_LAYER = "embedding"


def build_l2_softmax_classifier(
    num_classes: int,
    image_size: int,
    backbone_alpha: float = 0.5,
    weights_path: str | None = None,
    softmax_scale: float = 16.0,
) -> keras.Model:
    """MobileNetV2 with an L2-softmax head (Ranjan et al. 2017).

    Input: ``uint8``-range RGB images ``(image_size, image_size, 3)``.
    Pipeline: scale to [-1, 1] (MobileNetV2's preprocessing), MobileNetV2
    without top, global average pooling (the layer named ``embedding``),
    L2 normalisation, multiplication by ``softmax_scale``, dense softmax.
    """
    if num_classes < 2:
        raise ValueError(f"a softmax classifier needs at least 2 classes, got {num_classes}")
    # Input and MobileNetV2 preprocessing
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    scaled_inputs = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inputs)

    # Backbone: its pooled features are the embedding that LOF scores
    backbone = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3),
        alpha=backbone_alpha,
        include_top=False,
        weights=None,
        pooling=None,
    )
    if weights_path is not None:
        backbone.load_weights(weights_path)
    features = backbone(scaled_inputs)
    embedding = keras.layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(features)

    # L2-softmax head
    normalized = keras.layers.UnitNormalization(name="l2_normalize")(embedding)
    scaled = keras.layers.Rescaling(softmax_scale, name="softmax_scale")(normalized)
    class_probabilities = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="class_probabilities"
    )(scaled)
    return keras.Model(inputs, class_probabilities, name="l2_softmax_mobilenet_v2")


def embedding_model(classifier: keras.Model) -> keras.Model:
    """The classifier cut at its pooled features (layer ``embedding``)."""
    return keras.Model(
        classifier.inputs, classifier.get_layer(EMBEDDING_LAYER).output, name="embedding_model"
    )
