"""Pseudo-defects: exact masks, real defects, determinism, validation, the tf.data adapter."""

from __future__ import annotations

import io

import numpy as np
import pytest

from defectlab.augment.pseudo_defects import (
    DEFAULT_KINDS,
    DEFECT_KINDS,
    NoVisibleDefectError,
    PseudoDefectError,
    PseudoDefectGenerator,
    example_grid,
    local_blur,
    minimum_defect_pixels,
    perlin_noise,
)

SIZE = 64


def random_texture(seed: int, channels: int = 3, size: int = SIZE) -> np.ndarray:
    """A smooth-plus-grainy texture, so every defect kind has something to change."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size]
    waves = 50 * np.sin(columns / rng.uniform(2, 5)) * np.cos(rows / rng.uniform(2, 5))
    tint = rng.uniform(70, 180, size=channels)
    grain = rng.normal(0, 12, size=(size, size, channels))
    return np.clip(tint + waves[..., None] + grain, 0, 255).astype(np.uint8)


def texture_batch(count: int, channels: int = 3, first_seed: int = 0) -> np.ndarray:
    return np.stack([random_texture(first_seed + i, channels) for i in range(count)])


def assert_exact_real_defect(original: np.ndarray, defective: np.ndarray, mask: np.ndarray):
    assert defective.dtype == np.uint8 and defective.shape == original.shape
    assert mask.dtype == bool and mask.shape == original.shape[:2]
    changed = np.any(defective != original, axis=-1)
    assert mask.any(), "mask is empty"
    # Every mask pixel differs, and nothing outside the mask does.
    np.testing.assert_array_equal(mask, changed)
    np.testing.assert_array_equal(defective[~mask], original[~mask])
    assert mask.sum() >= minimum_defect_pixels(*original.shape[:2])


# --------------------------------------------------------------------------
# Each kind
# --------------------------------------------------------------------------


@pytest.mark.parametrize("use_source", [False, True], ids=["self", "source"])
@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_kind_changes_exactly_the_mask(kind, channels, use_source):
    image = random_texture(1, channels)
    source = random_texture(2, channels) if use_source else None
    before = image.copy()
    rng = np.random.default_rng(123)
    for _ in range(3):
        defective, mask = DEFECT_KINDS[kind](image, rng, source)
        assert_exact_real_defect(image, defective, mask)
    np.testing.assert_array_equal(image, before)  # the input is never modified


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_kind_is_deterministic_under_a_seed(kind):
    image = random_texture(3)
    first = DEFECT_KINDS[kind](image, np.random.default_rng(5), None)
    second = DEFECT_KINDS[kind](image, np.random.default_rng(5), None)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_kind_gives_up_clearly_on_an_image_it_cannot_change():
    flat = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    with pytest.raises(NoVisibleDefectError, match=r"local_blur: no visible defect.*too uniform"):
        local_blur(flat, np.random.default_rng(0))


def test_perlin_noise_is_seeded_and_bounded():
    first = perlin_noise((SIZE, 48), np.random.default_rng(1), cells=(4, 3), octaves=3)
    second = perlin_noise((SIZE, 48), np.random.default_rng(1), cells=(4, 3), octaves=3)
    assert first.shape == (SIZE, 48) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert np.all(np.abs(first) <= 1.0 + 1e-6) and first.std() > 0.05


# --------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
@pytest.mark.parametrize("with_sources", [False, True], ids=["no-sources", "sources"])
def test_batch_makes_exact_real_defects(channels, with_sources):
    images = texture_batch(6, channels)
    sources = texture_batch(2, channels, first_seed=50) if with_sources else None
    defective, masks, kinds = PseudoDefectGenerator().batch(images, seed=4, sources=sources)
    assert defective.shape == images.shape and masks.shape == images.shape[:3]
    assert len(kinds) == len(images) and set(kinds) <= set(DEFAULT_KINDS)
    for original, image, mask in zip(images, defective, masks):
        assert_exact_real_defect(original, image, mask)


def test_batch_is_deterministic_given_the_seed():
    images = texture_batch(6)
    generator = PseudoDefectGenerator()
    first = generator.batch(images, seed=7)
    again = PseudoDefectGenerator().batch(images, seed=7)
    other = generator.batch(images, seed=8)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]
    assert not np.array_equal(first[0], other[0])


def test_generator_uses_only_the_chosen_kinds_and_falls_back():
    generator = PseudoDefectGenerator(kinds=("scar", "stroke"), seed=1)
    _, _, kinds = generator.batch(texture_batch(8), seed=0)
    assert set(kinds) <= {"scar", "stroke"}
    # A flat image defeats local_blur; the generator falls back to stroke.
    flat = np.full((SIZE, SIZE, 1), 90, dtype=np.uint8)
    defective, mask, kind = PseudoDefectGenerator(kinds=("local_blur", "stroke"))(
        flat, np.random.default_rng(0)
    )
    assert kind == "stroke"
    assert_exact_real_defect(flat, defective, mask)


def test_synthesise_without_rng_continues_the_seeded_stream():
    image = random_texture(9)
    first = PseudoDefectGenerator(seed=3).synthesise(image)
    generator = PseudoDefectGenerator(seed=3)
    again = generator.synthesise(image)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(generator.synthesise(image)[0], again[0])


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(PseudoDefectError, match=r"unknown pseudo-defect kind.*'scratch'.*valid kinds: cutpaste, scar"):
        PseudoDefectGenerator(kinds=("cutpaste", "scratch"))


def test_no_kinds_is_rejected():
    with pytest.raises(PseudoDefectError, match="kinds is empty"):
        PseudoDefectGenerator(kinds=())


def test_too_small_image_names_size_and_minimum():
    small = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"16x16 px, smaller than the minimum 32x32"):
        PseudoDefectGenerator().synthesise(small, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"16x16 px, smaller than the minimum 32x32"):
        PseudoDefectGenerator().batch(small[None], seed=0)


def test_non_uint8_images_are_rejected():
    floats = random_texture(0).astype(np.float32) / 255
    with pytest.raises(ValueError, match=r"must be uint8.*float32"):
        PseudoDefectGenerator().synthesise(floats, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"must be uint8.*float32"):
        PseudoDefectGenerator().batch(floats[None], seed=0)


def test_wrong_ndim_is_rejected():
    generator = PseudoDefectGenerator()
    with pytest.raises(ValueError, match=r"3 dimensions \(height, width, channels\), got shape \(64, 64\)"):
        generator.synthesise(np.zeros((SIZE, SIZE), dtype=np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"4 dimensions \(count, height, width, channels\)"):
        generator.batch(random_texture(0), seed=0)
    with pytest.raises(ValueError, match=r"1 \(grayscale\) or 3 \(RGB\) channels"):
        generator.synthesise(np.zeros((SIZE, SIZE, 4), dtype=np.uint8), np.random.default_rng(0))


def test_mismatched_sources_are_rejected():
    generator = PseudoDefectGenerator()
    with pytest.raises(ValueError, match=r"source must have the same shape as the image"):
        generator.synthesise(random_texture(0, 3), np.random.default_rng(0), random_texture(1, 1))
    with pytest.raises(ValueError, match=r"sources must be shaped \(count, 64, 64, 3\)"):
        generator.batch(texture_batch(2, 3), seed=0, sources=texture_batch(2, 1))


def test_bad_seed_and_minimum_are_rejected():
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        PseudoDefectGenerator(seed=-1)
    with pytest.raises(ValueError, match="min_image_size must be an integer >= 8"):
        PseudoDefectGenerator(min_image_size=4)


# --------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------


def test_example_grid_renders_a_png():
    images, masks, kinds = PseudoDefectGenerator().batch(texture_batch(3, 1), seed=0)
    figure = example_grid(images, masks, kinds, columns=2)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=40)
    assert buffer.getvalue().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="got 2 kinds for 3 images"):
        example_grid(images, masks, kinds[:2])


# --------------------------------------------------------------------------
# tf.data adapter (TensorFlow imported only here: the rest of the file stays fast)
# --------------------------------------------------------------------------


def collect(dataset):
    batches = [(images.numpy(), masks.numpy()) for images, masks in dataset]
    return batches


def test_tf_dataset_shapes_dtypes_and_exact_masks():
    from defectlab.augment.pseudo_defects_tf import pseudo_defect_dataset

    good = texture_batch(3)
    dataset = pseudo_defect_dataset(good, count_per_epoch=5, seed=1, batch_size=2)
    assert dataset.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 3]
    assert dataset.element_spec[0].dtype.name == "uint8"
    assert dataset.element_spec[1].shape.as_list() == [None, SIZE, SIZE]
    assert dataset.element_spec[1].dtype.name == "bool"
    batches = collect(dataset)
    assert [len(images) for images, _ in batches] == [2, 2, 1]
    for images, masks in batches:
        assert images.dtype == np.uint8 and masks.dtype == bool
        for image, mask in zip(images, masks):
            # Each defective image is one of the good images, changed exactly in its mask.
            matches = [np.array_equal(image[~mask], original[~mask]) for original in good]
            assert any(matches) and mask.any()


def test_tf_dataset_is_deterministic_per_seed_and_epoch():
    from defectlab.augment.pseudo_defects_tf import pseudo_defect_dataset

    good = texture_batch(3, channels=1)
    options = dict(count_per_epoch=4, batch_size=4)
    two_epochs = collect(pseudo_defect_dataset(good, seed=2, epochs=2, **options))
    repeated = pseudo_defect_dataset(good, seed=2, epochs=2, **options)
    assert len(two_epochs) == 2
    for (images, masks), (images_again, masks_again) in zip(two_epochs, collect(repeated)):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(masks, masks_again)
    # Epochs differ, and epoch 1 alone is the same as the second epoch of a run from 0.
    assert not np.array_equal(two_epochs[0][0], two_epochs[1][0])
    (second_epoch,) = collect(pseudo_defect_dataset(good, seed=2, first_epoch=1, **options))
    np.testing.assert_array_equal(second_epoch[0], two_epochs[1][0])
    (other_seed,) = collect(pseudo_defect_dataset(good, seed=3, **options))
    assert not np.array_equal(other_seed[0], two_epochs[0][0])


def test_tf_dataset_validates_up_front():
    from defectlab.augment.pseudo_defects_tf import pseudo_defect_dataset

    with pytest.raises(ValueError, match="count_per_epoch must be a positive integer"):
        pseudo_defect_dataset(texture_batch(1), count_per_epoch=0, seed=0)
    with pytest.raises(ValueError, match="smaller than the minimum 32x32"):
        pseudo_defect_dataset(np.zeros((2, 16, 16, 1), np.uint8), count_per_epoch=2, seed=0)
