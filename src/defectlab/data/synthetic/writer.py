"""Writing and caching the dataset: the spec, split counts, the MVTec AD folders and the cache.

``SyntheticSpec`` holds everything that decides the pixels and
``split_counts`` how many images each folder gets; ``generate_dataset`` writes
categories atomically in MVTec AD layout, and ``ensure_synthetic_dataset``
generates the dataset for a spec once into the cache, keyed on the spec and
``GENERATOR_VERSION``, safely across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from defectlab.data.cache import default_cache_dir
from defectlab.data.synthetic.categories import CATEGORY_DEFECT_TYPES, _check_category
from defectlab.data.synthetic.sample import render_sample


# Bump whenever a change alters any pixel, so cached datasets made by an older
# generator are not reused under the same name.
GENERATOR_VERSION = "2"


# (train good, test good, test defects over all types) at count_scale 1: about
# half of MVTec AD, enough for the article's methods while staying quick to make.
_DEFAULT_COUNTS: dict[str, tuple[int, int, int]] = {
    "carpet": (140, 14, 45),
    "leather": (122, 16, 46),
    "cable": (112, 29, 46),
    "capsule": (110, 12, 55),
}

_COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that decides the pixels of a synthetic dataset.

    Parameters
    ----------
    image_size : int, default 256
        Width and height of every image and mask, in pixels.
    seed : int, default 0
        Root of every random draw; a different seed gives a different dataset.
    count_scale : float, default 1.0
        Multiplies the per-category image counts (about half of MVTec AD),
        keeping at least one image per split and defect type, so tests can
        make tiny sets.
    """

    image_size: int = 256
    seed: int = 0
    count_scale: float = 1.0

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if not self.count_scale > 0:
            raise ValueError(f"count_scale must be positive, got {self.count_scale}")


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even, which makes counts jump oddly
    # as count_scale changes.
    return int(math.floor(value + 0.5))


def split_counts(category: str, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, int]:
    """How many images each folder of a category holds, without rendering any.

    Parameters
    ----------
    category : str
        One of ``CATEGORY_DEFECT_TYPES``.
    spec : SyntheticSpec
        Only ``count_scale`` matters here.

    Returns
    -------
    dict of str to int
        Keys ``"train/good"``, ``"test/good"`` and ``"test/<defect_type>"`` for
        each defect type of the category, in that order. Defects are split
        evenly over the types, the first types taking any remainder.
    """
    _check_category(category)
    train_good, test_good, defects = _DEFAULT_COUNTS[category]
    defect_types = CATEGORY_DEFECT_TYPES[category]
    total_defects = _round_half_up(defects * spec.count_scale)
    per_type, remainder = divmod(total_defects, len(defect_types))
    counts = {
        "train/good": max(1, _round_half_up(train_good * spec.count_scale)),
        "test/good": max(1, _round_half_up(test_good * spec.count_scale)),
    }
    for position, defect_type in enumerate(defect_types):
        counts[f"test/{defect_type}"] = max(1, per_type + (1 if position < remainder else 0))
    return counts


def _stable_id(name: str) -> int:
    # hash() of a str changes between processes; crc32 does not.
    return zlib.crc32(name.encode("utf-8"))


def _save_png(array: np.ndarray, path: Path) -> None:
    # Sensor noise barely compresses; a light level saves a third of the time
    # for files about a tenth larger.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_category(category_dir: Path, category: str, spec: SyntheticSpec) -> None:
    category_id = _stable_id(category)
    for folder, count in split_counts(category, spec).items():
        split, kind = folder.split("/")
        defect_type = None if kind == "good" else kind
        image_dir = category_dir / split / kind
        image_dir.mkdir(parents=True)
        if defect_type is not None:
            mask_dir = category_dir / "ground_truth" / defect_type
            mask_dir.mkdir(parents=True)
        digits = max(3, len(str(count - 1)))
        for index in range(count):
            seed = [spec.seed, category_id, _stable_id(folder), index]
            image, mask = render_sample(
                category,
                spec.image_size,
                base_seed=seed + [0],
                defect_type=defect_type,
                defect_seed=seed + [1],
            )
            name = f"{index:0{digits}d}"
            _save_png(image, image_dir / f"{name}.png")
            if mask is not None:
                _save_png(mask, mask_dir / f"{name}_mask.png")


def generate_dataset(
    out_dir: str | os.PathLike,
    spec: SyntheticSpec = SyntheticSpec(),
    categories: Sequence[str] | None = None,
) -> Path:
    """Write synthetic categories in MVTec AD layout under ``out_dir``.

    Each category is built in a hidden temporary folder beside its target and
    renamed into place only when complete, so a crash never leaves half a
    category and concurrent writers never tear files. A category folder that
    already exists is kept as it is.

    Parameters
    ----------
    out_dir : str or path-like
        Dataset root; created if missing.
    spec : SyntheticSpec
        Image size, seed and count scale.
    categories : sequence of str or None
        Categories to write; None writes all four.

    Returns
    -------
    Path
        ``out_dir``, holding ``CATEGORY/train/good``, ``CATEGORY/test/<type>``
        and ``CATEGORY/ground_truth/<defect_type>/<name>_mask.png``.

    Raises
    ------
    ValueError
        If a category is unknown (checked before anything is written).
    """
    categories = tuple(CATEGORY_DEFECT_TYPES) if categories is None else tuple(categories)
    for category in categories:
        _check_category(category)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for category in categories:
        target = out_dir / category
        if target.exists():
            continue
        staging = Path(tempfile.mkdtemp(prefix=f".{category}.partial-", dir=out_dir))
        try:
            _write_category(staging, category, spec)
            try:
                os.rename(staging, target)
            except OSError:
                # Another writer finished the same category first; theirs is complete.
                if not target.is_dir():
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _spec_fingerprint(spec: SyntheticSpec) -> str:
    described = json.dumps({**asdict(spec), "generator_version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(described.encode("utf-8")).hexdigest()[:12]


def ensure_synthetic_dataset(spec: SyntheticSpec = SyntheticSpec(), cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the root of the cached synthetic dataset for ``spec``, generating it once.

    Parameters
    ----------
    spec : SyntheticSpec
        What to generate.
    cache_dir : str or path-like or None
        Cache folder; None uses :func:`default_cache_dir`.

    Returns
    -------
    Path
        ``cache_dir / "synthetic-<hash>"`` holding all four categories, where the
        hash covers ``spec`` and ``GENERATOR_VERSION``. Its ``.complete`` marker,
        written last, records both.

    Notes
    -----
    Safe when several processes call it at once: they serialise on an
    ``fcntl.flock`` of a lock file beside the root, and whoever comes second
    finds the marker and returns without generating.
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    root = cache_dir / f"synthetic-{_spec_fingerprint(spec)}"
    marker = root / _COMPLETE_MARKER
    if marker.is_file():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{root.name}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if not marker.is_file():
                # Under the lock nobody else writes here, so staging folders
                # left are a killed process's: remove them before retrying.
                for stale in root.glob(".*.partial-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                generate_dataset(root, spec)
                described = json.dumps(
                    {**asdict(spec), "generator_version": GENERATOR_VERSION}, indent=2, sort_keys=True
                )
                partial_marker = root / f"{_COMPLETE_MARKER}.partial"
                partial_marker.write_text(described + "\n")
                os.replace(partial_marker, marker)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return root
