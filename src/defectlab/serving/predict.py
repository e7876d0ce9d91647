"""``defectlab predict``: score new images (a folder, a glob, a list) with a logged or registered detector.

`run_predict` is what the command (and ``mlflow run . -e predict``) calls::

    checks (out folder, input images, the detector) -> stream batches: decode (a background
    thread, one batch ahead) -> score (and maps) -> rows, overlays -> summary -> optional run

Every image is read by the detector's own `ImageDecoder` (its settings come
from the bundle), so a file scores here exactly as the same file sent to the
server or scored by ``evaluate``. Memory is bounded whatever the number of
images: at most three batches of decoded images exist at once (one being
decoded, one waiting, one being scored), rows are appended to the CSV files
as they come, and only the `SUMMARY_SIZE` most anomalous images are kept for
``summary.png``.

Written into ``out``:

- ``predictions.csv``: ``path``, ``score`` (higher = more anomalous),
  ``is_anomaly`` (``score > threshold``), ``threshold``, ``model_uri``,
  ``model_version`` (the registered version; empty for ``runs:/`` URIs and folders);
- ``errors.csv``: ``path``, ``reason`` of every file that could not be read
  (only the header when there were none);
- ``summary.png``: the most anomalous images as a ranked grid;
- ``overlays/<path>.png``, methods that make maps only: for each flagged
  image, the image beside its map over it with the threshold's contour; the
  path is the image's, relative to the input's folder (its suffix replaced
  by ``.png``, kept before it when it was another).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import heapq
import logging
import os
import queue
import shutil
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from defectlab import tracking
from defectlab.config import PredictConfig
from defectlab.data import IMAGE_SUFFIXES, ImageDecodeError, ImageDecoder
from defectlab.errors import DefectlabError
from defectlab.evaluation import figures
from defectlab.serving.detector import DefectDetector, load_detector
from defectlab.tracking.registry import version_of_model_uri

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
ERRORS_FILE = "errors.csv"
SUMMARY_FILE = "summary.png"
OVERLAY_FOLDER = "overlays"
PREDICTION_COLUMNS = ("path", "score", "is_anomaly", "threshold", "model_uri", "model_version")
ERROR_COLUMNS = ("path", "reason")
SUMMARY_SIZE = figures.RANKED_GRID_SIZE
GLOB_CHARACTERS = frozenset("*?[")


class PredictInputError(DefectlabError, ValueError):
    """The input holds no images, or the output folder cannot be used; raised before any scoring."""


@dataclass(frozen=True)
class PredictResult:
    """What a ``predict`` produced: counts, the folder written and the run (when logged)."""

    out_dir: Path
    images: int
    scored: int
    flagged: int
    errors: int
    threshold: float
    model_version: str
    run_id: str | None = None

    def summary(self) -> str:
        """The counts in one line (what ``defectlab predict`` prints)."""
        unreadable = f"; {self.errors} unreadable (listed in {ERRORS_FILE})" if self.errors else ""
        return (
            f"{self.flagged} of {self.scored} scored images flagged as anomalous "
            f"(score > {self.threshold:.4g}){unreadable}; results in {self.out_dir}"
        )


@dataclass(frozen=True)
class DecodedBatch:
    """One batch of input files: the decoded images and the files that could not be read."""

    paths: list[str]
    images: np.ndarray
    errors: list[tuple[str, str]]


# Input and output checks


def list_input_images(input_spec: str) -> list[str]:
    """The image files ``input_spec`` names, in a stable order.

    A folder: every file with an image suffix (`IMAGE_SUFFIXES`, any case)
    below it, sorted. A glob (``*``, ``?``, ``[``; ``**`` descends): every
    file it matches, sorted, whatever its suffix (a match that is not an image
    lands in ``errors.csv``). A text file without an image suffix: one path a
    line, in its order (blank lines and lines starting with ``#`` skipped,
    relative paths relative to the file's folder). An image file: itself.
    Raises `PredictInputError` when that is no file at all.
    """
    candidate = Path(input_spec).expanduser()
    if candidate.is_dir():
        # Every entry named like an image that is not a folder: a broken link or a link loop
        # (which is_file() calls neither file nor folder) is listed too, so that it lands in
        # errors.csv with its reason instead of vanishing.
        paths = sorted(
            str(path) for path in candidate.rglob("*")
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir()
        )
        where = f"the folder {input_spec} (searched recursively for {', '.join(IMAGE_SUFFIXES)})"
    elif candidate.is_file() and candidate.suffix.lower() in IMAGE_SUFFIXES:
        paths, where = [str(candidate)], input_spec
    elif candidate.is_file():
        paths = _paths_listed_in(candidate)
        where = f"the list file {input_spec}"
    elif GLOB_CHARACTERS & set(input_spec):
        paths = sorted(path for path in glob.glob(os.path.expanduser(input_spec), recursive=True)
                       if os.path.isfile(path))
        where = f"the glob {input_spec}"
    else:
        raise PredictInputError(
            f"input {input_spec} is neither a folder, an image file, a text file of image paths "
            "nor a glob matching files"
        )
    if not paths:
        raise PredictInputError(f"no images in {where}")
    return paths


def _paths_listed_in(list_file: Path) -> list[str]:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PredictInputError(f"cannot read the list of image paths {list_file}: {error}") from None
    entries = [line.strip() for line in lines]
    return [
        str(list_file.parent / Path(entry).expanduser())
        for entry in entries if entry and not entry.startswith("#")
    ]


def check_output_folder(out: str, overwrite: bool) -> Path:
    """``out`` as a path; `PredictInputError` if it is a file, or a non-empty folder without ``overwrite``."""
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise PredictInputError(f"out {out} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise PredictInputError(
            f"out {out} exists and is not empty; choose another folder or pass --overwrite "
            "(it replaces only predict's own files there)"
        )
    return out_dir


def clear_previous_results(out_dir: Path) -> None:
    """Remove what an earlier ``predict`` wrote into ``out_dir`` (nothing else there)."""
    for name in (PREDICTIONS_FILE, ERRORS_FILE, SUMMARY_FILE):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / OVERLAY_FOLDER, ignore_errors=True)


# Streaming


def decode_batch(paths: list[str], decoder: ImageDecoder) -> DecodedBatch:
    """Decode ``paths`` with the detector's decoder; unreadable files are listed with the reason."""
    images = decoder.empty_batch(len(paths))
    decoded_paths, errors = [], []
    for path in paths:
        try:
            images[len(decoded_paths)] = decoder.decode(path)
        except ImageDecodeError as error:
            errors.append((path, str(error)))
        else:
            decoded_paths.append(path)
    return DecodedBatch(decoded_paths, images[:len(decoded_paths)], errors)


def decoded_batches(paths: list[str], decoder: ImageDecoder, batch_size: int) -> Iterator[DecodedBatch]:
    """Batches (`DecodedBatch`) of ``batch_size`` files, decoded by a background thread one batch ahead.

    Decoding (Pillow, mostly outside the GIL) overlaps with the caller's
    scoring of the previous batch; the one-slot queue keeps the thread from
    running further ahead, so at most three batches of images exist at once.
    An error in the thread is raised here; leaving the loop early stops it.
    """
    ready: queue.Queue = queue.Queue(maxsize=1)
    stopped = threading.Event()
    finished = object()

    def hand_over(item) -> bool:
        while not stopped.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode_all() -> None:
        try:
            for start in range(0, len(paths), batch_size):
                if not hand_over(decode_batch(paths[start:start + batch_size], decoder)):
                    return
            hand_over(finished)
        except BaseException as error:  # handed to the consumer, which raises it
            hand_over(error)

    worker = threading.Thread(target=decode_all, name="defectlab-predict-decoder", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is finished:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
        worker.join()


@contextlib.contextmanager
def progress_reporter(total: int, every: int, stream=None):
    """``report(count)`` for images done: a progress bar on a terminal, else one log line per ``every`` images."""
    stream = stream or sys.stderr
    if stream.isatty():
        import click

        with click.progressbar(length=total, label="scoring images", file=stream) as bar:
            yield bar.update
        return
    done, next_line = 0, every

    def report(count: int) -> None:
        nonlocal done, next_line
        done += count
        if done >= next_line or done == total:
            logger.info("predict: %d of %d images done", done, total)
            next_line = (done // every + 1) * every

    yield report


# Output files


def overlay_path(out_dir: Path, image_path: str, input_root: str) -> Path:
    """``out/overlays/<image path relative to input_root>`` with a ``.png`` suffix."""
    relative = Path(os.path.relpath(os.path.abspath(image_path), input_root))
    name = relative.stem + ".png" if relative.suffix.lower() == ".png" else relative.name + ".png"
    return out_dir / OVERLAY_FOLDER / relative.parent / name


def input_root_of(paths: list[str]) -> str:
    """The deepest folder holding every input file (overlay paths are relative to it)."""
    return os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths])


def write_overlay(path: Path, image: np.ndarray, anomaly_map: np.ndarray, score: float,
                  threshold: float, title: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figures.anomaly_overlay_image(image, anomaly_map, threshold, f"{title}  score {score:.4g}")).save(
        path, format="PNG", compress_level=1,
    )


class OverlayWriter:
    """Writes overlays in one background thread while the next batch is scored.

    At most ``limit`` overlays wait (their images are copies, so the batch is
    not kept alive), which bounds the memory; an error in a write is raised
    by the next `submit` or by `close`.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.pending: list[Future] = []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlays")

    def submit(self, *arguments) -> None:
        self.pending.append(self.pool.submit(write_overlay, *arguments))
        while len(self.pending) > self.limit:
            self.pending.pop(0).result()

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True)


def summary_figure(top: list[tuple[float, int, str, np.ndarray]], threshold: float, scored: int):
    """The ranked grid of the most anomalous images (``top``: (score, -order, path, image), any order)."""
    ranked = sorted(top, key=lambda entry: entry[:2], reverse=True)
    images = np.stack([entry[3] for entry in ranked]) if ranked else np.zeros((0, 1, 1, 3), np.uint8)
    return figures.ranked_grid_figure(
        images, [entry[0] for entry in ranked], [Path(entry[2]).name for entry in ranked],
        f"Most anomalous of {scored} images", threshold=threshold,
    )


# The command


def run_predict(config: PredictConfig) -> PredictResult:
    """Score the images ``config.input`` names with ``config.model_uri``; write the results into ``config.out``.

    Every check comes before any scoring, each a one-line error: a non-empty
    ``out`` without ``overwrite`` or an input without images
    (`PredictInputError`), a URI or folder that is not a defectlab detector
    (`defectlab.serving.detector.DetectorUnavailableError`), and with ``log``
    the tracking server. Unreadable images do not stop the run: they are
    listed in ``errors.csv`` and counted in the result (the CLI exits 1 for
    them unless ``allow_errors``). With ``log``, the run (tag
    ``predicted_model``, and ``predicted_model_version`` for a registered
    one) holds the config as params, the counts as metrics and ``out``'s
    files as artifacts.
    """
    out_dir = check_output_folder(config.out, config.overwrite)
    paths = list_input_images(config.input)
    detector = load_detector(config.model_uri)
    model_version = version_of_model_uri(config.model_uri)
    if config.log:
        tracking.check_tracking_server()
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_results(out_dir)

    if not config.log:
        return _predict_into(out_dir, paths, detector, config, model_version)
    tags = {"predicted_model": config.model_uri, "predicted_model_version": model_version}
    with tracking.tracked_run(dataclasses.asdict(config), tags) as run:
        with tracking.Stopwatch() as watch:
            result = _predict_into(out_dir, paths, detector, config, model_version)
        tracking.log_metrics({
            "predicted_images": result.scored, "flagged_images": result.flagged,
            "unreadable_images": result.errors, "predict_seconds": watch.seconds,
        })
        tracking.log_artifacts(out_dir)
        return dataclasses.replace(result, run_id=run.info.run_id)


def _predict_into(out_dir: Path, paths: list[str], detector: DefectDetector, config: PredictConfig,
                  model_version: str) -> PredictResult:
    """The streaming loop of `run_predict`: every file once, rows and overlays written as they come."""
    threshold = detector.threshold
    makes_maps = detector.method.makes_maps
    input_root = input_root_of(paths)
    scored = flagged = errors = 0
    most_anomalous: list[tuple[float, int, str, np.ndarray]] = []
    overlays = OverlayWriter(limit=config.batch_size)
    with contextlib.closing(overlays), open(out_dir / PREDICTIONS_FILE, "w", newline="") as predictions_file, \
            open(out_dir / ERRORS_FILE, "w", newline="") as errors_file, \
            progress_reporter(len(paths), config.progress_every) as report:
        predictions = csv.writer(predictions_file)
        predictions.writerow(PREDICTION_COLUMNS)
        unreadable = csv.writer(errors_file)
        unreadable.writerow(ERROR_COLUMNS)
        for batch in decoded_batches(paths, detector.decoder, config.batch_size):
            unreadable.writerows(batch.errors)
            errors += len(batch.errors)
            if batch.paths:
                scores, anomaly_maps = detector.score(batch.images, with_maps=makes_maps)
                for index, (path, score) in enumerate(zip(batch.paths, scores)):
                    is_anomaly = bool(score > threshold)
                    predictions.writerow(
                        (path, float(score), is_anomaly, threshold, config.model_uri, model_version)
                    )
                    if is_anomaly and makes_maps:
                        overlays.submit(
                            overlay_path(out_dir, path, input_root), batch.images[index].copy(),
                            anomaly_maps[index].copy(), float(score), threshold, Path(path).name,
                        )
                    flagged += is_anomaly
                    # (score, -order) is unique: the heap never compares images, and ties keep the earlier file.
                    rank = (float(score), -(scored + index))
                    if len(most_anomalous) < SUMMARY_SIZE or rank > most_anomalous[0][:2]:
                        entry = (*rank, path, batch.images[index].copy())  # the batch is not kept
                        if len(most_anomalous) < SUMMARY_SIZE:
                            heapq.heappush(most_anomalous, entry)
                        else:
                            heapq.heapreplace(most_anomalous, entry)
                scored += len(batch.paths)
            report(len(batch.paths) + len(batch.errors))
    figures.save_figure(summary_figure(most_anomalous, threshold, scored), out_dir / SUMMARY_FILE)
    return PredictResult(
        out_dir=out_dir, images=len(paths), scored=scored, flagged=flagged, errors=errors,
        threshold=threshold, model_version=model_version,
    )
