"""Every image read right or refused: 16-bit and float images, EXIF orientation, non-square shapes.

Each case is a small file written by the test; the same `ImageDecoder` serves
training (`data.load_images`), ground truth (`decode_mask`) and serving
(`decode_images` of a bundle's decoder), so each is checked through all three.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from defectlab import data
from defectlab.data import ImageDecodeError, ImageDecoder
from defectlab.serving.bundle import bundle_decoder
from defectlab.serving.detector import decode_images

EXIF_ORIENTATION = 0x0112


@pytest.fixture
def eight_bit_image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(48, 64), dtype=np.uint8)


def png_bytes(array: np.ndarray, **save_options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


@pytest.mark.parametrize("grayscale", [True, False])
def test_a_16_bit_png_decodes_as_its_8_bit_twin(eight_bit_image, grayscale, tmp_path):
    sixteen_bit = eight_bit_image.astype(np.uint16) * 257  # 0..255 -> 0..65535
    assert Image.open(io.BytesIO(png_bytes(sixteen_bit))).mode == "I;16"
    decoder = ImageDecoder(32, grayscale)
    from_16 = decoder.decode(png_bytes(sixteen_bit)).astype(np.float64)
    from_8 = decoder.decode(png_bytes(eight_bit_image)).astype(np.float64)
    assert np.max(np.abs(from_16 - from_8)) <= 1e-6
    # Before: convert("L") saturated every value above 255 to white.
    assert from_16.mean() < 200


def test_a_16_bit_tiff_is_scaled_not_saturated(eight_bit_image, tmp_path):
    path = tmp_path / "camera.tif"
    Image.fromarray(eight_bit_image.astype(np.uint16) * 257).save(path)
    decoded = ImageDecoder(64, True).decode(path)[..., 0]
    expected = ImageDecoder(64, True).decode(png_bytes(eight_bit_image))[..., 0]
    np.testing.assert_array_equal(decoded, expected)


def test_a_float_image_in_0_1_is_scaled_by_255(tmp_path):
    intensities = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    path = tmp_path / "float.tif"
    Image.fromarray(intensities).save(path)
    decoded = ImageDecoder(32, True).decode(path)[..., 0]
    np.testing.assert_array_equal(decoded, np.rint(intensities.astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    "values, message",
    [
        (np.full((8, 8), 3.5, dtype=np.float32), r"values in \[3.5, 3.5\]"),
        (np.array([[np.nan] * 8] * 8, dtype=np.float32), "NaN"),
        (np.full((8, 8), 70_000, dtype=np.int32), r"values in \[70000, 70000\]"),
    ],
)
def test_images_outside_the_readable_range_are_refused_saying_the_range(values, message, tmp_path):
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageDecodeError, match=message):
        ImageDecoder(8, True).decode(path)


def exif_rotated_jpeg(upright: np.ndarray, path) -> None:
    """Save ``upright`` rotated a quarter turn with the EXIF tag that says how to turn it back."""
    stored = np.rot90(upright, k=1)  # counter-clockwise, as a camera held on its side stores it
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(path, format="JPEG", quality=100, exif=exif)


def test_an_exif_rotated_jpeg_decodes_upright(tmp_path):
    upright = np.zeros((40, 60), dtype=np.uint8)
    upright[:10, :] = 255  # a bright band at the top
    path = tmp_path / "phone.jpg"
    exif_rotated_jpeg(upright, path)
    assert Image.open(path).size == (40, 60)  # as stored: on its side
    assert data.layout.upright_size(path) == (60, 40)
    decoded = ImageDecoder(40, True, resize="center_crop").decode(path)[..., 0].astype(float)
    assert decoded[:8].mean() > 200 and decoded[12:].mean() < 30


def wide_image() -> np.ndarray:
    """80 x 40 (width x height): left quarter black, middle half gray, right quarter white."""
    image = np.full((40, 80), 128, dtype=np.uint8)
    image[:, :20] = 0
    image[:, 60:] = 255
    return image


def test_center_crop_keeps_the_middle_square():
    decoded = ImageDecoder(40, True, resize="center_crop").decode(png_bytes(wide_image()))[..., 0]
    np.testing.assert_array_equal(decoded, np.full((40, 40), 128, dtype=np.uint8))


def test_pad_keeps_the_whole_image_centred_on_black():
    decoded = ImageDecoder(40, True, resize="pad").decode(png_bytes(wide_image()))[..., 0]
    np.testing.assert_array_equal(decoded[:10], 0)  # padding above
    np.testing.assert_array_equal(decoded[30:], 0)  # and below
    np.testing.assert_array_equal(decoded[10:30], np.asarray(
        Image.fromarray(wide_image()).resize((40, 20), Image.Resampling.BILINEAR)))


def test_stretch_is_the_default_and_squeezes():
    decoded = ImageDecoder(40, True).decode(png_bytes(wide_image()))[..., 0]
    np.testing.assert_array_equal(decoded[:, :8], 0)
    np.testing.assert_array_equal(decoded[:, 32:], 255)


@pytest.mark.parametrize("resize", ["stretch", "center_crop", "pad"])
def test_training_masks_and_serving_decode_alike(resize, tmp_path):
    """Training arrays, their masks and a served image through a bundle's decoder agree."""
    image_path, mask_path = tmp_path / "wide.png", tmp_path / "wide_mask.png"
    Image.fromarray(wide_image()).save(image_path)
    Image.fromarray(np.where(wide_image() == 255, 255, 0).astype(np.uint8)).save(mask_path)
    decoder = ImageDecoder(40, True, resize=resize)

    training = data.load_images([str(image_path)], 40, grayscale=True, cache_dir=tmp_path / "cache",
                                resize=resize)[0]
    served_decoder = bundle_decoder({"preprocessing": decoder.to_dict()})
    served = decode_images(pd.DataFrame({"image": [str(image_path)]}), served_decoder)[0]
    np.testing.assert_array_equal(training, served)
    assert served_decoder == decoder

    table = pd.DataFrame({"path": [str(image_path)], "mask_path": [str(mask_path)]})
    mask = data.load_masks(table, 40, cache_dir=tmp_path / "cache", resize=resize)[0]
    bright = training[..., 0] > 200
    # The mask lies on the white quarter in every geometry (a few resampled edge pixels aside).
    assert (mask == bright).mean() > 0.97
    if resize == "center_crop":
        assert not mask.any()  # the white quarter is cropped away, and so is its mask


