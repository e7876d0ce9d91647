"""Quality of every method on real photographs: scikit-image's texture photos with defects drawn here.

The built-in dataset is rendered by ``defectlab.data.synthetic`` and the
training-time pseudo-defects come from ``defectlab.augment``; a method that
does well on the first may have learnt that renderer. This check uses neither:
the good images are crops of photographs that scikit-image ships
(``skimage.data.brick``, ``grass``, ``gravel``: 512 x 512 grayscale, bundled,
no download), and the defects are drawn by the small generator in this file,
with its own shapes and its own code (``skimage.draw`` rasterises them):

- ``hole``: a dark irregular polygon (a missing piece, its shadow);
- ``scratch``: a thin bright or dark polyline, 1 to 2 px wide;
- ``stain``: a low-contrast smooth ellipse, darker or lighter (the photos are
  grayscale, so a coloured stain would be the only colour in the image);
- ``crack``: a dark line that wanders and branches.

Each mask is the drawn region, pixel for pixel at the saved size. Train crops
come from the left half of each photo, test crops from the right half, so no
test pixel was seen in training; crops are 160 px resized to 128 px, some
flipped. Everything is drawn from ``--seed``: the same seed writes the same
files. Layout: MVTec AD's (``ROOT/CATEGORY/train/good``, ``test/good``,
``test/<defect>``, ``ground_truth/<defect>/<name>_mask.png``).

It then runs ``benchmarks/bench_quality.py`` on that folder (every variant
there, plus its PCA + LOF pixel baseline), writes its CSV and adds one more
baseline row per category: a raw-pixel patch nearest-neighbour search (no
network), for scale. Asserts nothing.

Needs scikit-image: ``pip install -e ".[bench]"``.

Run: ``python benchmarks/real_photos.py [--root /tmp/defectlab-real-photos] [--seed 0]
[--variants patch-none,patch-self,metric,metric-pseudo,ssim] [--categories brick,grass,gravel]
[--out benchmarks/results/quality-real-photos.csv] [--build-only | --raw-only] [--preview grid.png]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("brick", "grass", "gravel")
DEFECT_TYPES = ("hole", "scratch", "stain", "crack")
CROP = 160
SIZE = 128
COUNTS = {"train": 60, "test_good": 20, "per_defect": 10}
MARKER = ".real_photos"  # written into the root: only a folder holding it is ever deleted
DEFAULT_VARIANTS = "patch-none,patch-self,metric,metric-pseudo,ssim"


def load_photo(name: str) -> np.ndarray:
    """One bundled scikit-image photograph as 2-D uint8 (these three need no download)."""
    import skimage.data

    photo = getattr(skimage.data, name)()
    if photo.ndim == 3:
        photo = (photo[..., :3] @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
    return photo


def random_crops(photo_half: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random CROP x CROP crops of ``photo_half``, resized to SIZE, a random half flipped."""
    height, width = photo_half.shape
    crops = []
    for _ in range(count):
        top = int(rng.integers(0, height - CROP + 1))
        left = int(rng.integers(0, width - CROP + 1))
        crop = photo_half[top:top + CROP, left:left + CROP]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1, :]
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        crops.append(np.asarray(resized, dtype=np.uint8))
    return crops


# ---------------------------------------------------------------- defects
# Each returns (defective image, mask): float image in [0, 255], mask bool, same shape.

def _inside(rng: np.random.Generator, margin: int) -> np.ndarray:
    return rng.uniform(margin, SIZE - margin, size=2)


def _thick_line(mask: np.ndarray, start, end, width: int) -> None:
    """Set the pixels of a ``width`` px line from ``start`` to ``end`` (row, col) in ``mask``."""
    from skimage.draw import line

    for dr in range(width):
        for dc in range(width):
            rows, cols = line(int(round(start[0])) + dr, int(round(start[1])) + dc,
                              int(round(end[0])) + dr, int(round(end[1])) + dc)
            keep = (rows >= 0) & (rows < SIZE) & (cols >= 0) & (cols < SIZE)
            mask[rows[keep], cols[keep]] = True


