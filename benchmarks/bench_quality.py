"""Quality of every method, side by side, at CPU-sized settings: one table per dataset.

Each variant below is one tracked training run (a throwaway MLflow store) on
every category of the dataset; the PCA + LOF pixel baseline is scored on the
same test split. Columns: image AUROC, pixel AUROC, AUPRO, TPR+TNR at the best
(oracle) threshold, TPR/TNR at the threshold chosen from good images only, and
fit seconds (training plus building the bank). Writes a Markdown table to
stdout and a CSV next to ``--out``; asserts nothing.

Run: ``python benchmarks/bench_quality.py [--data-dir synthetic] [--variants patch-none,metric-pseudo]
[--categories carpet,leather] [--out benchmarks/results/quality-synthetic.csv]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from defectlab import data  # noqa: E402
from defectlab.methods.metric import MetricConfig  # noqa: E402
from defectlab.methods.patch import PatchConfig  # noqa: E402
from defectlab.methods.ssim import SSIMConfig  # noqa: E402

# Name -> (label, config factory): every setting is written here, so the table says what produced it.
VARIANTS = {
    "patch-none": ("Patch, random backbone (64 px)", lambda category, data_dir: PatchConfig(
        category=category, data_dir=data_dir, image_size=64, backbone="none")),
    "patch-self": ("Patch, self-trained backbone (64 px, 5 epochs)", lambda category, data_dir: PatchConfig(
        category=category, data_dir=data_dir, image_size=64, backbone="self", self_epochs=5)),
    "patch-pixels": ("Patch, raw-pixel windows (64 px)", lambda category, data_dir: PatchConfig(
        category=category, data_dir=data_dir, image_size=64, backbone="pixels")),
    "metric": ("L2-softmax, weights=none (96 px, 10 epochs)", lambda category, data_dir: MetricConfig(
        category=category, data_dir=data_dir, image_size=96, epochs=10, batch_size=32, weights="none")),
    "metric-pseudo": ("L2-softmax + 256 pseudo-defects (96 px, 10 epochs)", lambda category, data_dir: MetricConfig(
        category=category, data_dir=data_dir, image_size=96, epochs=10, batch_size=32, weights="none",
        pseudo_defects=256)),
    "ssim": ("SSIM AE (64 px, 10 epochs x 1000)", lambda category, data_dir: SSIMConfig(
        category=category, data_dir=data_dir, image_size=64, epochs=10, batch_size=32, augment_to=1000,
        latent_dim=100)),
}
COLUMNS = {
    "test_image_auroc": "image AUROC",
    "test_pixel_auroc": "pixel AUROC",
    "test_aupro": "AUPRO",
    "test_tpr_tnr_best": "TPR+TNR best",
    "test_tpr_at_val_threshold": "TPR good-only thr.",
    "test_tnr_at_val_threshold": "TNR good-only thr.",
    "train_seconds": "fit s",
}


def baseline_row(data_dir: str, category: str) -> dict:
    """PCA + LOF on 64 px pixels, scored on the same test split as the runs."""
    from defectlab.evaluation import metrics
    from defectlab.methods.scorers import PCALOFScorer

    dataset = data.load_category(data_dir, category, 64, seed=0)
    start = time.perf_counter()
    scorer = PCALOFScorer(20, 20).fit(dataset.images_of("train"))
    seconds = time.perf_counter() - start
    test = dataset.rows("test")
    labels = dataset.table["label"].to_numpy()[test]
    scores = scorer.anomaly_score(dataset.images[test])
    return {"test_image_auroc": metrics.image_auroc(labels, scores),
            "test_tpr_tnr_best": metrics.best_tpr_tnr(labels, scores)["tpr_tnr_best"], "train_seconds": seconds}


def markdown_table(table: pd.DataFrame) -> str:
    """A Markdown table, numbers to three decimals, missing values as a dash."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "–" if np.isnan(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="synthetic")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--categories", default="", help="comma-separated; default every category")
    parser.add_argument("--out", default="")
    arguments = parser.parse_args()

    import mlflow

    from defectlab.runner import run_training

    out = Path(arguments.out).resolve() if arguments.out else None
    root = data.resolve_data_root(arguments.data_dir)
    categories = [c for c in arguments.categories.split(",") if c] or data.list_categories(root)
    rows = []
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{Path(store) / 'mlflow.db'}")
        os.chdir(store)
        for category in categories:
            rows.append({"category": category, "method": "PCA + LOF pixels (64 px)",
                         **baseline_row(str(root), category)})
            for name in arguments.variants.split(","):
                label, make_config = VARIANTS[name]
                result = run_training(make_config(category, str(root)))
                rows.append({"category": category, "method": label,
                             **{key: result.metrics.get(key, np.nan) for key in COLUMNS}})
                if out:  # written after every run: a stopped benchmark keeps what it measured
                    out.parent.mkdir(parents=True, exist_ok=True)
                    pd.DataFrame(rows).reindex(columns=["category", "method", *COLUMNS]).rename(
                        columns=COLUMNS).to_csv(out, index=False)
                print(f"{category:10s} {label:55s} image AUROC {result.metrics['test_image_auroc']:.3f}",
                      file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).reindex(columns=["category", "method", *COLUMNS]).rename(columns=COLUMNS)
    print(f"dataset {root} ({data.dataset_name(root)}), test split, seed 0\n")
    print(markdown_table(table))


if __name__ == "__main__":
    main()