def test_bundles_without_resize_are_stretched():
    assert bundle_decoder({"image_size": 32, "grayscale": False}).resize == "stretch"


def test_an_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError, match="resize must be one of stretch, center_crop, pad"):
        ImageDecoder(32, resize="squash")


def write_category(root, sizes, unreadable: int = 0) -> None:
    """A tiny category: train/good of the given sizes, a test set, and ``unreadable`` broken files."""
    rng = np.random.default_rng(1)
    for split, folder, count in (("train", "good", len(sizes)), ("test", "good", 3), ("test", "hole", 3)):
        target = root / "widgets" / split / folder
        target.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            width, height = sizes[index % len(sizes)]
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                target / f"{index:03d}.png")
    for index in range(unreadable):
        (root / "widgets" / "train" / "good" / f"broken_{index}.png").write_bytes(b"not a png at all")


def test_non_square_images_warn_once_with_the_sizes_seen(tmp_path, caplog):
    write_category(tmp_path / "set", [(64, 48)] * 6 + [(48, 48)] * 2)
    with caplog.at_level(logging.WARNING, logger="defectlab.data.layout"):
        data.load_category(tmp_path / "set", "widgets", 32, cache_dir=tmp_path / "cache")
    warnings = [record.getMessage() for record in caplog.records if "not square" in record.getMessage()]
    assert len(warnings) == 1
    assert "64x48" in warnings[0] and "resize=center_crop or pad" in warnings[0]


def test_the_sizes_behind_the_warning_are_read_from_the_cache_the_second_time(tmp_path, caplog, monkeypatch):
    write_category(tmp_path / "set", [(64, 48)] * 6 + [(48, 48)] * 2)
    data.load_category(tmp_path / "set", "widgets", 32, cache_dir=tmp_path / "cache")

    def no_header_reads(path):
        raise AssertionError(f"header of {path} read again")

    monkeypatch.setattr("defectlab.data.layout.upright_size", no_header_reads)
    monkeypatch.setattr("defectlab.data.layout._NON_SQUARE_NOTED", set())  # as a new process would
    with caplog.at_level(logging.WARNING, logger="defectlab.data.layout"):
        data.load_category(tmp_path / "set", "widgets", 32, cache_dir=tmp_path / "cache")
    assert [record for record in caplog.records if "12 of 14 images are not square" in record.getMessage()]


