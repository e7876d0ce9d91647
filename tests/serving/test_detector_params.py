"""Maps from the detector pyfunc: the ``return_maps``/``map_size`` params, declared in the signature, and each bad value.

The same through a real ``mlflow models serve`` is in tests/integration/test_predict_serving.py.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from defectlab.data import ImageDecoder
from defectlab.serving.bundle import write_bundle
from defectlab.serving.detector import (
    IMAGE_COLUMN, MAP_COLUMN, MAX_MAP_SIZE, load_detector, resize_map,
)


pytestmark = pytest.mark.training  # the detector fixture fits a patch model on the built-in dataset


@pytest.fixture(scope="module")
def patch_pyfunc(tiny_patch_store):
    """The tiny patch run's logged ``detector`` as MLflow loads it, and the `DefectDetector` inside."""
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tiny_patch_store.uri)
    try:
        pyfunc_model = mlflow.pyfunc.load_model(tiny_patch_store.detector_uri)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return pyfunc_model, pyfunc_model.unwrap_python_model()


@pytest.fixture(scope="module")
def test_paths(tiny_patch_store):
    test_rows = tiny_patch_store.scores[tiny_patch_store.scores["split"] == "test"]
    return test_rows["path"].head(3).tolist()


def test_without_params_the_output_is_score_and_is_anomaly_only(patch_pyfunc, test_paths):
    pyfunc_model, _ = patch_pyfunc
    frame = pd.DataFrame({IMAGE_COLUMN: test_paths})

    plain = pyfunc_model.predict(frame)
    no_maps = pyfunc_model.predict(frame, params={"return_maps": False, "map_size": 8})

    assert list(plain.columns) == ["score", "is_anomaly"]
    pd.testing.assert_frame_equal(plain, no_maps)


def test_the_signature_declares_the_map_params(patch_pyfunc):
    pyfunc_model, detector = patch_pyfunc
    params = {spec.name: spec for spec in pyfunc_model.metadata.get_params_schema().params}

    assert set(params) == {"return_maps", "map_size"}
    assert params["return_maps"].default is False
    assert params["map_size"].default == detector.decoder.image_size


def test_return_maps_adds_each_images_map_at_map_size(patch_pyfunc, test_paths):
    pyfunc_model, detector = patch_pyfunc
    frame = pd.DataFrame({IMAGE_COLUMN: test_paths})

    with_maps = pyfunc_model.predict(frame, params={"return_maps": True, "map_size": 16})
    default_size = pyfunc_model.predict(frame, params={"return_maps": True})

    assert list(with_maps.columns) == ["score", "is_anomaly", MAP_COLUMN]
    assert with_maps["score"].tolist() == pytest.approx(pyfunc_model.predict(frame)["score"].tolist(), rel=1e-5)
    maps = np.asarray(with_maps[MAP_COLUMN].tolist())
    assert maps.shape == (len(test_paths), 16, 16)
    images = np.stack([detector.decoder.decode(path) for path in test_paths])
    _, full_size_maps = detector.scorer.score_images_with_maps(images)
    expected = np.stack([resize_map(anomaly_map, 16) for anomaly_map in full_size_maps])
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-7)
    # Not rescaled: the map's values stay in the units of the score.
    assert maps.max() == pytest.approx(full_size_maps.max(), rel=0.5)
    size = detector.decoder.image_size
    assert np.asarray(default_size[MAP_COLUMN].tolist()).shape == (len(test_paths), size, size)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"return_maps": True, "map_size": 0}, "map_size must be from 1"),
        ({"return_maps": True, "map_size": MAX_MAP_SIZE + 1}, "map_size must be from 1"),
        ({"return_maps": True, "map_size": 1.5}, "map_size must be an integer"),
        ({"return_maps": True, "map_size": "16"}, "map_size must be an integer"),
        ({"return_maps": True, "map_size": True}, "map_size must be an integer"),
        ({"return_maps": "yes"}, "return_maps must be true or false"),
        ({"return_maps": True, "colour": "red"}, r"unknown params \['colour'\]"),
    ],
    ids=["zero", "too-large", "float", "text", "bool", "return-maps-text", "unknown-key"],
)
def test_a_bad_param_is_an_invalid_parameter(patch_pyfunc, test_paths, params, message):
    _, detector = patch_pyfunc
    images = np.stack([detector.decoder.decode(path) for path in test_paths[:1]])

    with pytest.raises(MlflowException, match=message) as raised:
        detector.predict_images(images, params)

    assert raised.value.get_http_status_code() == 400


@pytest.mark.parametrize("params", [{"return_maps": True, "map_size": "many"}, {"return_maps": "maybe"}])
def test_mlflows_own_param_check_is_an_invalid_parameter_too(patch_pyfunc, test_paths, params):
    pyfunc_model, _ = patch_pyfunc

    with pytest.raises(MlflowException) as raised:
        pyfunc_model.predict(pd.DataFrame({IMAGE_COLUMN: test_paths[:1]}), params=params)

    assert raised.value.get_http_status_code() == 400


def test_return_maps_on_a_method_without_maps_is_an_invalid_parameter(tmp_path):
    import keras

    from defectlab.methods.metric.training import EmbeddingLOFDetector

    # An untrained embedder is enough: what is refused is the request, whatever the scores.
    inputs = keras.Input(shape=(32, 32, 3))
    embedder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs)))
    good = np.random.default_rng(0).integers(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
    scorer = EmbeddingLOFDetector([embedder], lof_neighbors=3).fit(good)
    bundle = write_bundle(tmp_path / "bundle", scorer, "l2_softmax", ImageDecoder(32), threshold=1.0)
    detector = load_detector(str(bundle))

    assert list(detector.predict_images(good[:2], {"return_maps": False}).columns) == ["score", "is_anomaly"]
    with pytest.raises(MlflowException, match="l2_softmax detector makes no anomaly maps") as raised:
        detector.predict_images(good[:2], {"return_maps": True, "map_size": 8})
    assert raised.value.get_http_status_code() == 400
