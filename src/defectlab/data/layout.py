"""MVTec AD data layer: layout reader, cached image loading, seeded splits.

Layout (see ``docs/reference.md``)::

    ROOT/CATEGORY/train/good/*.png
    ROOT/CATEGORY/test/good/*.png
    ROOT/CATEGORY/test/<defect_type>/*.png
    ROOT/CATEGORY/ground_truth/<defect_type>/<name>_mask.png   (optional)

Images are returned as ``uint8`` arrays of shape ``(n, size, size, channels)``
with ``channels`` 3 (RGB) or 1 (grayscale). Decoding and resizing the large
PNGs is the slow part of a run, so decoded arrays are cached on disk under
``<cache>/arrays/``, keyed by the file list, each file's size and mtime, the
requested size and colour mode: a second load of unchanged files decodes nothing.

Splits of one category (column ``split`` of the table):

- ``train``: train/good images used for fitting;
- ``threshold``: a held-out slice of train/good, for choosing a decision
  threshold from defect-free images only;
- ``val``: part of the test set, stratified by defect type, for tuning;
- ``test``: the rest of the test set, where final figures come from.

All four are disjoint and reproducible from the seed.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from defectlab.data.cache import cache_key, cached_array, default_cache_dir
from defectlab.data.decoder import BAD_IMAGE_POLICIES, ImageDecodeError, ImageDecoder, upright_size
from defectlab.data.synthetic import ensure_synthetic_dataset
from defectlab.data.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SYNTHETIC_DATA_DIR = "synthetic"
DEFAULT_VAL_FRACTION = 0.5
DEFAULT_THRESHOLD_FRACTION = 0.1
TABLE_COLUMNS = ("path", "label", "defect_type", "split", "mask_path")
SKIPPED_COLUMNS = ("path", "reason")
# The decoded images may take at most this share of the memory available when a run starts:
# the rest is for the network, its activations and the method's own state.
IMAGE_MEMORY_SHARE = 0.5
GIB = 1024 ** 3

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CategoryData:
    """One category, loaded and split.

    Attributes
    ----------
    root : Path
        Dataset root folder.
    category : str
        Category name.
    table : pandas.DataFrame
        One row per image, columns ``path, label, defect_type, split, mask_path``;
        ``label`` is 0 for good and 1 for defect images.
    images : numpy.ndarray of shape (n, size, size, channels), uint8
        Images aligned with the rows of ``table``.
    skipped : pandas.DataFrame
        Columns ``path, reason``: unreadable files left out (``on_bad_image="skip"``).
    on_bad_image : str
        The policy it was loaded with (`BAD_IMAGE_POLICIES`).
    """

    root: Path
    category: str
    table: pd.DataFrame
    images: np.ndarray
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(SKIPPED_COLUMNS)))
    on_bad_image: str = "error"

    def rows(self, split: str) -> np.ndarray:
        """Boolean mask of the table rows in ``split``."""
        return (self.table["split"] == split).to_numpy()

    def images_of(self, split: str) -> np.ndarray:
        return self.images[self.rows(split)]

    @property
    def dataset_name(self) -> str:
        return dataset_name(self.root)


def resolve_data_root(data_dir: str | os.PathLike) -> Path:
    """The dataset root for ``data_dir``: ``synthetic`` means the built-in generated set."""
    if str(data_dir) == SYNTHETIC_DATA_DIR:
        return ensure_synthetic_dataset()
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    return root.resolve()


def dataset_name(root: Path) -> str:
    """Tag value for the dataset: ``synthetic`` for the built-in set, else the folder's name."""
    try:
        Path(root).resolve().relative_to(default_cache_dir().resolve())
        return SYNTHETIC_DATA_DIR
    except ValueError:
        return Path(root).name


