"""The patch method's checks before any work, and its detector on a planted defect."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from defectlab.config import ConfigError
from defectlab.methods.patch import PatchConfig
from defectlab.runner import run_training


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1])
def test_coreset_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"coreset_ratio must be in \(0, 1\]"):
        PatchConfig(coreset_ratio=ratio)


def test_unknown_feature_layer_lists_the_valid_ones(tiny_dataset_root, tracking_uri):
    with pytest.raises(ConfigError, match="unknown feature layer.*block_nine.*block_2_add"):
        run_training(PatchConfig(
            data_dir=str(tiny_dataset_root), image_size=64, backbone="none", feature_layers="block_2_add,block_nine",
        ))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_a_bank_too_large_for_memory_is_refused_before_extraction(tiny_dataset_root, tracking_uri):
    with pytest.raises(ConfigError, match=r"GiB.*lower image_size"):
        run_training(PatchConfig(
            data_dir=str(tiny_dataset_root), image_size=64, backbone="none", memory_limit_gib=1e-4,
        ))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_a_backbone_run_that_is_not_metric_learning_is_refused(tiny_dataset_root, tracking_uri):
    with mlflow.start_run() as other:
        mlflow.set_tags({"method": "ssim_ae", "image_size": "64"})
        mlflow.log_param("image_size", 64)
    with pytest.raises(ConfigError, match="not an L2-softmax training run"):
        run_training(PatchConfig(data_dir=str(tiny_dataset_root), image_size=64, backbone=f"run:{other.info.run_id}"))


def test_a_backbone_run_of_another_image_size_is_refused(tiny_dataset_root, tracking_uri):
    with mlflow.start_run() as other:
        mlflow.set_tags({"method": "l2_softmax", "ensemble_size": "1"})
        mlflow.log_params({"image_size": 96, "backbone_alpha": 0.5})
    with pytest.raises(ConfigError, match="image_size 96.*--image-size 96"):
        run_training(PatchConfig(data_dir=str(tiny_dataset_root), image_size=64, backbone=f"run:{other.info.run_id}"))


def test_unknown_backbone_is_refused(tiny_dataset_root, tracking_uri):
    with pytest.raises(ConfigError, match="backbone must be one of"):
        run_training(PatchConfig(data_dir=str(tiny_dataset_root), image_size=64, backbone="resnet"))


def test_the_map_of_a_planted_bright_square_peaks_inside_it(tmp_path):
    import keras

    from defectlab.methods.patch.detector import PatchCoreDetector
    from defectlab.methods.patch.features import patch_feature_extractor

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    good = rng.integers(90, 140, size=(12, 64, 64, 3)).astype(np.uint8)
    backbone = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.5, include_top=False, weights=None)
    detector = PatchCoreDetector(patch_feature_extractor(backbone, ("block_2_add", "block_5_add"))).fit(good)
    test = rng.integers(90, 140, size=(2, 64, 64, 3)).astype(np.uint8)
    test[1, 24:36, 30:42] = 255
    scores, maps = detector.score_images_with_maps(test)
    assert scores[1] > scores[0]
    row, column = np.unravel_index(np.argmax(maps[1]), maps[1].shape)
    assert 24 <= row < 36 and 30 <= column < 42

    # The bundle's files give back the same scores and maps.
    reloaded = PatchCoreDetector.load(tmp_path, detector.save(tmp_path))
    reloaded_scores, reloaded_maps = reloaded.score_images_with_maps(test)
    np.testing.assert_allclose(reloaded_scores, scores, rtol=1e-5)
    np.testing.assert_allclose(reloaded_maps, maps, rtol=1e-5, atol=1e-7)


def test_a_random_backbone_is_seeded_so_runs_repeat():
    from defectlab.methods.patch.backbone import seeded_backbone

    config = PatchConfig(image_size=64, backbone="none", seed=3)
    first, second = seeded_backbone(config, None), seeded_backbone(config, None)
    for first_weights, second_weights in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(first_weights, second_weights)


def test_pixel_windows_are_the_raw_values_of_each_window():
    from numpy.lib.stride_tricks import sliding_window_view

    from defectlab.methods.patch.features import extract_layer_outputs, pixel_window_extractor

    images = np.random.default_rng(1).integers(0, 256, size=(2, 16, 16, 3)).astype(np.uint8)
    (windows,) = extract_layer_outputs(pixel_window_extractor(16, window=4, stride=2), images)
    assert windows.shape == (2, 8, 8, 4 * 4 * 3)
    # 'same' padding at stride 2 on 16 px pads one row and column before and two after.
    padded = np.pad(images.astype(np.float64) / 255.0, ((0, 0), (1, 2), (1, 2), (0, 0)))
    expected = sliding_window_view(padded, (4, 4), axis=(1, 2))[:, ::2, ::2]  # (n, 8, 8, 3, 4, 4)
    expected = expected.transpose(0, 1, 2, 4, 5, 3).reshape(2, 8, 8, 48)
    np.testing.assert_allclose(windows, expected, atol=1e-6)


def test_the_pixels_backbone_finds_a_planted_dark_hole_and_reloads(tmp_path):
    from defectlab.methods.patch.detector import PatchCoreDetector
    from defectlab.methods.patch.features import pixel_window_extractor

    rng = np.random.default_rng(2)
    good = rng.integers(90, 140, size=(12, 64, 64, 3)).astype(np.uint8)
    detector = PatchCoreDetector(pixel_window_extractor(64), patch_size=1).fit(good)
    test = rng.integers(90, 140, size=(2, 64, 64, 3)).astype(np.uint8)
    test[1, 40:46, 10:16] = 0
    scores, maps = detector.score_images_with_maps(test)
    assert scores[1] > 1.5 * scores[0]
    row, column = np.unravel_index(np.argmax(maps[1]), maps[1].shape)
    assert 36 <= row < 50 and 6 <= column < 20
    reloaded = PatchCoreDetector.load(tmp_path, detector.save(tmp_path))
    np.testing.assert_allclose(reloaded.score_images_with_maps(test)[0], scores, rtol=1e-5)


def test_a_pixels_run_checks_its_memory_without_a_backbone(tiny_dataset_root, tracking_uri):
    with pytest.raises(ConfigError, match=r"GiB.*of 108 features"):
        run_training(PatchConfig(
            data_dir=str(tiny_dataset_root), image_size=64, backbone="pixels", memory_limit_gib=1e-4,
        ))


def test_auto_feature_layers_follow_the_backbone_weights():
    from defectlab.methods.patch.config import PRETRAINED_FEATURE_LAYERS, RANDOM_FEATURE_LAYERS

    assert ",".join(PatchConfig(backbone="imagenet").layer_names) == PRETRAINED_FEATURE_LAYERS
    assert ",".join(PatchConfig(backbone="/models/weights.h5").layer_names) == PRETRAINED_FEATURE_LAYERS
    for backbone in ("none", "self", "run:abc", "models:/m@champion"):
        assert ",".join(PatchConfig(backbone=backbone).layer_names) == RANDOM_FEATURE_LAYERS
    assert PatchConfig(backbone="imagenet", feature_layers="block_2_add,block_9_add").layer_names == (
        "block_2_add", "block_9_add")


def test_an_unknown_search_index_is_refused():
    with pytest.raises(ConfigError, match="search_index must be one of auto, exact, ivf, got 'hnsw'"):
        PatchConfig(search_index="hnsw")


def test_a_run_without_faiss_fails_in_one_line_naming_the_package(tiny_dataset_root, tracking_uri, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(ConfigError, match="needs faiss.*pip install faiss-cpu"):
        run_training(PatchConfig(data_dir=str(tiny_dataset_root), image_size=64, backbone="none"))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_a_large_bank_saves_its_ivf_index_and_reloads_with_the_same_scores(tmp_path):
    from defectlab.methods.patch.detector import PatchCoreDetector
    from defectlab.methods.patch.features import pixel_window_extractor

    rng = np.random.default_rng(3)
    good = rng.integers(60, 180, size=(40, 32, 32, 3)).astype(np.uint8)  # 40 x 16 x 16 = 10,240 patches
    detector = PatchCoreDetector(
        pixel_window_extractor(32), patch_size=1, coreset_ratio=0.5, search_index="ivf",
    ).fit(good)
    assert detector.memory_bank_.index_.kind_ == "ivf"
    test = rng.integers(60, 180, size=(3, 32, 32, 3)).astype(np.uint8)
    scores, maps = detector.score_images_with_maps(test)
    description = detector.save(tmp_path)
    assert description["search"]["search_index"] == "ivf" and (tmp_path / description["search"]["index_file"]).is_file()
    reloaded = PatchCoreDetector.load(tmp_path, description)
    assert reloaded.memory_bank_.index_.kind_ == "ivf"
    reloaded_scores, reloaded_maps = reloaded.score_images_with_maps(test)
    np.testing.assert_array_equal(reloaded_scores, scores)
    np.testing.assert_array_equal(reloaded_maps, maps)


def test_a_bundle_saved_before_the_search_index_was_recorded_is_searched_exactly(tmp_path):
    from defectlab.methods.patch.detector import PatchCoreDetector
    from defectlab.methods.patch.features import pixel_window_extractor

    rng = np.random.default_rng(4)
    good = rng.integers(60, 180, size=(6, 32, 32, 3)).astype(np.uint8)
    detector = PatchCoreDetector(pixel_window_extractor(32), patch_size=1).fit(good)
    description = detector.save(tmp_path)
    del description["search"]
    reloaded = PatchCoreDetector.load(tmp_path, description)
    assert reloaded.memory_bank_.index_.kind_ == "exact"
    np.testing.assert_array_equal(reloaded.score_images(good[:2]), detector.score_images(good[:2]))


def test_an_unknown_backbone_architecture_is_refused_and_auto_layers_follow_the_architecture():
    from defectlab.methods.metric import MetricConfig

    with pytest.raises(ConfigError, match="backbone_arch must be one of mobilenet_v2, efficientnet_lite0, got 'resnet50'"):
        PatchConfig(backbone_arch="resnet50")
    with pytest.raises(ConfigError, match="backbone_arch must be one of"):
        MetricConfig(backbone_arch="resnet50")
    assert PatchConfig(backbone="imagenet", backbone_arch="efficientnet_lite0").layer_names == ("block_4_add", "block_10_add")
    assert PatchConfig(backbone="none", backbone_arch="efficientnet_lite0").layer_names == ("block_2_add", "block_4_add")


@pytest.mark.parametrize("backbone_arch", ["mobilenet_v2", "efficientnet_lite0"])
def test_the_search_space_offers_only_layers_of_the_tuned_architecture(backbone_arch):
    from defectlab.methods.backbones import build_backbone
    from defectlab.methods.patch import default_search_space
    from defectlab.methods.patch.features import feature_layer_names

    names = set(feature_layer_names(build_backbone(backbone_arch, 64)))
    pairs = default_search_space(PatchConfig(backbone_arch=backbone_arch), None)["feature_layers"]["choices"]
    assert pairs and all(set(pair.split(",")) <= names for pair in pairs)


def test_the_offline_weights_error_keeps_the_whole_reason_and_lists_every_offline_choice(tmp_path, monkeypatch):
    import keras

    from defectlab.methods.backbones import WeightsUnavailableError
    from defectlab.methods.patch.backbone import check_weights_backbone

    reason = "URL fetch failure: " + "name or service not known; " * 12 + "end of the reason"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))

    def offline(*arguments, **keywords):
        raise OSError(reason)

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as raised:
        check_weights_backbone(PatchConfig(backbone="imagenet", image_size=96))
    message = str(raised.value)
    assert reason in message  # whole, not cut at 200 characters
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_96_no_top.h5" in message
    for choice in ("backbone_arch=efficientnet_lite0", "pixels", "self", "none"):
        assert choice in message


@pytest.mark.parametrize("mlflow_run, spelled", [
    (False, ("--backbone-arch efficientnet_lite0", "--backbone pixels", "--backbone self", "--backbone none")),
    (True, ("-P backbone_arch=efficientnet_lite0", "-P backbone=pixels", "-P backbone=self", "-P backbone=none")),
])
def test_the_offline_weights_error_names_the_choices_as_the_user_typed_them(
    tmp_path, monkeypatch, tracking_uri, mlflow_run, spelled,
):
    import keras
    from click.testing import CliRunner

    from defectlab.cli import main
    from defectlab.errors import spell_setting

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    if mlflow_run:
        monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")  # as `mlflow run` starts an entry point
    else:
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)

    def offline(*arguments, **keywords):
        raise OSError("URL fetch failure: name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    result = CliRunner().invoke(main, ["patch", "--backbone", "imagenet", "--image-size", "96"])

    assert result.exit_code == 1 and "WeightsUnavailableError" in result.output
    message = " ".join(result.output.split())  # click wraps nothing, but be safe
    assert all(choice in message for choice in spelled), message
    other_style = "-P " if not mlflow_run else "--backbone"
    assert other_style not in message
    assert spell_setting("backbone", "pixels") == "backbone=pixels"  # the library's own spelling again


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), float("inf")])
def test_a_map_sigma_that_is_not_a_finite_non_negative_number_is_refused(sigma):
    with pytest.raises(ConfigError, match="map_sigma must be 0 .no smoothing. or a positive number of pixels"):
        PatchConfig(map_sigma=sigma)


def test_map_sigma_sets_the_smoothing_scaled_to_the_image_and_survives_a_reload(tmp_path):
    from defectlab.methods.patch.detector import PatchCoreDetector
    from defectlab.methods.patch.features import pixel_window_extractor
    from defectlab.methods.patch.maps import gaussian_smooth_maps, upsample_maps

    rng = np.random.default_rng(5)
    good = rng.integers(90, 140, size=(8, 32, 32, 3)).astype(np.uint8)
    test = rng.integers(90, 140, size=(2, 32, 32, 3)).astype(np.uint8)
    test[1, 12:16, 12:16] = 0
    unsmoothed = PatchCoreDetector(pixel_window_extractor(32), patch_size=1, map_sigma=0).fit(good)
    raw_scores, raw_maps = unsmoothed.score_images_with_maps(test)
    _, grids = unsmoothed.memory_bank_.score_images(unsmoothed.patch_features(test))
    np.testing.assert_allclose(raw_maps, upsample_maps(grids, 32), rtol=1e-6)
    smoothed = PatchCoreDetector(pixel_window_extractor(32), patch_size=1, map_sigma=14.0).fit(good)
    scores, maps = smoothed.score_images_with_maps(test)
    # 14 px at 224 is 2 px on a 32 px map; the blur lowers the defect's peak.
    np.testing.assert_allclose(maps, gaussian_smooth_maps(raw_maps, sigma=2.0), rtol=1e-5, atol=1e-6)
    assert maps[1].max() < raw_maps[1].max()
    reloaded = PatchCoreDetector.load(tmp_path, smoothed.save(tmp_path))
    assert reloaded.map_sigma == 14.0
    np.testing.assert_array_equal(reloaded.score_images_with_maps(test)[1], maps)


def test_a_bundle_saved_before_map_sigma_was_a_setting_smooths_as_patchcore(tmp_path):
    from defectlab.methods.patch.detector import SMOOTHING_SIGMA_AT_224, PatchCoreDetector
    from defectlab.methods.patch.features import pixel_window_extractor

    rng = np.random.default_rng(6)
    good = rng.integers(60, 180, size=(6, 32, 32, 3)).astype(np.uint8)
    description = PatchCoreDetector(pixel_window_extractor(32), patch_size=1, map_sigma=0).fit(good).save(tmp_path)
    del description["map_sigma"]
    assert PatchCoreDetector.load(tmp_path, description).map_sigma == SMOOTHING_SIGMA_AT_224
