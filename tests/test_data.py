"""Data layer: layout reader, cache, splits and every error case of issue 2."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from defectlab import data


def write_png(path, size=(40, 40), mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze()
    Image.fromarray(array, mode=None).convert(mode).save(path)
    return path


def make_category(root, name="widget", train=10, good=4, defects=(("scratch", 4), ("dent", 4)), masks=True):
    for index in range(train):
        write_png(root / name / "train" / "good" / f"{index:03d}.png", value=100 + index)
    for index in range(good):
        write_png(root / name / "test" / "good" / f"{index:03d}.png", value=90 + index)
    for defect_type, count in defects:
        for index in range(count):
            write_png(root / name / "test" / defect_type / f"{index:03d}.png", value=200)
            if masks:
                write_png(root / name / "ground_truth" / defect_type / f"{index:03d}_mask.png", mode="L", value=255)
    return root


@pytest.fixture
def small_root(tmp_path):
    return make_category(tmp_path / "mvtec")


def test_table_lists_every_image_with_labels_and_masks(small_root):
    table = data.read_category_table(small_root, "widget")
    assert len(table) == 10 + 4 + 8
    assert list(table.columns) == list(data.TABLE_COLUMNS)
    assert set(table.loc[table.label == 1, "defect_type"]) == {"scratch", "dent"}
    assert (table.loc[table.label == 0, "defect_type"] == "good").all()
    assert (table.loc[table.label == 1, "mask_path"] != "").all()
    assert (table.loc[table.label == 0, "mask_path"] == "").all()
    assert data.list_categories(small_root) == ["widget"]


def test_split_is_stratified_disjoint_and_seeded(small_root):
    table = data.read_category_table(small_root, "widget")
    first = data.split_category_table(table, seed=3)
    again = data.split_category_table(table, seed=3)
    other = data.split_category_table(table, seed=4)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
    counts = first.groupby(["defect_type", "split"]).size()
    for defect_type in ("scratch", "dent", "good"):
        assert counts[(defect_type, "val")] == counts[(defect_type, "test")] == 2
    assert (first["split"] == "threshold").sum() == 1  # ceil(10 * 0.1)
    assert (first["split"] == "train").sum() == 9
    # every image in exactly one split, train images never in val/test
    assert first.loc[first["split"].isin(["train", "threshold"]), "defect_type"].eq("good").all()


def test_images_are_cached_and_second_load_opens_no_file(small_root, tmp_path, monkeypatch):
    table = data.read_category_table(small_root, "widget")
    paths = table["path"].tolist()
    first = data.load_images(paths, 32, grayscale=False, cache_dir=tmp_path / "cache")
    assert first.shape == (len(paths), 32, 32, 3) and first.dtype == np.uint8

    def refuse_to_open(*args, **kwargs):
        raise AssertionError("the cache should have served this load")

    monkeypatch.setattr(Image, "open", refuse_to_open)
    second = data.load_images(paths, 32, grayscale=False, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first, second)


def test_cache_key_changes_when_a_file_changes(small_root, tmp_path):
    table = data.read_category_table(small_root, "widget")
    paths = table["path"].tolist()[:3]
    before = data.load_images(paths, 16, cache_dir=tmp_path / "cache")
    write_png(small_root / "widget" / "train" / "good" / "000.png", size=(40, 40), value=7)
    after = data.load_images(paths, 16, cache_dir=tmp_path / "cache")
    assert before[0].mean() != after[0].mean()
    assert after[0].mean() == pytest.approx(7, abs=1)


def test_grayscale_and_rgba_files_are_converted(tmp_path):
    gray = write_png(tmp_path / "gray.png", mode="L", value=50)
    rgba = write_png(tmp_path / "rgba.png", mode="RGBA", value=60)
    images = data.load_images([gray, rgba], 8, grayscale=False, cache_dir=tmp_path / "c")
    assert images.shape == (2, 8, 8, 3)
    assert images[0].mean() == pytest.approx(50, abs=1)
    single_channel = data.load_images([rgba], 8, grayscale=True, cache_dir=tmp_path / "c")
    assert single_channel.shape == (1, 8, 8, 1)


def test_masks_align_with_table(small_root, tmp_path):
    table = data.read_category_table(small_root, "widget")
    masks = data.load_masks(table, 16, cache_dir=tmp_path / "cache")
    assert masks.shape == (len(table), 16, 16)
    assert masks[table.label.to_numpy() == 1].all()
    assert not masks[table.label.to_numpy() == 0].any()


def test_missing_root_is_named(tmp_path):
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.resolve_data_root(tmp_path / "nowhere")


def test_unknown_category_lists_those_found(small_root):
    with pytest.raises(data.DatasetError, match=r"unknown category 'carpet'.*found: widget"):
        data.read_category_table(small_root, "carpet")


def test_category_without_train_good(small_root):
    shutil.rmtree(small_root / "widget" / "train" / "good")
    (small_root / "widget" / "train").mkdir(exist_ok=True)
    with pytest.raises(data.DatasetError, match="no train/good"):
        data.read_category_table(small_root, "widget")


def test_truncated_image_is_named_and_nothing_is_cached(small_root, tmp_path):
    broken = small_root / "widget" / "test" / "dent" / "001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    cache = tmp_path / "cache"
    with pytest.raises(data.DatasetError, match="001.png"):
        data.load_images(data.read_category_table(small_root, "widget")["path"].tolist(), 16, cache_dir=cache)
    assert not (cache / "arrays").exists() or not any((cache / "arrays").iterdir())


def test_mask_of_wrong_size_is_refused(small_root, tmp_path):
    write_png(small_root / "widget" / "ground_truth" / "dent" / "000_mask.png", size=(20, 20), mode="L")
    table = data.read_category_table(small_root, "widget")
    with pytest.raises(data.DatasetError, match=r"000_mask.png is 20x20 but its image .* is 40x40"):
        data.load_masks(table, 16, cache_dir=tmp_path / "cache")


def test_empty_split_is_refused(tmp_path):
    root = make_category(tmp_path / "mvtec", good=1)
    table = data.read_category_table(root, "widget")
    with pytest.raises(data.DatasetError, match="the val split has no good images"):
        data.split_category_table(table, category="widget")


def test_load_category_on_synthetic_data(tiny_dataset_root):
    dataset = data.load_category(tiny_dataset_root, "carpet", 32, grayscale=True, seed=0)
    assert dataset.images.shape[1:] == (32, 32, 1)
    assert len(dataset.images) == len(dataset.table)
    assert set(dataset.table["split"]) == {"train", "threshold", "val", "test"}
    assert dataset.dataset_name == tiny_dataset_root.name