def list_categories(root: Path) -> list[str]:
    """Sorted names of the folders under ``root`` that hold a ``train`` or ``test`` folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist")
    return sorted(
        child.name
        for child in root.iterdir()
        if child.is_dir() and ((child / "train").is_dir() or (child / "test").is_dir())
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )


def read_category_table(root: Path, category: str) -> pd.DataFrame:
    """Table of every image of one category, before splitting.

    Returns
    -------
    pandas.DataFrame
        Columns ``path`` (str), ``label`` (0 good, 1 defect), ``defect_type``
        (``good`` or the folder name), ``split`` (``train`` or ``test``) and
        ``mask_path`` (str, empty where there is no mask).
    """
    root = Path(root)
    categories = list_categories(root)
    if category not in categories:
        found = ", ".join(categories) if categories else "none"
        raise DatasetError(f"unknown category {category!r} in {root}; categories found: {found}")
    category_dir = root / category
    train_good = category_dir / "train" / "good"
    if not train_good.is_dir():
        raise DatasetError(f"category {category!r} has no train/good folder: {train_good} is missing")

    rows = [
        {"path": str(path), "label": 0, "defect_type": "good", "split": "train", "mask_path": ""}
        for path in _image_files(train_good)
    ]
    if not rows:
        raise DatasetError(f"{train_good} holds no images")
    test_dir = category_dir / "test"
    defect_folders = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    for folder in defect_folders:
        defect_type = folder.name
        for path in _image_files(folder):
            mask_path = ""
            if defect_type != "good":
                candidate = category_dir / "ground_truth" / defect_type / f"{path.stem}_mask.png"
                mask_path = str(candidate) if candidate.is_file() else ""
            rows.append(
                {
                    "path": str(path),
                    "label": int(defect_type != "good"),
                    "defect_type": defect_type,
                    "split": "test",
                    "mask_path": mask_path,
                }
            )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def split_category_table(
    table: pd.DataFrame,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
    category: str = "",
) -> pd.DataFrame:
    """Assign every row to ``train``, ``threshold``, ``val`` or ``test``.

    The test set is split into ``val`` and ``test`` stratified by defect type
    (each type contributes ``floor(n * val_fraction)`` images to ``val``, at
    least one where the type has two or more); ``threshold`` takes
    ``ceil(n * threshold_fraction)`` train/good images (at least one). The
    shuffle is seeded, so the same seed always gives the same split.

    Raises
    ------
    DatasetError
        If any of the four splits would be empty, or ``val``/``test`` lacks
        good or defect images.
    """
    rng = np.random.default_rng(seed)
    split = table["split"].to_numpy(dtype=object).copy()

    train_index = np.flatnonzero(split == "train")
    n_threshold = max(1, int(np.ceil(len(train_index) * threshold_fraction)))
    if len(train_index) - n_threshold < 1:
        raise DatasetError(
            f"category {category!r}: train/good has {len(train_index)} image(s), too few to hold out "
            "a threshold slice and still train (need at least 2)"
        )
    split[rng.permutation(train_index)[:n_threshold]] = "threshold"

    defect_types = table["defect_type"].to_numpy()
    for defect_type in sorted(set(defect_types[split == "test"])):
        type_index = np.flatnonzero((split == "test") & (defect_types == defect_type))
        n_val = int(np.floor(len(type_index) * val_fraction))
        if len(type_index) >= 2:
            n_val = min(max(n_val, 1), len(type_index) - 1)
        split[rng.permutation(type_index)[:n_val]] = "val"

    result = table.copy()
    result["split"] = split
    labels = result["label"].to_numpy()
    for name in ("val", "test"):
        for label, kind in ((0, "good"), (1, "defect")):
            if not np.any((split == name) & (labels == label)):
                raise DatasetError(
                    f"category {category!r}: the {name} split has no {kind} images "
                    f"(the test set has {int(np.sum((table['split'] == 'test') & (table['label'] == label)))}); "
                    "add test images or lower the val fraction"
                )
    return result


def _decode_image(path: str, decoder: ImageDecoder) -> np.ndarray:
    try:
        return decoder.decode(path)
    except ImageDecodeError as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def _decode_mask(mask_path: str, image_path: str, decoder: ImageDecoder) -> np.ndarray:
    try:
        image_size, mask_size = upright_size(image_path), upright_size(mask_path)
        if mask_size != image_size:
            raise DatasetError(
                f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} "
                f"is {image_size[0]}x{image_size[1]}"
            )
        return decoder.decode_mask(mask_path)
    except ImageDecodeError as error:
        raise DatasetError(f"cannot read mask {mask_path}: {error}") from error


def _in_parallel(function, items: list) -> list:
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        return list(pool.map(function, items))


def load_images(
    paths: list[str],
    image_size: int,
    grayscale: bool = False,
    cache_dir: Path | None = None,
    resize: str = "stretch",
    decoded: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Decode ``paths`` through the one `ImageDecoder` to ``uint8`` arrays, via the on-disk cache.

    Grayscale, palette, RGBA, 16-bit and float files are converted to the
    requested mode; ``resize`` says how non-square images become square.
    ``decoded`` holds arrays of some of the paths already decoded with the
    same settings (by `unreadable_images`): on a cache miss they are used
    instead of decoding those files a second time.

    Returns
    -------
    numpy.ndarray of shape (len(paths), image_size, image_size, 1 if grayscale else 3)
    """
    paths = [str(path) for path in paths]
    decoder = ImageDecoder(image_size, grayscale, resize=resize)
    decoded = decoded or {}
    if not paths:
        return decoder.empty_batch()

    def image_of(path: str) -> np.ndarray:
        return decoded[path] if path in decoded else _decode_image(path, decoder)

    def decode_all() -> np.ndarray:
        return np.stack(_in_parallel(image_of, paths))

    key = cache_key("images", paths, image_size, grayscale, resize)
    return cached_array(key, cache_dir, decode_all)


