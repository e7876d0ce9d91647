"""Download of the real MVTec AD: resumable, SHA-256 checked, extracted safely.

The official archive is one ``.tar.xz`` of all fifteen categories (about
5.3 GB). The download goes to ``<to>/mvtec_anomaly_detection.tar.xz.part``
and resumes from there with an HTTP ``Range`` request; only a file whose
SHA-256 matches becomes the archive, a mismatch deletes the partial file.
Extraction writes each category into a temporary folder and renames it into
place, so an interrupted extraction leaves no half category.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from defectlab.errors import DefectlabError

MVTEC_AD_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
    "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
MVTEC_AD_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 30


class DownloadError(DefectlabError, RuntimeError):
    """The archive could not be fetched, verified or extracted."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, destination: Path, sha256: str) -> Path:
    """Download ``url`` to ``destination``, resuming a ``.part`` file, and verify its SHA-256.

    Raises
    ------
    DownloadError
        Unreachable host (one line, e.g. when offline), HTTP error, or a
        checksum mismatch (the partial file is deleted and the message says so).
    """
    destination = Path(destination)
    if destination.is_file() and sha256_of(destination) == sha256.lower():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    already = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url)
    if already:
        request.add_header("Range", f"bytes={already}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            resumed = already and response.status == 206
            with open(partial, "ab" if resumed else "wb") as handle:
                shutil.copyfileobj(response, handle, CHUNK_BYTES)
    except urllib.error.HTTPError as error:
        if error.code == 416 and already:  # the .part file is already complete
            pass
        else:
            raise DownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"cannot download {url}: {reason} (offline? the partial file {partial} is kept; "
            "run the same command again to resume)"
        ) from None
    actual = sha256_of(partial)
    if actual != sha256.lower():
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {url}: expected SHA-256 {sha256.lower()}, got {actual}; "
            f"the partial file {partial} was deleted"
        )
    os.replace(partial, destination)
    return destination


def _category_of(member_name: str) -> tuple[str, Path] | None:
    """(category, its folder in the archive) for members under ``[prefix/]CATEGORY/{train,test,ground_truth}``."""
    parts = Path(member_name).parts
    for index, part in enumerate(parts[1:], start=1):
        if part in ("train", "test", "ground_truth"):
            return parts[index - 1], Path(*parts[:index])
    return None


def extract_categories(archive: Path, to: Path, categories: list[str] | None = None) -> list[str]:
    """Extract the category folders of an MVTec AD archive into ``to``; returns the categories written.

    Each category goes to a temporary folder first and is renamed into place.
    Members that would leave the target (absolute paths, ``..``, links) are refused.
    """
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    wanted = set(categories or [])
    try:
        with tarfile.open(archive) as tar:
            members_by_category: dict[str, list[tarfile.TarInfo]] = {}
            folder_of_category: dict[str, Path] = {}
            for member in tar.getmembers():
                located = _category_of(member.name)
                if located is None:
                    continue
                category, folder_of_category[category] = located
                if wanted and category not in wanted:
                    continue
                members_by_category.setdefault(category, []).append(member)
            missing = wanted - set(members_by_category)
            if missing:
                raise DownloadError(
                    f"categories not in {archive}: {', '.join(sorted(missing))}; "
                    f"it holds {', '.join(sorted(members_by_category)) or 'no MVTec AD category'}"
                )
            written = []
            for category, members in sorted(members_by_category.items()):
                staging = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=to))
                try:
                    tar.extractall(staging, members=members, filter="data")
                    source = staging / folder_of_category[category]
                    target = to / category
                    if target.exists():
                        shutil.rmtree(target)
                    os.replace(source, target)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                written.append(category)
            return written
    except (tarfile.TarError, OSError) as error:
        raise DownloadError(f"cannot extract {archive}: {error}") from None


def download_mvtec_ad(
    to: str | os.PathLike,
    categories: list[str] | None = None,
    url: str = MVTEC_AD_URL,
    sha256: str = MVTEC_AD_SHA256,
) -> list[str]:
    """Download (resumably), verify and extract MVTec AD into ``to``; returns the categories extracted."""
    to = Path(to).expanduser()
    archive_name = Path(urlparse(url).path).name or ARCHIVE_NAME
    archive = fetch(url, to / archive_name, sha256)
    return extract_categories(archive, to, categories)