def draw_hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark irregular polygon: radii around a centre vary vertex by vertex."""
    from skimage.draw import polygon

    centre = _inside(rng, 20)
    radius = rng.uniform(5, 12)
    vertices = int(rng.integers(7, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.55, 1.35, vertices)
    rows, cols = polygon(centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles), (SIZE, SIZE))
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[rows, cols] = True
    out = image.copy()
    depth = rng.uniform(8, 35)  # the floor of the hole, keeping a trace of the texture's shading
    out[mask] = depth + 0.15 * image[mask]
    return out, mask


def draw_scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin polyline of 2 to 4 nearly straight segments, bright or dark."""
    point = _inside(rng, 16)
    heading = rng.uniform(0, 2 * np.pi)
    width = int(rng.integers(1, 3))
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for _ in range(int(rng.integers(2, 5))):
        heading += rng.normal(0, 0.25)
        step = rng.uniform(8, 18)
        end = np.clip(point + step * np.array([np.sin(heading), np.cos(heading)]), 0, SIZE - 1)
        _thick_line(mask, point, end, width)
        point = end
    out = image.copy()
    target = 245.0 if rng.random() < 0.6 else 15.0
    out[mask] = 0.25 * image[mask] + 0.75 * target
    return out, mask


def draw_stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth low-contrast ellipse: strongest in the middle, still visible at its rim."""
    from scipy.ndimage import distance_transform_edt
    from skimage.draw import ellipse

    centre = _inside(rng, 24)
    radii = rng.uniform(7, 18, size=2)
    rows, cols = ellipse(centre[0], centre[1], radii[0], radii[1], (SIZE, SIZE), rotation=rng.uniform(0, np.pi))
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[rows, cols] = True
    # depth into the ellipse, 0 at its rim and 1 at its middle: the stain fades out towards the rim
    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][rows, cols]
    profile = 0.4 + 0.6 * np.sqrt(depth / depth.max())
    shift = rng.uniform(28, 45) * (1 if rng.random() < 0.5 else -1)
    out = image.copy()
    out[rows, cols] = image[rows, cols] + shift * profile
    return out, mask


def draw_crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark wandering line with one or two branches off it."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)

    def walk(start, heading, steps):
        point, path = np.asarray(start, dtype=float), []
        for _ in range(steps):
            heading += rng.normal(0, 0.45)
            end = np.clip(point + rng.uniform(3, 6) * np.array([np.sin(heading), np.cos(heading)]), 0, SIZE - 1)
            _thick_line(mask, point, end, 1 if rng.random() < 0.6 else 2)
            path.append(end)
            point = end
        return path, heading

    trunk, heading = walk(_inside(rng, 24), rng.uniform(0, 2 * np.pi), int(rng.integers(8, 14)))
    for _ in range(int(rng.integers(1, 3))):
        fork = trunk[int(rng.integers(1, len(trunk)))]
        walk(fork, heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2), int(rng.integers(3, 7)))
    out = image.copy()
    out[mask] = 0.3 * image[mask] + rng.uniform(0, 20)
    return out, mask


DRAW = {"hole": draw_hole, "scratch": draw_scratch, "stain": draw_stain, "crack": draw_crack}


def add_defect(image: np.ndarray, defect_type: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (uint8, SIZE x SIZE) with one defect drawn in, and its mask; redrawn until it shows."""
    for _ in range(20):
        out, mask = DRAW[defect_type](image.astype(np.float64), rng)
        out = np.clip(np.round(out), 0, 255).astype(np.uint8)
        changed = out != image
        if mask.sum() >= 12 and changed[mask].mean() >= 0.8:  # saturation may leave a few pixels as they were
            return out, mask
    raise RuntimeError(f"could not draw a visible {defect_type}")


# ---------------------------------------------------------------- the folder