def unreadable_images(paths: list[str], decoder: ImageDecoder, cache_dir: Path | None = None,
                      decoded: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The files of ``paths`` that ``decoder`` cannot read: columns ``path, reason``.

    Which files are readable is cached (keyed like the images), so only the
    unreadable ones are decoded again on the next run, for their reasons.
    When this call decodes the files (no cached answer), the arrays of the
    readable ones go into ``decoded`` (a dict, when given) for `load_images`,
    so that a first run decodes each file once.
    """
    paths = [str(path) for path in paths]
    reasons: dict[str, str] = {}

    def reason_of(path: str) -> str:
        try:
            image = decoder.decode(path)
        except ImageDecodeError as error:
            return str(error)
        if decoded is not None:
            decoded[path] = image
        return ""

    def readable_of_all() -> np.ndarray:
        reasons.update(zip(paths, _in_parallel(reason_of, paths)))
        return np.array([not reasons[path] for path in paths], dtype=bool)

    key = cache_key("readable", paths, decoder.image_size, decoder.grayscale, decoder.resize)
    readable = cached_array(key, cache_dir, readable_of_all)
    bad_paths = [path for path, ok in zip(paths, readable) if not ok]
    return pd.DataFrame(
        {"path": bad_paths,
         "reason": [reasons.get(path) or reason_of(path) or "unreadable" for path in bad_paths]},
        columns=list(SKIPPED_COLUMNS),
    )


def load_masks(
    table: pd.DataFrame, image_size: int, cache_dir: Path | None = None, resize: str = "stretch"
) -> np.ndarray:
    """Ground-truth masks aligned with ``table``: ``bool`` array ``(n, size, size)``.

    Rows without a mask (good images, or defects whose mask is absent) are all
    False. Masks go through the images' orientation and ``resize`` geometry. A
    mask whose size differs from its image raises `DatasetError`.
    """
    mask_paths = table["mask_path"].fillna("").astype(str).tolist()
    image_paths = table["path"].astype(str).tolist()
    present = [mask_path for mask_path in mask_paths if mask_path]
    decoder = ImageDecoder(image_size, grayscale=True, resize=resize)

    def decode_all() -> np.ndarray:
        masks = np.zeros((len(mask_paths), image_size, image_size), dtype=bool)
        for index, (mask_path, image_path) in enumerate(zip(mask_paths, image_paths)):
            if mask_path:
                masks[index] = _decode_mask(mask_path, image_path, decoder)
        return masks

    if not present:
        return np.zeros((len(mask_paths), image_size, image_size), dtype=bool)
    paired_image_paths = [image for mask, image in zip(mask_paths, image_paths) if mask]
    row_layout = "".join("1" if mask else "0" for mask in mask_paths)  # where the masks sit
    key = cache_key("masks" + row_layout, present + paired_image_paths, image_size, True, resize)
    return cached_array(key, cache_dir, decode_all)


# The datasets (file lists) and resize modes already warned about in this process.
_NON_SQUARE_NOTED: set[tuple[str, str]] = set()


def warn_about_non_square_images(paths: list[str], resize: str, where: str, cache_dir: Path | None = None) -> None:
    """One warning per dataset when ``stretch`` distorts non-square images, with the sizes seen.

    The sizes come from the files' headers, read once and then cached (keyed like the images).
    Once per process: loading the same files again (a study's next image size) says it at DEBUG.
    """
    def size_of(path: str) -> tuple[int, int]:
        try:
            return upright_size(path)
        except ImageDecodeError:
            return (-1, -1)  # the decoding that follows names the file and says why

    key = cache_key("sizes", paths, 0, False)
    all_sizes = cached_array(
        key, cache_dir, lambda: np.array(_in_parallel(size_of, paths), dtype=np.int64).reshape(-1, 2)
    )
    sizes = Counter((width, height) for width, height in all_sizes.tolist() if width >= 0)
    non_square = {size: count for size, count in sizes.items() if size[0] != size[1]}
    if not non_square:
        return
    seen = ", ".join(f"{width}x{height} ({count})" for (width, height), count in sizes.most_common(5))
    message = (
        f"{where}: {sum(non_square.values())} of {len(paths)} images are not square "
        f"(sizes seen: {seen}{', ...' if len(sizes) > 5 else ''})"
    )
    repeat = (key, resize) in _NON_SQUARE_NOTED
    _NON_SQUARE_NOTED.add((key, resize))
    if resize == "stretch":
        logger.log(logging.DEBUG if repeat else logging.WARNING,
                   "%s; resize=stretch distorts them, resize=center_crop or pad keeps their shape", message)
    else:
        logger.log(logging.DEBUG if repeat else logging.INFO, "%s; made square by resize=%s", message, resize)


def load_category(
    data_dir: str | os.PathLike,
    category: str,
    image_size: int,
    grayscale: bool = False,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
    cache_dir: Path | None = None,
    resize: str = "stretch",
    on_bad_image: str = "error",
) -> CategoryData:
    """Read, split and load one category (images through the cache).

    ``on_bad_image``: ``error`` (an unreadable file stops with its name and
    reason) or ``skip`` (unreadable files are left out before splitting and
    listed in `CategoryData.skipped`).
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DatasetError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
    root = resolve_data_root(data_dir)
    table = read_category_table(root, category)
    skipped = pd.DataFrame(columns=list(SKIPPED_COLUMNS))
    decoded: dict[str, np.ndarray] = {}  # filled when the readability check decodes (no cached answer)
    if on_bad_image == "skip":
        skipped = unreadable_images(table["path"].tolist(), ImageDecoder(image_size, grayscale, resize=resize),
                                    cache_dir, decoded)
        if len(skipped):
            logger.warning(
                "%s/%s: %d unreadable image(s) skipped (on_bad_image=skip), e.g. %s: %s",
                root.name, category, len(skipped), skipped["path"].iloc[0], skipped["reason"].iloc[0],
            )
            table = table[~table["path"].isin(skipped["path"])].reset_index(drop=True)
    check_images_fit_in_memory(len(table), image_size, grayscale, f"{root.name}/{category}")
    warn_about_non_square_images(table["path"].tolist(), resize, f"{root.name}/{category}", cache_dir)
    table = split_category_table(
        table, seed=seed, val_fraction=val_fraction, threshold_fraction=threshold_fraction,
        category=category,
    )
    images = load_images(table["path"].tolist(), image_size, grayscale, cache_dir, resize, decoded)
    return CategoryData(
        root=root, category=category, table=table, images=images, skipped=skipped, on_bad_image=on_bad_image
    )


def check_images_fit_in_memory(n_images: int, image_size: int, grayscale: bool, where: str) -> None:
    """`DatasetError` before any decoding when ``n_images`` decoded images would need more than
    `IMAGE_MEMORY_SHARE` of the memory available now (uint8, ``image_size`` square)."""
    import psutil

    needed = n_images * image_size * image_size * (1 if grayscale else 3)
    available = psutil.virtual_memory().available
    if needed > IMAGE_MEMORY_SHARE * available:
        raise DatasetError(
            f"{where}: {n_images} images at {image_size} px need {needed / GIB:.1f} GiB once decoded, more than "
            f"half of the {available / GIB:.1f} GiB of memory available; lower image_size"
        )


def good_train_paths_of_other_categories(root: Path, category: str) -> dict[str, list[str]]:
    """``{other category: its train/good image paths}`` for every other category that has them."""
    return {
        other: good_train_paths(root, other)
        for other in list_categories(root)
        if other != category and (Path(root) / other / "train" / "good").is_dir()
    }


def good_train_paths(root: Path, category: str) -> list[str]:
    """Paths of ``ROOT/CATEGORY/train/good`` images (the reference pool of other categories)."""
    folder = Path(root) / category / "train" / "good"
    if not folder.is_dir():
        raise DatasetError(f"category {category!r} has no train/good folder: {folder} is missing")
    return [str(path) for path in _image_files(folder)]


def image_paths_in(folder: str | os.PathLike) -> list[str]:
    """Image files directly in ``folder`` (for ``reference_dir``); the folder must exist."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"reference folder {folder} does not exist")
    return [str(path) for path in _image_files(folder)]
