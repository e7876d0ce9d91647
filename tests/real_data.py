"""The real data and weights beside the project (``../shared``), for the tests that need them.

Tests read them from there and skip, with the reason, where they are absent;
nothing is copied into the repository. `magnetic_tile_slice` copies a small,
fixed slice of the Magnetic Tile Defect set into a temporary folder in MVTec
AD layout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
MAGNETIC_TILE = SHARED / "data" / "magnetic_tile"
MOBILENET_V2_FILE = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def require(path: Path) -> Path:
    """``path``, or skip the test saying what is missing."""
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared real data and weights sit beside the project in ../shared")
    return path


def magnetic_tile_slice(root: Path, train: int = 40, test_good: int = 16, per_defect: int = 4) -> Path:
    """The first ``train`` good train images, ``test_good`` good test images and ``per_defect``
    images of each defect type (with their masks), by file name, in MVTec layout under ``root``.
    Returns ``root`` (the category is ``magnetic_tile``)."""
    source = require(MAGNETIC_TILE)
    category = root / "magnetic_tile"

    def copy_first(folder: str, count: int) -> list[Path]:
        files = sorted((source / folder).iterdir())[:count]
        (category / folder).mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy2(file, category / folder / file.name)
        return files

    copy_first("train/good", train)
    copy_first("test/good", test_good)
    for defect in sorted(path.name for path in (source / "test").iterdir() if path.name != "good"):
        for image in copy_first(f"test/{defect}", per_defect):
            mask = source / "ground_truth" / defect / f"{image.stem}_mask.png"
            (category / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            shutil.copy2(mask, category / "ground_truth" / defect / mask.name)
    return root