def test_loading_the_same_images_again_at_another_size_does_not_repeat_the_warning(tmp_path, caplog):
    # A study loads the category once per image size it tries: one warning is enough.
    write_category(tmp_path / "set", [(64, 48)] * 6 + [(48, 48)] * 2)
    with caplog.at_level(logging.WARNING, logger="defectlab.data.layout"):
        for image_size in (32, 40, 32):
            data.load_category(tmp_path / "set", "widgets", image_size, cache_dir=tmp_path / "cache")
    assert len([record for record in caplog.records if "not square" in record.getMessage()]) == 1
    write_category(tmp_path / "other", [(64, 48)] * 8)  # other files: their own warning
    with caplog.at_level(logging.WARNING, logger="defectlab.data.layout"):
        data.load_category(tmp_path / "other", "widgets", 32, cache_dir=tmp_path / "cache")
    assert len([record for record in caplog.records if "not square" in record.getMessage()]) == 2


def test_square_images_do_not_warn(tmp_path, caplog):
    write_category(tmp_path / "set", [(48, 48)] * 8)
    with caplog.at_level(logging.WARNING, logger="defectlab.data.layout"):
        data.load_category(tmp_path / "set", "widgets", 32, cache_dir=tmp_path / "cache")
    assert not [record for record in caplog.records if "not square" in record.getMessage()]


def test_an_unreadable_image_stops_loading_by_default_naming_it(tmp_path):
    write_category(tmp_path / "set", [(48, 48)] * 8, unreadable=1)
    with pytest.raises(data.DatasetError, match=r"cannot read image .*broken_0\.png"):
        data.load_category(tmp_path / "set", "widgets", 32, cache_dir=tmp_path / "cache")


def test_skip_leaves_unreadable_images_out_and_lists_them(tmp_path):
    write_category(tmp_path / "set", [(48, 48)] * 8, unreadable=2)
    for attempt in range(2):  # the second load reads which files are readable from the cache
        dataset = data.load_category(tmp_path / "set", "widgets", 32, cache_dir=tmp_path / "cache",
                                     on_bad_image="skip")
        assert sorted(dataset.skipped["path"].map(lambda path: path.rsplit("/", 1)[-1])) == [
            "broken_0.png", "broken_1.png"]
        assert dataset.skipped["reason"].str.contains("not a readable").all()
        assert not dataset.table["path"].str.contains("broken").any()
        assert len(dataset.images) == len(dataset.table) == 8 + 6


def test_skip_decodes_each_file_once_on_a_first_load_and_loads_the_same_images(tmp_path, monkeypatch):
    write_category(tmp_path / "set", [(48, 48)] * 8, unreadable=2)
    decoded_paths = []
    decode = ImageDecoder.decode

    def counting_decode(self, source):
        decoded_paths.append(str(source))
        return decode(self, source)

    monkeypatch.setattr(ImageDecoder, "decode", counting_decode)
    skipping = data.load_category(tmp_path / "set", "widgets", 32, cache_dir=tmp_path / "cache",
                                  on_bad_image="skip")
    assert len(decoded_paths) == len(set(decoded_paths)) == 8 + 6 + 2  # every file once, the broken ones too
    for broken in ("broken_0.png", "broken_1.png"):  # and read for the images they are not
        (tmp_path / "set" / "widgets" / "train" / "good" / broken).unlink()
    plain = data.load_category(tmp_path / "set", "widgets", 32)  # no cache: decoded afresh
    assert plain.table["path"].tolist() == skipping.table["path"].tolist()
    np.testing.assert_array_equal(plain.images, skipping.images)


def test_an_unknown_bad_image_policy_is_refused(tmp_path):
    write_category(tmp_path / "set", [(48, 48)] * 8)
    with pytest.raises(data.DatasetError, match="on_bad_image must be one of error, skip"):
        data.load_category(tmp_path / "set", "widgets", 32, on_bad_image="ignore")


@pytest.mark.parametrize("width, height", [(1, 1), (7, 40), (300, 4)])
def test_an_image_with_a_side_under_the_minimum_is_refused_saying_its_size(width, height, tmp_path):
    from defectlab.data.decoder import MIN_INPUT_SIDE

    path = tmp_path / "tiny.png"
    Image.new("RGB", (width, height), (120, 120, 120)).save(path)
    with pytest.raises(ImageDecodeError, match=f"the image is {width}x{height} pixels, smaller than the {MIN_INPUT_SIDE} pixels a side"):
        ImageDecoder(64).decode(path)
    Image.new("RGB", (MIN_INPUT_SIDE, MIN_INPUT_SIDE)).save(path)
    assert ImageDecoder(64).decode(path).shape == (64, 64, 3)
