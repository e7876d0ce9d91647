"""Patch features from a random-init MobileNetV2, and a planted defect found end to end."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy import ndimage

from defectlab.methods.patch.bank import PatchMemoryBank
from defectlab.methods.patch.config import RANDOM_FEATURE_LAYERS
from defectlab.methods.patch.features import (
    adaptive_average_channels,
    aggregate_patch_features,
    extract_layer_outputs,
    extract_patch_features,
    feature_layer_names,
    local_average,
    patch_feature_extractor,
)
from defectlab.methods.patch.maps import gaussian_smooth_maps, upsample_maps

IMAGE_SIZE = 64
DEFAULT_FEATURE_LAYERS = tuple(RANDOM_FEATURE_LAYERS.split(","))


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=0.5, include_top=False, weights=None
    )


@pytest.fixture(scope="module")
def extractor(backbone):
    return patch_feature_extractor(backbone, DEFAULT_FEATURE_LAYERS)


def random_textures(rng: np.random.Generator, count: int) -> np.ndarray:
    """Smooth grey-ish noise textures, uint8 ``(count, 64, 64, 3)``, values well below 255."""
    noise = rng.normal(size=(count, IMAGE_SIZE, IMAGE_SIZE, 3))
    smooth = ndimage.gaussian_filter(noise, sigma=(0, 1.5, 1.5, 0))
    smooth /= smooth.std()
    return np.clip(110 + 25 * smooth, 0, 255).astype(np.uint8)


# The extractor


def test_extractor_outputs_the_named_layers_for_uint8_images(backbone, extractor):
    assert [output.shape[1:] for output in extractor.outputs] == [(16, 16, 16), (8, 8, 16)]
    # Each output passes an Identity layer named after its backbone layer.
    assert all(type(extractor.get_layer(name)).__name__ == "Identity" for name in DEFAULT_FEATURE_LAYERS)
    images = random_textures(np.random.default_rng(0), 2)
    outputs = extract_layer_outputs(extractor, images)
    # The Rescaling inside the extractor does MobileNetV2's [-1, 1] scaling.
    direct = keras.Model(backbone.inputs, [backbone.get_layer(name).output for name in DEFAULT_FEATURE_LAYERS])
    expected = direct.predict(images.astype(np.float32) / 127.5 - 1.0, verbose=0)
    for output, reference in zip(outputs, expected):
        assert output.dtype == np.float32
        np.testing.assert_allclose(output, reference, rtol=1e-4, atol=1e-7)


def test_saved_extractor_loads_without_custom_objects(extractor, tmp_path):
    path = tmp_path / "extractor.keras"
    extractor.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: built-in layers only
    images = random_textures(np.random.default_rng(1), 2)
    for before, after in zip(extract_layer_outputs(extractor, images), extract_layer_outputs(loaded, images)):
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-9)


def test_one_layer_extractor_still_gives_a_list(backbone):
    outputs = extract_layer_outputs(patch_feature_extractor(backbone, ("block_2_add",)), np.zeros((1, 64, 64, 3)))
    assert isinstance(outputs, list) and outputs[0].shape == (1, 16, 16, 16)


def test_unknown_layer_raises_with_the_valid_names(backbone):
    assert {"block_2_add", "block_5_add", "block_9_add", "block_12_add"} <= set(feature_layer_names(backbone))
    with pytest.raises(ValueError, match=r"unknown feature layer\(s\) \['block_99_add'\].*valid names.*block_2_add.*block_12_add"):
        patch_feature_extractor(backbone, ("block_2_add", "block_99_add"))
    with pytest.raises(ValueError, match="at least one backbone layer"):
        patch_feature_extractor(backbone, ())


# Aggregation


def test_local_average_equals_keras_same_padding_average_pool():
    maps = np.random.default_rng(2).normal(size=(2, 7, 9, 4)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(keras.ops.average_pool(maps, 3, strides=1, padding="same"))
    np.testing.assert_allclose(local_average(maps, 3), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(local_average(maps, 1), maps)
    with pytest.raises(ValueError, match="patch_size must be a positive odd integer"):
        local_average(maps, 2)


def test_aggregate_resizes_deeper_layers_to_the_first_grid_and_concatenates():
    rng = np.random.default_rng(3)
    shallow = rng.normal(size=(2, 16, 16, 5)).astype(np.float32)
    deep = np.full((2, 8, 8, 3), 2.5, dtype=np.float32)  # constant: resizing must keep it
    features = aggregate_patch_features([shallow, deep], patch_size=3)
    assert features.shape == (2, 16, 16, 8) and features.dtype == np.float32
    np.testing.assert_allclose(features[..., :5], local_average(shallow, 3), rtol=1e-6)
    np.testing.assert_allclose(features[..., 5:], 2.5, rtol=1e-6)
    reduced = aggregate_patch_features([shallow, deep], feature_dim=4)
    assert reduced.shape == (2, 16, 16, 4)
    with pytest.raises(ValueError, match="disagree on the number of images"):
        aggregate_patch_features([shallow, deep[:1]])


def test_adaptive_average_channels_bins_like_pytorch():
    # 10 channels into 4 bins: [0, 3), [2, 5), [5, 8), [7, 10).
    pooled = adaptive_average_channels(np.arange(10.0)[None], 4)
    np.testing.assert_allclose(pooled, [[1.0, 3.0, 6.0, 8.0]])
    with pytest.raises(ValueError, match=r"feature_dim must be an integer in \[1, 10\]"):
        adaptive_average_channels(np.arange(10.0)[None], 11)


# End to end


def test_a_planted_bright_square_is_where_the_anomaly_map_peaks(extractor):
    rng = np.random.default_rng(4)
    good_images = random_textures(rng, 12)
    test_images = random_textures(rng, 4)
    top, left, side = 36, 10, 12
    test_images[0, top : top + side, left : left + side] = 255  # the planted defect

    good_features = extract_patch_features(extractor, good_images)
    bank = PatchMemoryBank(coreset_ratio=0.25, seed=0)
    bank.fit(good_features.reshape(-1, good_features.shape[-1]))
    image_scores, patch_maps = bank.score_images(extract_patch_features(extractor, test_images))
    anomaly_maps = gaussian_smooth_maps(upsample_maps(patch_maps, IMAGE_SIZE), sigma=4.0)

    row, column = np.unravel_index(np.argmax(anomaly_maps[0]), anomaly_maps[0].shape)
    assert top <= row < top + side and left <= column < left + side
    assert image_scores[0] > image_scores[1:].max()  # the defect image is the most anomalous
