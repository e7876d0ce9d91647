"""SSIM autoencoder: builder checks, SSIM loss and maps, augmentation, scorer contract, image score."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from numpy.lib.stride_tricks import sliding_window_view

from defectlab.evaluation import metrics
from defectlab.methods.ssim import training as autoencoder
from defectlab.cli import main
from defectlab.config import ConfigError
from defectlab.methods.ssim import SSIMConfig
from defectlab.runner import run_training
from defectlab.methods.ssim.architecture import ssim_autoencoder_stride
from defectlab.methods.ssim.network import build_ssim_autoencoder

IMAGE_SIZE = 64


def numpy_ssim(images_a: np.ndarray, images_b: np.ndarray, window: int, sigma: float = 1.5) -> np.ndarray:
    """Mean SSIM per image in float64, straight from the definition (valid windows only)."""
    coordinates = np.arange(window) - (window - 1) / 2.0
    profile = np.exp(-(coordinates**2) / (2 * sigma**2))
    weights = np.outer(profile, profile)
    weights /= weights.sum()
    c1, c2 = 0.01**2, 0.03**2

    def local_mean(image):  # (h, w) -> (h - window + 1, w - window + 1)
        return np.einsum("ijkl,kl->ij", sliding_window_view(image, (window, window)), weights)

    result = []
    for image_a, image_b in zip(images_a.astype(np.float64), images_b.astype(np.float64)):
        per_channel = []
        for channel in range(image_a.shape[-1]):
            a, b = image_a[..., channel], image_b[..., channel]
            mean_a, mean_b = local_mean(a), local_mean(b)
            variance_a = local_mean(a * a) - mean_a**2
            variance_b = local_mean(b * b) - mean_b**2
            covariance = local_mean(a * b) - mean_a * mean_b
            ssim = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
                (mean_a**2 + mean_b**2 + c1) * (variance_a + variance_b + c2)
            )
            per_channel.append(ssim.mean())
        result.append(np.mean(per_channel))
    return np.array(result)


def random_pair(rng, count, size, channels):
    images = rng.random((count, size, size, channels)).astype(np.float32)
    noisy = np.clip(images + rng.normal(0, 0.2, images.shape), 0, 1).astype(np.float32)
    return images, noisy


# Builder and settings checks


@pytest.mark.parametrize("image_size, stride", [(64, 16), (128, 16), (256, 32)])
def test_autoencoder_reconstructs_at_input_size_in_unit_range(image_size, stride):
    network = build_ssim_autoencoder(image_size, channels=1, latent_dim=10)
    assert ssim_autoencoder_stride(image_size) == stride
    assert network.output_shape == (None, image_size, image_size, 1)
    assert network.get_layer("latent_code").output.shape[1:] == (1, 1, 10)
    output = network.predict(np.random.default_rng(0).random((2, image_size, image_size, 1)), verbose=0)
    assert output.min() >= 0.0 and output.max() <= 1.0


def test_256_px_input_gets_the_extra_strided_layer():
    small = build_ssim_autoencoder(128, 1, 10)
    large = build_ssim_autoencoder(256, 1, 10)
    count_convolutions = lambda network: sum("encoder_conv" in layer.name for layer in network.layers)
    assert count_convolutions(large) == count_convolutions(small) + 1


def test_image_size_not_divisible_by_stride_names_allowed_sizes():
    with pytest.raises(ConfigError, match=r"image_size 72 is not divisible .* stride 16.*multiples of 16"):
        build_ssim_autoencoder(72, 1, 10)
    with pytest.raises(ConfigError, match=r"image_size 272 .* stride 32"):
        build_ssim_autoencoder(272, 1, 10)


def test_latent_dim_below_one_is_refused():
    with pytest.raises(ConfigError, match="latent_dim must be at least 1, got 0"):
        build_ssim_autoencoder(64, 1, 0)
    with pytest.raises(ConfigError, match="latent_dim"):
        SSIMConfig(latent_dim=0).validate()


@pytest.mark.parametrize(
    "settings, message",
    [({"image_size": 72}, "not divisible"), ({"latent_dim": 0}, "latent_dim must be at least 1")],
)
def test_run_ssim_refuses_bad_settings_before_data_or_tracking(tracking_uri, settings, message):
    # The config refuses itself at construction: nothing can load data or open a run.
    with pytest.raises(ConfigError, match=message):
        run_training(SSIMConfig(data_dir="/no/such/dataset", epochs=1, **settings))
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_ssim_command_reports_a_bad_image_size_in_one_line(tracking_uri):
    result = CliRunner().invoke(main, ["ssim", "--image-size", "72", "--data-dir", "/no/such/dataset"])
    assert result.exit_code == 1
    assert "Error: ConfigError: image_size 72 is not divisible" in result.output
    assert "Traceback" not in result.output


# SSIM loss and anomaly maps


@pytest.mark.parametrize("window, channels", [(11, 1), (7, 3)])
def test_ssim_loss_matches_float64_numpy_ssim(window, channels):
    images, noisy = random_pair(np.random.default_rng(window), 4, 32, channels)
    loss = np.asarray(autoencoder.ssim_loss(window)(images, noisy))
    np.testing.assert_allclose(loss, 1.0 - numpy_ssim(images, noisy, window), atol=1e-4)


def test_ssim_map_has_input_size_and_equals_tf_map_inside_the_margin():
    import tensorflow as tf

    images, noisy = random_pair(np.random.default_rng(1), 3, 40, 3)
    full_map = autoencoder.ssim_map(images, noisy, 11).numpy()
    tf_map = tf.image.ssim(images, noisy, 1.0, filter_size=11, return_index_map=True).numpy()
    assert full_map.shape == (3, 40, 40)
    assert tf_map.shape == (3, 30, 30)
    np.testing.assert_allclose(full_map[:, 5:-5, 5:-5], tf_map, atol=1e-5)


@pytest.mark.parametrize("top, left", [(24, 30), (0, 56)])  # inside, and in a corner
def test_planted_square_lights_up_its_own_pixels(top, left):
    rng = np.random.default_rng(2)
    clean = (96 + 64 * rng.random((1, IMAGE_SIZE, IMAGE_SIZE, 1))).astype(np.uint8)
    defective = clean.copy()
    defective[0, top:top + 8, left:left + 8] = 255
    mask = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    mask[0, top:top + 8, left:left + 8] = True

    scorer = autoencoder.SSIMDetectorScorer(autoencoder=None, ssim_window=11)
    anomaly_map = scorer.anomaly_maps(defective, reconstructions=clean / 255.0)
    assert anomaly_map.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    # The square itself is where the map is high...
    assert metrics.pixel_auroc(mask, anomaly_map) > 0.95
    peak_row, peak_column = np.unravel_index(np.argmax(anomaly_map[0]), anomaly_map[0].shape)
    assert mask[0, peak_row, peak_column]
    # ...and farther than half a window from it the images agree exactly.
    reach = np.zeros_like(mask[0])
    reach[max(0, top - 5):top + 8 + 5, max(0, left - 5):left + 8 + 5] = True
    np.testing.assert_allclose(anomaly_map[0][~reach], 0.0, atol=1e-5)


# Image score (the paper's decision rule)


def test_region_score_hand_computed():
    anomaly_map = np.zeros((6, 6))
    anomaly_map[0, 0] = 0.9  # an isolated bright pixel
    anomaly_map[3:5, 3:5] = 0.8  # a 2x2 region
    anomaly_map[3, 5] = 0.5  # extends that region to 5 pixels at level 0.5
    assert autoencoder.region_score(anomaly_map, 1) == pytest.approx(0.9)
    assert autoencoder.region_score(anomaly_map, 4) == pytest.approx(0.8)
    assert autoencoder.region_score(anomaly_map, 5) == pytest.approx(0.5)
    assert autoencoder.region_score(anomaly_map, 36) == pytest.approx(0.0)


def reference_region_score(anomaly_map, min_defect_area):
    """The rule read literally: the highest distinct value whose level set holds a large enough 4-connected region."""
    from scipy import ndimage

    for level in np.unique(anomaly_map)[::-1]:
        regions, count = ndimage.label(anomaly_map >= level)
        if count and np.bincount(regions.ravel())[1:].max() >= min_defect_area:
            return float(level)
    raise AssertionError("the lowest level always qualifies")


def test_batched_region_scores_equal_the_rule_map_by_map():
    # Maps of several shapes (thin ones too), with ties, smooth blobs and constants, scored
    # as one batch: no region may join two maps and the search bounds must not cut the answer.
    from scipy import ndimage

    rng = np.random.default_rng(11)
    for trial in range(60):
        height, width = (int(side) for side in rng.integers(1, 16, 2))
        maps = rng.random((int(rng.integers(1, 6)), height, width))
        if trial % 3 == 0:
            maps = np.round(maps, 1)
        if trial % 4 == 0:
            maps = ndimage.gaussian_filter(maps, (0, 1.5, 1.5))
        if trial % 10 == 0:
            maps[0] = 0.25
        min_defect_area = int(rng.integers(1, height * width + 1))
        expected = [reference_region_score(anomaly_map, min_defect_area) for anomaly_map in maps]
        np.testing.assert_array_equal(autoencoder.region_scores(maps, min_defect_area), expected)


def test_regions_of_neighbouring_maps_in_a_batch_stay_apart():
    # Rows of 5 bright pixels: the first map's last row lies next to the second map's
    # first row (maps stacked one under another) and on top of its last row (maps stacked
    # as a volume). Each map has 6 or more bright pixels but no bright region of 6;
    # joined across the batch either way they would make one of 10.
    maps = np.zeros((2, 5, 5))
    maps[0, -1, :] = 1.0
    maps[0, 0, 0] = 1.0
    maps[1, 0, :] = 1.0
    maps[1, -1, :] = 1.0
    np.testing.assert_array_equal(autoencoder.region_scores(maps, 6), [0.0, 0.0])
    np.testing.assert_array_equal(autoencoder.region_scores(maps, 5), [1.0, 1.0])


def test_score_above_threshold_is_exactly_a_large_enough_region_above_threshold():
    rng = np.random.default_rng(3)
    for _ in range(20):
        anomaly_map = np.round(rng.random((12, 12)), 2)
        min_defect_area = int(rng.integers(1, 10))
        score = autoencoder.region_score(anomaly_map, min_defect_area)
        for threshold in rng.random(5):
            flagged_by_rule = autoencoder.largest_region_area(
                anomaly_map, np.nextafter(threshold, np.inf)
            ) >= min_defect_area  # pixels with map > threshold
            assert flagged_by_rule == (score > threshold)


# Augmentation pipeline


def test_augmented_dataset_makes_augment_to_samples_per_epoch_afresh():
    images = (np.random.default_rng(4).random((5, IMAGE_SIZE, IMAGE_SIZE, 1)) * 255).astype(np.uint8)
    dataset = autoencoder.augmented_dataset(images, "carpet", augment_to=13, batch_size=4, seed=0)
    first_epoch = [inputs.numpy() for inputs, targets in dataset]
    second_epoch = [inputs.numpy() for inputs, targets in dataset]
    assert [len(batch) for batch in first_epoch] == [4, 4, 4, 1]
    assert first_epoch[0].shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 1)
    assert first_epoch[0].dtype == np.float32
    assert all(0.0 <= batch.min() and batch.max() <= 1.0 for batch in first_epoch)
    assert not np.allclose(first_epoch[0], second_epoch[0])
    inputs, targets = next(iter(dataset))
    np.testing.assert_array_equal(inputs.numpy(), targets.numpy())


def test_objects_keep_their_orientation_textures_do_not():
    # A left-to-right ramp: any flip, transpose or rotation breaks it.
    ramp = np.tile(np.linspace(0, 255, IMAGE_SIZE, dtype=np.uint8), (IMAGE_SIZE, 1))
    images = np.repeat(ramp[np.newaxis, :, :, np.newaxis], 64, axis=0)

    def still_increasing_left_to_right(category):
        augmented = autoencoder.augment_batch(images, [1, 2], autoencoder.is_texture(category)).numpy()
        return augmented[:, :, -1, 0].mean(axis=1) > augmented[:, :, 0, 0].mean(axis=1)

    assert still_increasing_left_to_right("capsule").all()
    assert not still_increasing_left_to_right("carpet").all()


# Scorer contract


def test_scorer_scores_and_maps_and_round_trips_through_a_bundle(tmp_path):
    network = build_ssim_autoencoder(IMAGE_SIZE, channels=1, latent_dim=8)
    scorer = autoencoder.SSIMDetectorScorer(network, ssim_window=11, min_defect_area=4, batch_size=2)
    images = (np.random.default_rng(5).random((3, IMAGE_SIZE, IMAGE_SIZE, 1)) * 255).astype(np.uint8)
    scores, anomaly_maps = scorer.score_images_with_maps(images)
    assert scores.shape == (3,) and anomaly_maps.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(scorer.score_images(images), scores)
    description = scorer.save(tmp_path)
    reloaded = autoencoder.SSIMDetectorScorer.load(tmp_path, description)
    np.testing.assert_allclose(reloaded.score_images(images), scores, rtol=1e-6)



def test_streamed_batches_keep_each_image_with_its_own_score_and_map():
    # Batches of 2 over 5 images: the next batch is computed while this one's regions are searched.
    network = build_ssim_autoencoder(IMAGE_SIZE, channels=1, latent_dim=8)
    scorer = autoencoder.SSIMDetectorScorer(network, ssim_window=11, min_defect_area=4, batch_size=2)
    images = (np.random.default_rng(8).random((5, IMAGE_SIZE, IMAGE_SIZE, 1)) * 255).astype(np.uint8)
    images[3, 4:12, 4:12] = 255  # one image unlike the others
    scores, anomaly_maps = scorer.score_images_with_maps(images)
    one_by_one = [scorer.score_images_with_maps(images[index:index + 1]) for index in range(5)]
    np.testing.assert_allclose(scores, [score for (score,), _ in one_by_one], rtol=1e-6)
    np.testing.assert_allclose(anomaly_maps, np.concatenate([maps for _, maps in one_by_one]), atol=1e-6)
    from_reconstructions = scorer.anomaly_maps(images, reconstructions=scorer.reconstruct(images))
    np.testing.assert_allclose(anomaly_maps, from_reconstructions, atol=1e-5)
    assert scorer.score_images(images[:0]).shape == (0,)


def test_scorer_refuses_images_that_are_not_uint8():
    network = build_ssim_autoencoder(IMAGE_SIZE, channels=1, latent_dim=8)
    scorer = autoencoder.SSIMDetectorScorer(network, ssim_window=11, min_defect_area=4)
    unit_images = np.random.default_rng(9).random((2, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
    with pytest.raises(TypeError, match="uint8"):
        scorer.score_images(unit_images)

@pytest.mark.training
def test_training_lowers_the_ssim_loss():
    rng = np.random.default_rng(6)
    smooth = np.cumsum(rng.normal(size=(8, IMAGE_SIZE, IMAGE_SIZE, 1)), axis=1)
    images = (255 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint8)
    config = SSIMConfig(image_size=IMAGE_SIZE, epochs=3, batch_size=8, augment_to=32,
                        latent_dim=16, learning_rate=1e-3, category="capsule")
    network, history = autoencoder.train_ssim_autoencoder(images, config, seed=0, verbose=0)
    assert network.output_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert history.history["loss"][-1] < history.history["loss"][0]


# Pixel metrics of a run


def test_pixel_metrics_leave_out_defects_without_masks_and_skip_without_any(caplog):
    import pandas as pd

    from defectlab.runner import pixel_metrics

    table = pd.DataFrame({
        "path": ["good.png", "defect.png", "unmasked.png", "other.png"],
        "split": ["test", "test", "test", "val"],
        "label": [0, 1, 1, 1],
        "mask_path": ["", "defect_mask.png", "", "other_mask.png"],
    })
    masks = np.zeros((4, 4, 4), dtype=bool)
    masks[1, :2, :2] = True
    masks[3, :, :] = True
    anomaly_maps = np.zeros((4, 4, 4))
    anomaly_maps[1, :2, :2] = 1.0
    anomaly_maps[2] = 2.0  # a defect of unknown extent: counted, it would look like false alarms
    anomaly_maps[3] = -1.0  # not a test image
    result = pixel_metrics(table, masks, anomaly_maps)
    assert result == {
        "test_pixel_auroc": 1.0, "test_aupro": pytest.approx(1.0),
        "test_pixel_auroc_ci_low": 1.0, "test_pixel_auroc_ci_high": 1.0,
        "test_pixel_images": 1, "test_pixel_images_without_mask": 1,
    }
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "1 of 2 test defect images have no ground-truth mask (e.g. unmasked.png)" in warnings[0]
    assert pixel_metrics(table.assign(mask_path=""), masks, anomaly_maps) == {}


def test_pixel_metrics_score_the_val_split_apart_as_val_pixel_auroc():
    import pandas as pd

    from defectlab.evaluation.metrics import pixel_auroc
    from defectlab.runner import pixel_metrics

    table = pd.DataFrame({
        "path": ["val_good.png", "val_defect.png", "test_good.png", "test_defect.png"],
        "split": ["val", "val", "test", "test"],
        "label": [0, 1, 0, 1],
        "mask_path": ["", "m1.png", "", "m2.png"],
    })
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 6, 6), dtype=bool)
    masks[1, 1:4, 1:4] = masks[3, 2:5, 2:5] = True
    anomaly_maps = rng.normal(size=(4, 6, 6)) + masks
    anomaly_maps[3] = 5.0 * masks[3]  # test maps perfect, val maps noisy
    result = pixel_metrics(table, masks, anomaly_maps)
    assert result["val_pixel_auroc"] == pytest.approx(pixel_auroc(masks[:2], anomaly_maps[:2]))
    assert result["val_pixel_auroc"] < 1.0 and result["test_pixel_auroc"] == 1.0
    # No val defect with a mask: no val_pixel_auroc, the test figures stay.
    without_val_masks = pixel_metrics(table.assign(mask_path=["", "", "", "m2.png"]), masks, anomaly_maps)
    assert "val_pixel_auroc" not in without_val_masks and without_val_masks["test_pixel_auroc"] == 1.0
