"""The on-disk cache of decoded arrays, under ``$DEFECTLAB_CACHE`` (default ``~/.cache/defectlab``).

Entries are keyed by the file list, each file's size and mtime, and the
decoding settings, and written atomically, so a reader never sees half a file
and a changed file is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from defectlab.data.errors import DatasetError

# 2: 16-bit and float images scaled, EXIF orientation applied, `resize` in the key.
CACHE_FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    """``$DEFECTLAB_CACHE`` or ``~/.cache/defectlab``."""
    return Path(os.environ.get("DEFECTLAB_CACHE") or Path.home() / ".cache" / "defectlab")


def file_fingerprint(paths: list[str]) -> list[tuple[str, int, int]]:
    fingerprint = []
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError as error:
            raise DatasetError(f"image file {path} does not exist") from error
        fingerprint.append((str(path), stat.st_size, stat.st_mtime_ns))
    return fingerprint


def cache_key(kind: str, paths: list[str], image_size: int, grayscale: bool, resize: str = "stretch") -> str:
    payload = json.dumps(
        {
            "version": CACHE_FORMAT_VERSION,
            "kind": kind,
            "files": file_fingerprint(paths),
            "image_size": image_size,
            "grayscale": grayscale,
            "resize": resize,
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cached_array(key: str, cache_dir: Path | None, build) -> np.ndarray:
    """Load ``<cache>/arrays/<key>.npy`` or build it, writing atomically so no reader sees half a file."""
    cache_path = Path(cache_dir or default_cache_dir()) / "arrays" / f"{key}.npy"
    if cache_path.is_file():
        try:
            return np.load(cache_path, allow_pickle=False)
        except (OSError, ValueError):
            cache_path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
    array = build()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_path.parent, suffix=".tmp", delete=False) as handle:
        temporary_path = Path(handle.name)
        try:
            np.save(handle, array, allow_pickle=False)
        except BaseException:
            handle.close()
            temporary_path.unlink(missing_ok=True)
            raise
    os.replace(temporary_path, cache_path)
    return array
