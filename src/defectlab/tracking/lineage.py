"""Data lineage: the exact images a run used, as MLflow dataset inputs, and the files it skipped.

Each split a run reads is logged with ``mlflow.log_input`` under its context
(``train``, ``threshold``, ``val``, ``test``): name ``<dataset>/<category>``,
source the category folder, and a digest over the split's file list with each
file's size and modification time, so two runs on different data show
different digests in the MLflow UI's dataset column. The whole split table is
logged as ``data/splits.csv``; files left out by ``on_bad_image=skip`` as
``data/skipped_images.csv`` with the count ``skipped_images``.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import mlflow
import mlflow.data
import pandas as pd

from defectlab.tracking.artifacts import log_table
from defectlab.tracking.runs import log_metrics

TRAINING_CONTEXTS = ("train", "threshold", "val", "test")
EVALUATION_CONTEXTS = ("threshold", "val", "test")
SPLITS_ARTIFACT = "data/splits.csv"
SKIPPED_ARTIFACT = "data/skipped_images.csv"
DIGEST_LENGTH = 16  # MLflow stores at most 36 characters


def split_files_table(table: pd.DataFrame) -> pd.DataFrame:
    """The split table with each file's ``size_bytes`` and ``mtime_ns`` (what the digest covers)."""
    stats = [os.stat(path) for path in table["path"]]
    files = table.reset_index(drop=True).copy()
    files["size_bytes"] = [stat.st_size for stat in stats]
    files["mtime_ns"] = [stat.st_mtime_ns for stat in stats]
    return files


def files_digest(files: pd.DataFrame) -> str:
    """A digest of file paths, sizes and mtimes (row order ignored)."""
    lines = sorted(
        f"{path}\t{size}\t{mtime}"
        for path, size, mtime in zip(files["path"], files["size_bytes"], files["mtime_ns"])
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:DIGEST_LENGTH]


def log_dataset_inputs(dataset, contexts: tuple[str, ...] = TRAINING_CONTEXTS) -> None:
    """Log one MLflow dataset input per split of ``dataset`` (a `CategoryData`), plus the split table.

    Also logs the unreadable files the dataset skipped, if it was loaded with
    ``on_bad_image=skip`` (the count even when it is 0).
    """
    files = split_files_table(dataset.table)
    name = f"{dataset.dataset_name}/{dataset.category}"
    source = str(dataset.root / dataset.category)
    for context in contexts:
        split_files = files[files["split"] == context].reset_index(drop=True)
        with warnings.catch_warnings():
            # MLflow registers its local-folder source twice and then warns that a folder
            # "can be interpreted in multiple ways"; the schema hint is about serving models,
            # not about a file table: both are noise in every run's output.
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
            warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
            split_dataset = mlflow.data.from_pandas(
                split_files, source=source, name=name, targets="label", digest=files_digest(split_files)
            )
            mlflow.log_input(split_dataset, context=context)
    log_table(files, SPLITS_ARTIFACT)
    if dataset.on_bad_image == "skip":
        log_metrics({"skipped_images": len(dataset.skipped)})
        if len(dataset.skipped):
            log_table(dataset.skipped, SKIPPED_ARTIFACT)
