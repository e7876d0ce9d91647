"""The logged Keras model's signature, read from the network without running it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from mlflow.models import infer_signature

from defectlab.tracking.artifacts import keras_model_signature


def one_output_model() -> keras.Model:
    images = keras.Input((16, 16, 1))
    return keras.Model(images, keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid")(images))


def two_output_model() -> keras.Model:
    features = keras.Input((8,))
    return keras.Model(features, [keras.layers.Dense(3)(features), keras.layers.Dense(2)(features)])


@pytest.mark.parametrize("build", [one_output_model, two_output_model])
def test_the_signature_is_what_a_prediction_shows_without_predicting(build, monkeypatch):
    model = build()
    example = np.zeros((2, *model.input_shape[1:]), dtype=np.float32)
    outputs = model.predict_on_batch(example)
    if isinstance(outputs, (list, tuple)):
        outputs = {f"output_{index}": np.asarray(output) for index, output in enumerate(outputs)}
    from_a_prediction = infer_signature(example, outputs)

    def no_prediction(*arguments, **options):
        raise AssertionError("the signature ran the model")

    monkeypatch.setattr(model, "predict_on_batch", no_prediction)
    monkeypatch.setattr(model, "predict", no_prediction)
    signature = keras_model_signature(model)
    assert signature == from_a_prediction
    assert signature.inputs.inputs[0].shape[0] == -1  # any batch size
