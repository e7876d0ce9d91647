"""The built-in synthetic dataset: layout, counts, masks, determinism, caching and concurrency."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectlab.data import synthetic
from defectlab.data.synthetic import writer as synthetic_writer
from defectlab.data.synthetic import (
    CATEGORY_DEFECT_TYPES,
    OBJECT_CATEGORIES,
    TEXTURE_CATEGORIES,
    SyntheticSpec,
    default_cache_dir,
    ensure_synthetic_dataset,
    generate_dataset,
    render_sample,
    split_counts,
)

# Small enough that every category renders in well under a second.
TINY_SPEC = SyntheticSpec(image_size=64, count_scale=0.1)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def leftover_partials(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*") if ".partial" in path.name]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), TINY_SPEC)


# Names others code against


def test_categories_and_defect_types_are_mvtec_ad_s():
    assert CATEGORY_DEFECT_TYPES == {
        "carpet": ("color", "cut", "hole", "metal_contamination", "thread"),
        "leather": ("color", "cut", "fold", "glue", "poke"),
        "cable": (
            "bent_wire",
            "cable_swap",
            "combined",
            "cut_inner_insulation",
            "cut_outer_insulation",
            "missing_cable",
            "missing_wire",
            "poke_insulation",
        ),
        "capsule": ("crack", "faulty_imprint", "poke", "scratch", "squeeze"),
    }
    assert TEXTURE_CATEGORIES == ("carpet", "leather")
    assert OBJECT_CATEGORIES == ("cable", "capsule")


# Counts


@pytest.mark.parametrize(
    ("category", "train_good", "test_good", "defects"),
    [("carpet", 140, 14, 45), ("leather", 122, 16, 46), ("cable", 112, 29, 46), ("capsule", 110, 12, 55)],
)
def test_default_counts_are_about_half_of_mvtec_ad(category, train_good, test_good, defects):
    counts = split_counts(category)
    assert counts["train/good"] == train_good
    assert counts["test/good"] == test_good
    per_type = [counts[f"test/{defect_type}"] for defect_type in CATEGORY_DEFECT_TYPES[category]]
    assert sum(per_type) == defects
    assert max(per_type) - min(per_type) <= 1  # split evenly


def test_count_scale_keeps_at_least_one_image_per_folder():
    counts = split_counts("cable", SyntheticSpec(count_scale=0.01))
    assert list(counts) == ["train/good", "test/good"] + [f"test/{t}" for t in CATEGORY_DEFECT_TYPES["cable"]]
    assert all(count == 1 for count in counts.values())


def test_count_scale_multiplies_counts():
    counts = split_counts("carpet", SyntheticSpec(count_scale=2.0))
    assert counts["train/good"] == 280
    assert counts["test/good"] == 28
    assert sum(count for folder, count in counts.items() if folder.startswith("test/") and folder != "test/good") == 90


# Layout, images and masks


@pytest.mark.parametrize("category", list(CATEGORY_DEFECT_TYPES))
def test_layout_and_counts_match_the_spec(tiny_root, category):
    category_dir = tiny_root / category
    defect_types = CATEGORY_DEFECT_TYPES[category]
    assert sorted(p.name for p in (category_dir / "train").iterdir()) == ["good"]
    assert sorted(p.name for p in (category_dir / "test").iterdir()) == sorted(("good",) + defect_types)
    assert sorted(p.name for p in (category_dir / "ground_truth").iterdir()) == sorted(defect_types)
    for folder, count in split_counts(category, TINY_SPEC).items():
        names = sorted(p.name for p in (category_dir / folder).iterdir())
        assert names == [f"{index:03d}.png" for index in range(count)], folder


@pytest.mark.parametrize("category", list(CATEGORY_DEFECT_TYPES))
def test_images_are_rgb_at_the_spec_size(tiny_root, category):
    for path in (tiny_root / category).glob("*/*/*.png"):
        if path.parent.parent.name == "ground_truth":
            continue
        with Image.open(path) as image:
            assert image.mode == "RGB", path
            assert image.size == (TINY_SPEC.image_size, TINY_SPEC.image_size), path


@pytest.mark.parametrize("category", list(CATEGORY_DEFECT_TYPES))
def test_every_defect_image_has_a_non_empty_binary_mask_of_its_size(tiny_root, category):
    for defect_type in CATEGORY_DEFECT_TYPES[category]:
        images = sorted((tiny_root / category / "test" / defect_type).glob("*.png"))
        masks = sorted((tiny_root / category / "ground_truth" / defect_type).glob("*.png"))
        assert [p.name for p in masks] == [p.stem + "_mask.png" for p in images]
        for image_path, mask_path in zip(images, masks):
            with Image.open(image_path) as image, Image.open(mask_path) as mask:
                assert mask.mode == "L"
                assert mask.size == image.size
                values = np.asarray(mask)
            assert set(np.unique(values)) <= {0, 255}, mask_path
            assert values.any(), f"empty mask {mask_path}"
            assert not values.all(), f"mask covers the whole image {mask_path}"


def test_good_images_have_no_masks(tiny_root):
    for category in CATEGORY_DEFECT_TYPES:
        masks = list((tiny_root / category).rglob("*_mask.png"))
        assert len(masks) == sum(split_counts(category, TINY_SPEC)[f"test/{t}"] for t in CATEGORY_DEFECT_TYPES[category])
        assert not (tiny_root / category / "ground_truth" / "good").exists()


@pytest.mark.parametrize("category", list(CATEGORY_DEFECT_TYPES))
def test_mask_covers_exactly_where_the_defect_changed_the_image(category):
    for position, defect_type in enumerate(CATEGORY_DEFECT_TYPES[category]):
        for index in range(3):
            base_seed, defect_seed = [5, position, index, 0], [5, position, index, 1]
            good_image, no_mask = render_sample(category, 64, base_seed)
            defect_image, mask = render_sample(category, 64, base_seed, defect_type, defect_seed)
            assert no_mask is None
            assert mask.shape == good_image.shape[:2] and mask.dtype == np.uint8
            changed = (good_image != defect_image).any(axis=-1)
            inside = mask > 0
            assert not (changed & ~inside).any(), f"{category}/{defect_type}: pixels changed outside the mask"
            assert changed[inside].any(), f"{category}/{defect_type}: the mask marks an unchanged image"


def test_defects_range_from_subtle_to_obvious():
    # Mask areas of one defect type spread over an order of magnitude.
    areas = [
        (render_sample("carpet", 128, [9, index, 0], "color", [9, index, 1])[1] > 0).mean() for index in range(12)
    ]
    assert max(areas) > 8 * min(areas)


def test_good_images_vary():
    first, _ = render_sample("capsule", 64, [1, 0])
    second, _ = render_sample("capsule", 64, [1, 1])
    assert not np.array_equal(first, second)


# Determinism


def test_same_spec_gives_byte_identical_files(tiny_root, tmp_path):
    again = generate_dataset(tmp_path / "again", TINY_SPEC)
    assert all_files(again) == all_files(tiny_root)


def test_different_seed_gives_different_images(tiny_root, tmp_path):
    other = generate_dataset(tmp_path / "other", SyntheticSpec(image_size=64, count_scale=0.1, seed=1), ["carpet"])
    first, second = all_files(tiny_root / "carpet"), all_files(other / "carpet")
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first if name.startswith("train/"))


# Validation


def test_unknown_category_raises_naming_it_and_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'wood'.*carpet, leather, cable, capsule"):
        generate_dataset(tmp_path, TINY_SPEC, ["carpet", "wood"])
    assert not (tmp_path / "carpet").exists()  # checked before anything is written


def test_unknown_defect_type_raises():
    with pytest.raises(ValueError, match="hole"):
        render_sample("capsule", 64, [0], "hole", [1])


def test_defect_without_defect_seed_raises():
    with pytest.raises(ValueError, match="defect_seed"):
        render_sample("capsule", 64, [0], "crack")


def test_too_small_image_size_raises():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticSpec(image_size=8)


def test_negative_seed_raises():
    with pytest.raises(ValueError, match="seed"):
        SyntheticSpec(seed=-1)


def test_non_positive_count_scale_raises():
    with pytest.raises(ValueError, match="count_scale"):
        SyntheticSpec(count_scale=0)


# Atomic writing


def test_an_existing_category_is_kept(tmp_path):
    generate_dataset(tmp_path, TINY_SPEC, ["leather"])
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "leather").rglob("*")}
    generate_dataset(tmp_path, TINY_SPEC, ["leather"])
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "leather").rglob("*")} == before


def test_a_crash_leaves_no_half_category(tmp_path, monkeypatch):
    calls = []
    real_render = synthetic.render_sample

    def failing_render(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic_writer, "render_sample", failing_render)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_dataset(tmp_path, TINY_SPEC, ["carpet"])
    assert not (tmp_path / "carpet").exists()
    assert leftover_partials(tmp_path) == []


def test_two_processes_generating_one_folder_both_succeed(tmp_path, tiny_root):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=generate_dataset, args=(str(tmp_path), TINY_SPEC, ["carpet"])) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert all_files(tmp_path / "carpet") == all_files(tiny_root / "carpet")
    assert leftover_partials(tmp_path) == []


# Cache


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFECTLAB_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"


def test_default_cache_dir_without_the_environment_is_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("DEFECTLAB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "defectlab"


def test_ensure_generates_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFECTLAB_CACHE", str(tmp_path))
    root = ensure_synthetic_dataset(TINY_SPEC)
    assert root.parent == tmp_path and root.name.startswith("synthetic-")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(CATEGORY_DEFECT_TYPES)
    recorded = json.loads((root / ".complete").read_text())
    assert recorded["generator_version"] == synthetic.GENERATOR_VERSION
    assert recorded["image_size"] == TINY_SPEC.image_size

    def must_not_generate(*args, **kwargs):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr(synthetic_writer, "generate_dataset", must_not_generate)
    assert ensure_synthetic_dataset(TINY_SPEC) == root


def test_ensure_keys_the_cache_on_the_spec(tmp_path):
    first = ensure_synthetic_dataset(TINY_SPEC, cache_dir=tmp_path)
    second = ensure_synthetic_dataset(SyntheticSpec(image_size=64, count_scale=0.1, seed=3), cache_dir=tmp_path)
    assert first != second
    assert (first / ".complete").is_file() and (second / ".complete").is_file()


def test_ensure_finishes_an_interrupted_generation(tmp_path):
    # A process killed after some categories were renamed into place, while
    # writing the next one, before the marker.
    root = ensure_synthetic_dataset(TINY_SPEC, cache_dir=tmp_path)
    (root / ".complete").unlink()
    shutil.rmtree(root / "capsule")
    (root / "cable").rename(root / ".cable.partial-killed")
    assert ensure_synthetic_dataset(TINY_SPEC, cache_dir=tmp_path) == root
    assert (root / ".complete").is_file()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(CATEGORY_DEFECT_TYPES)
    assert leftover_partials(tmp_path) == []


def test_two_processes_ensuring_at_once_make_one_complete_dataset(tmp_path, tiny_root):
    cache_dir = tmp_path / "fresh-cache"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=ensure_synthetic_dataset, args=(TINY_SPEC, str(cache_dir))) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    roots = [path for path in cache_dir.iterdir() if path.is_dir()]
    assert len(roots) == 1
    assert (roots[0] / ".complete").is_file()
    assert leftover_partials(cache_dir) == []
    for category in CATEGORY_DEFECT_TYPES:
        assert all_files(roots[0] / category) == all_files(tiny_root / category)