def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def build(root: Path, seed: int = 0, categories=PHOTOS) -> Path:
    """Write the MVTec-layout folder under ``root`` (replacing an earlier one built here); returns root."""
    root = Path(root)
    if root.exists():
        if not (root / MARKER).is_file():
            raise SystemExit(f"{root} exists and was not built by this script; choose another --root")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text(f"seed {seed}\n")
    for index, name in enumerate(categories):
        rng = np.random.default_rng([seed, index])
        photo = load_photo(name)
        half = photo.shape[1] // 2
        train_half, test_half = photo[:, :half], photo[:, half:]
        category = root / name
        for number, crop in enumerate(random_crops(train_half, COUNTS["train"], rng)):
            _save(crop, category / "train" / "good" / f"{number:03d}.png")
        for number, crop in enumerate(random_crops(test_half, COUNTS["test_good"], rng)):
            _save(crop, category / "test" / "good" / f"{number:03d}.png")
        for defect_type in DEFECT_TYPES:
            for number, crop in enumerate(random_crops(test_half, COUNTS["per_defect"], rng)):
                defective, mask = add_defect(crop, defect_type, rng)
                _save(defective, category / "test" / defect_type / f"{number:03d}.png")
                _save(mask.astype(np.uint8) * 255, category / "ground_truth" / defect_type / f"{number:03d}_mask.png")
    return root


def preview(root: Path, path: Path, categories=PHOTOS) -> None:
    """One row per category: a train crop, a test good crop, then each defect type with its mask outlined."""
    tiles = []
    for name in categories:
        row = [np.asarray(Image.open(root / name / "train" / "good" / "000.png").convert("RGB")),
               np.asarray(Image.open(root / name / "test" / "good" / "000.png").convert("RGB"))]
        for defect_type in DEFECT_TYPES:
            image = np.asarray(Image.open(root / name / "test" / defect_type / "000.png").convert("RGB")).copy()
            mask = np.asarray(Image.open(root / name / "ground_truth" / defect_type / "000_mask.png")) > 127
            edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
            outlined = image.copy()
            outlined[edge] = (255, 0, 0)
            row += [image, outlined]
        tiles.append(np.concatenate(row, axis=1))
    _save(np.concatenate(tiles, axis=0), path)


RAW_LABEL = "Raw-pixel patch NN (64 px, 5x5 patches)"


