"""Quality on real defects: every method and backbone on the Magnetic Tile Defect set.

Real grey photographs of magnetic tiles from production with pixel masks
(``../shared/data/magnetic_tile``: 635 good train images, 317 good and 380
defective test images of five kinds; Huang, Qiu, Yuan, The Visual Computer
2020). Each variant is one ordinary tracked run of the platform
(`defectlab.runner.run_training`, seed 0, into a throwaway MLflow store), so the
figures are the run's own metrics: image and pixel AUROC with their seeded
bootstrap 95 % intervals, AUPRO (map-making methods), TPR and TNR at the
threshold a deployed detector uses (chosen on held-out good images only),
fit and scoring seconds. Settings are sized for a 2-core CPU and named in
each row. ``patch-efficientnet-tuned`` is an Optuna study of the platform
(``defectlab tune patch``, 16 trials over patch_size, image_size and map_sigma) that
chooses on the val split only; its row is the test figures of the trial that
scored best on val, and its label names the settings chosen.
``patch-efficientnet-tuned-pixels`` is the same study maximising val pixel
AUROC (``--objective val_pixel_auroc``). ``--out`` holds
the variants run, only: to redo one row, write elsewhere and merge. MobileNetV2's ImageNet weights come from the shared file
(``../shared/weights``, put in a temporary ``KERAS_HOME``); EfficientNet-Lite0's
from the ``defectlab[pretrained]`` extra. Writes a CSV and prints the
Markdown table the README shows first, and copies the ``patch-efficientnet`` run's
``heatmaps/top_defects.png`` to ``--picture`` (the README's picture: drawn
from the shared photographs, so it is made here and never committed).
Asserts nothing.

Run: ``python benchmarks/real_defects.py [--data-dir ROOT] [--variants NAME,...] [--out benchmarks/results/quality-real-defects.csv]
[--picture docs/images/magnetic_tile_heatmaps.png]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
MOBILENET_V2_FILE = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
CATEGORY = "magnetic_tile"
PICTURE_ARTIFACT = "heatmaps/top_defects.png"
PICTURE_VARIANT = "patch-efficientnet"  # the README's picture: the default settings' run

# name -> (method, label, settings): CPU-sized, everything else the defaults.
VARIANTS = {
    "patch-efficientnet": ("patch", "Patch, EfficientNet-Lite0 ImageNet (pip extra), 224 px", dict(
        image_size=224, backbone="imagenet", backbone_arch="efficientnet_lite0")),
    "patch-mobilenet": ("patch", "Patch, MobileNetV2 1.0 ImageNet (Keras file), 224 px", dict(
        image_size=224, backbone="imagenet", backbone_alpha=1.0)),
    "patch-pixels": ("patch", "Patch, raw-pixel windows (no network), 64 px", dict(
        image_size=64, backbone="pixels")),
    "patch-random": ("patch", "Patch, random MobileNetV2 0.5, 128 px", dict(image_size=128, backbone="none")),
    "metric-efficientnet": ("metric", "L2-softmax, EfficientNet-Lite0 ImageNet, 128 px, 5 epochs, 256 pseudo-defects", dict(
        image_size=128, backbone_arch="efficientnet_lite0", weights="imagenet", epochs=5, batch_size=32,
        pseudo_defects=256)),
    "ssim": ("ssim", "SSIM AE, 128 px, 5 epochs x 2000", dict(image_size=128, epochs=5, batch_size=32, augment_to=2000)),
}
# name -> (method, label, fixed settings, search space): an Optuna study of the platform
# (`defectlab tune patch`) chooses the settings on the val split; the row is the test
# figures of the trial that scored best on val, labelled with what it chose.
TUNED_SPACE = {
    "patch_size": {"type": "categorical", "choices": [3, 5, 7]},
    "image_size": {"type": "categorical", "choices": [160, 192, 224]},
    "map_sigma": {"type": "categorical", "choices": [4.0, 8.0, 16.0, 32.0]},
}
TUNED_FIXED = dict(backbone="imagenet", backbone_arch="efficientnet_lite0")
# name -> (method, label, fixed settings, search space, trials, objective)
TUNED_VARIANTS = {
    "patch-efficientnet-tuned": ("patch", "Patch, EfficientNet-Lite0 ImageNet (pip extra), tuned on val image AUROC",
                                 TUNED_FIXED, TUNED_SPACE, 16, "val_image_auroc"),
    "patch-efficientnet-tuned-pixels": ("patch", "Patch, EfficientNet-Lite0 ImageNet (pip extra), tuned on val pixel AUROC",
                                        TUNED_FIXED, TUNED_SPACE, 16, "val_pixel_auroc"),
}
COLUMNS = [
    ("test_image_auroc", "image AUROC [95 % CI]"), ("test_pixel_auroc", "pixel AUROC [95 % CI]"), ("test_aupro", "AUPRO"),
    ("test_tpr_at_val_threshold", "TPR at deployed thr."), ("test_tnr_at_val_threshold", "TNR at deployed thr."),
    ("train_seconds", "fit s"), ("score_seconds", "score s"),
]


def run_variant(name: str, data_dir: Path) -> dict:
    from defectlab.methods import get_method
    from defectlab.runner import run_training

    method_name, label, settings = VARIANTS[name]
    config = get_method(method_name).config_class(data_dir=str(data_dir), category=CATEGORY, seed=0, **settings)
    started = time.perf_counter()
    result = run_training(config)
    metrics = dict(result.metrics)
    return {"variant": name, "label": label, "run_id": result.run_id,
            "wall_seconds": time.perf_counter() - started, **metrics}


def run_tuned_variant(name: str, scratch: Path, data_dir: Path) -> dict:
    """Tune on the val split with `run_study`; the best-on-val trial's test figures, its choices in the label."""
    import mlflow
    import yaml

    from defectlab.methods import get_method
    from defectlab.tuning import TuneConfig, run_study

    method_name, label, settings, space, n_trials, objective = TUNED_VARIANTS[name]
    space_file = scratch / f"{name}.yaml"
    space_file.write_text(yaml.safe_dump(space))
    base = get_method(method_name).config_class(data_dir=str(data_dir), category=CATEGORY, seed=0, **settings)
    started = time.perf_counter()
    result = run_study(TuneConfig(
        method=method_name, category=CATEGORY, data_dir=str(data_dir), n_trials=n_trials, seed=0,
        storage=f"sqlite:///{scratch / 'optuna.db'}", study_name=name, search_space=str(space_file),
        objective=objective,
    ), base)
    if result.best_run_id is None:
        raise RuntimeError(f"{name}: no trial completed ({result.trial_counts})")
    import optuna

    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{scratch / 'optuna.db'}").trials_dataframe()
    print(f"{name}: every trial (value = {objective})\n{trials.to_string()}", flush=True)
    chosen = ", ".join(f"`{key}` {value}" for key, value in sorted(result.best_params.items()))
    # The run's own metrics, as `run_variant` reports them (MLflow's system/* samples left out).
    metrics = {key: value for key, value in mlflow.get_run(result.best_run_id).data.metrics.items()
               if not key.startswith("system/")}
    return {"variant": name, "label": f"{label} ({n_trials} trials): {chosen}", "run_id": result.best_run_id,
            "wall_seconds": time.perf_counter() - started, **metrics}


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None or value != value:
        return "–"
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if low is not None and low == low:
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.1f}" if key.endswith("seconds") else f"{value:.3f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| method, features, size | " + " | ".join(title for _, title in COLUMNS) + " |",
             "| --- |" + " --- |" * len(COLUMNS)]
    for row in rows:
        lines.append(f"| {row['label']} | " + " | ".join(cell(row, key) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join([*TUNED_VARIANTS, *VARIANTS]))
    parser.add_argument("--data-dir", default=str(DATA),
                        help=f"dataset root holding {CATEGORY}/ in MVTec AD layout (default: the shared folder)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quality-real-defects.csv"))
    parser.add_argument("--picture", default=str(Path(__file__).parents[1] / "docs" / "images" / "magnetic_tile_heatmaps.png"))
    arguments = parser.parse_args()
    names = [name.strip() for name in arguments.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS and name not in TUNED_VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join([*TUNED_VARIANTS, *VARIANTS])}")
    data_dir = Path(arguments.data_dir).expanduser().resolve()
    mobilenet_needed = any(VARIANTS[name][2].get("backbone_alpha") == 1.0 for name in names if name in VARIANTS)
    if not (data_dir / CATEGORY).is_dir():
        sys.exit(f"needs {data_dir / CATEGORY} (pass --data-dir, the root that holds {CATEGORY}/)")
    if mobilenet_needed and not MOBILENET_V2_FILE.is_file():
        sys.exit(f"the patch-mobilenet variant needs {MOBILENET_V2_FILE} (the shared folder beside the project)")

    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "keras" / "models"
        models.mkdir(parents=True)
        if MOBILENET_V2_FILE.is_file():
            shutil.copy2(MOBILENET_V2_FILE, models / MOBILENET_V2_FILE.name)
        os.environ["KERAS_HOME"] = str(models.parent)
        os.chdir(scratch)
        mlflow.set_tracking_uri(f"sqlite:///{Path(scratch) / 'mlflow.db'}")
        rows = []
        picture_from = None
        for name in names:
            rows.append(run_tuned_variant(name, Path(scratch), data_dir) if name in TUNED_VARIANTS
                        else run_variant(name, data_dir))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            if name == PICTURE_VARIANT:
                picture_from = rows[-1]["run_id"]
                Path(arguments.picture).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(
                    mlflow.artifacts.download_artifacts(run_id=picture_from, artifact_path=PICTURE_ARTIFACT),
                    arguments.picture,
                )
                print(f"{PICTURE_ARTIFACT} of run {picture_from} ({name}) copied to {arguments.picture}", flush=True)
    frame = pd.DataFrame(rows)
    Path(arguments.out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(arguments.out, index=False)
    print(f"\n{CATEGORY}: {len(rows)} variants, seed 0, 2-core CPU; written to {arguments.out}\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