def raw_patch_nn_row(root: Path, category: str, size: int = 64, patch: int = 5, bank_size: int = 40000) -> dict:
    """The simplest localising baseline, for scale: nearest train patch of raw gray pixels, no network.

    Every ``patch`` x ``patch`` window of a test image is scored by its distance
    to the nearest window of the train images (a seeded sample of ``bank_size``);
    the map puts that distance at the window's centre, the image score is the
    map's maximum. Same images, split and metrics as the runs (seed 0).
    """
    import time

    from numpy.lib.stride_tricks import sliding_window_view
    from sklearn.neighbors import NearestNeighbors

    from defectlab import data
    from defectlab.evaluation import metrics

    dataset = data.load_category(str(root), category, size, seed=0)
    gray = dataset.images.astype(np.float32).mean(axis=-1) / 255.0

    def windows(images: np.ndarray) -> np.ndarray:  # (n, size - patch + 1, same, patch * patch)
        view = sliding_window_view(images, (patch, patch), axis=(1, 2))
        return view.reshape(*view.shape[:3], patch * patch)

    start = time.perf_counter()
    bank = windows(gray[dataset.rows("train")]).reshape(-1, patch * patch)
    bank = bank[np.random.default_rng(0).choice(len(bank), min(len(bank), bank_size), replace=False)]
    search = NearestNeighbors(n_neighbors=1).fit(bank)
    seconds = time.perf_counter() - start

    def maps(rows: np.ndarray) -> np.ndarray:
        query = windows(gray[rows])
        distance = search.kneighbors(query.reshape(-1, patch * patch))[0].reshape(query.shape[:3])
        return np.pad(distance, ((0, 0), (patch // 2, patch // 2), (patch // 2, patch // 2)), mode="edge")

    test = dataset.rows("test")
    labels = dataset.table["label"].to_numpy()[test]
    test_maps = maps(test)
    scores = test_maps.reshape(len(test_maps), -1).max(axis=1)
    masks = data.load_masks(dataset.table[test], size)
    threshold = metrics.threshold_from_good_scores(maps(dataset.rows("threshold")).reshape(-1, size * size).max(1))
    tpr, tnr = metrics.rates_at_threshold(labels, scores, threshold)
    return {"test_image_auroc": metrics.image_auroc(labels, scores),
            "test_pixel_auroc": metrics.pixel_auroc(masks, test_maps), "test_aupro": metrics.aupro(masks, test_maps),
            "test_tpr_tnr_best": metrics.best_tpr_tnr(labels, scores)["tpr_tnr_best"],
            "test_tpr_at_val_threshold": tpr, "test_tnr_at_val_threshold": tnr, "train_seconds": seconds}


def add_raw_baseline(csv_path: Path, root: Path, categories: list[str]) -> None:
    """Insert the raw-pixel baseline's row after each category's PCA + LOF row of bench_quality's CSV; print it."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("bench_quality", Path(__file__).resolve().with_name("bench_quality.py"))
    bench_quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_quality)
    table = pd.read_csv(csv_path)
    table = table[table["method"] != RAW_LABEL]  # --raw-only on a CSV that has it already
    rows = []
    for category in categories:
        measured = raw_patch_nn_row(root, category)
        raw = {"category": category, "method": RAW_LABEL,
               **{bench_quality.COLUMNS[key]: measured.get(key, np.nan) for key in bench_quality.COLUMNS}}
        own = table[table["category"] == category].to_dict("records")
        rows += own[:1] + [raw] + own[1:]
    rows += table[~table["category"].isin(categories)].to_dict("records")
    result = pd.DataFrame(rows, columns=table.columns)
    result.to_csv(csv_path, index=False)
    print(f"\nwith the raw-pixel baseline ({csv_path}):\n")
    print(bench_quality.markdown_table(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "defectlab-real-photos"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", default=",".join(PHOTOS))
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--out", default="benchmarks/results/quality-real-photos.csv")
    parser.add_argument("--build-only", action="store_true", help="write the folder, train nothing")
    parser.add_argument("--preview", default="", help="also write a PNG grid of examples here")
    parser.add_argument("--raw-only", action="store_true",
                        help="only add the raw-pixel baseline to an existing --out CSV (no training)")
    arguments = parser.parse_args()

    try:
        import skimage  # noqa: F401
    except ImportError:
        print("real_photos: skipped, scikit-image is not installed (pip install -e \".[bench]\")", file=sys.stderr)
        return
    categories = [c for c in arguments.categories.split(",") if c]
    root = build(Path(arguments.root), arguments.seed, categories)
    print(f"built {root}: {len(categories)} categories, {COUNTS['train']} train good, "
          f"{COUNTS['test_good']} test good, {COUNTS['per_defect']} x {len(DEFECT_TYPES)} defects each",
          file=sys.stderr)
    if arguments.preview:
        preview(root, Path(arguments.preview), categories)
    if arguments.build_only:
        return
    bench_quality = Path(__file__).resolve().with_name("bench_quality.py")
    command = [sys.executable, str(bench_quality), "--data-dir", str(root), "--variants", arguments.variants,
               "--categories", ",".join(categories)]
    if arguments.out:
        command += ["--out", str(Path(arguments.out).resolve())]
    if not arguments.raw_only:
        returncode = subprocess.call(command)
        if returncode:
            raise SystemExit(returncode)
    if arguments.out:
        add_raw_baseline(Path(arguments.out).resolve(), root, categories)


if __name__ == "__main__":
    main()
