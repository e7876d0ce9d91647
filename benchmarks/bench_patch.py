"""The patch method at real resolution on a CPU: fit time step by step, scoring speed, memory, quality.

On real photographs (default: the Magnetic Tile Defect set in ``../shared/data``)
with ImageNet MobileNetV2 alpha 1.0 features (the weights file in
``../shared/weights``), default layers and settings, at ``--image-size`` (224):

1. **An MVTec-sized category**: the first ``--train-images`` (209) good train
   images. Fit seconds (feature extraction, coreset, index), the detector's
   test images/s against the bare backbone's forward pass (full MobileNetV2,
   no top; alternating passes, fastest of each), peak memory, and test image /
   pixel AUROC. ``--compare-exact`` also scores the same features with
   today's reference path, the exact greedy coreset and the exact search
   (slow: the exact coreset alone takes about half an hour at 224 px).
2. **The whole train set** (635 images for the magnetic tiles) at the default
   ``coreset_ratio``: fit seconds.
3. **A large category**: ``--large`` (2000) train images, the category's own
   images flipped and rotated, fitted in a child process so that its peak
   memory is its own.

Asserts nothing. Run: ``python benchmarks/bench_patch.py [--data DIR]
[--category magnetic_tile] [--image-size 224] [--train-images 209] [--feature-layers auto]
[--compare-exact] [--large 2000] [--skip-full] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmark_utils import paired_ratio  # noqa: E402
from defectlab import data  # noqa: E402
from defectlab.evaluation import metrics  # noqa: E402
from defectlab.methods.patch.bank import PatchMemoryBank  # noqa: E402
from defectlab.methods.patch.config import PatchConfig  # noqa: E402
from defectlab.methods.patch.coreset import greedy_coreset_indices  # noqa: E402
from defectlab.methods.patch.detector import PatchCoreDetector  # noqa: E402
from defectlab.methods.patch.features import patch_feature_extractor  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS_FILE = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
MIB = 2 ** 20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def imagenet_backbone(image_size: int) -> keras.Model:
    backbone = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), alpha=1.0, include_top=False, weights=None
    )
    backbone.load_weights(str(WEIGHTS_FILE))
    return backbone


def settings(arguments) -> PatchConfig:
    """The run's defaults with ImageNet weights, ``--feature-layers`` if given."""
    return PatchConfig(backbone="imagenet", feature_layers=arguments.feature_layers)


def detector_of(backbone: keras.Model, config: PatchConfig, search_index: str = "auto") -> PatchCoreDetector:
    """The patch method's detector with ``config``'s layers, patch size, coreset and neighbours."""
    return PatchCoreDetector(
        patch_feature_extractor(backbone, config.layer_names), patch_size=config.patch_size,
        coreset_ratio=config.coreset_ratio, patch_neighbors=config.patch_neighbors,
        batch_size=config.batch_size, search_index=search_index,
    )


def fit_line(detector: PatchCoreDetector, fit_seconds: float) -> str:
    bank = detector.memory_bank_
    return (
        f"fit {fit_seconds:.1f} s (extract {detector.extract_seconds_:.1f} s, coreset {bank.coreset_seconds_:.1f} s, "
        f"index {bank.index_seconds_:.1f} s); {bank.n_patches_seen_:,} patches -> {len(bank.bank_):,} kept "
        f"({bank.bank_.nbytes / MIB:.1f} MiB), index {bank.index_.kind_}"
        + (f" (nlist {bank.index_.nlist_}, nprobe {bank.index_.nprobe_})" if bank.index_.kind_ == "ivf" else "")
    )


def quality(dataset, test_rows, masks, scores, maps) -> str:
    table = dataset.table[test_rows]
    labels = table["label"].to_numpy()
    has_mask = table["mask_path"].fillna("").astype(str).str.len().to_numpy() > 0
    kept = (labels == 0) | has_mask
    return (
        f"image AUROC {metrics.image_auroc(labels, scores):.4f}, "
        f"pixel AUROC {metrics.pixel_auroc(masks[kept], maps[kept]):.4f}"
    )


def category_benchmark(arguments) -> None:
    dataset = data.load_category(arguments.data, arguments.category, arguments.image_size, seed=0)
    good = dataset.images_of("train")[: arguments.train_images]
    test_rows = dataset.rows("test")
    test = dataset.images[test_rows]
    masks = data.load_masks(dataset.table[test_rows], arguments.image_size)
    backbone = imagenet_backbone(arguments.image_size)
    print(f"{arguments.category} at {arguments.image_size} px, ImageNet MobileNetV2 1.0, defaults "
          f"layers {','.join(settings(arguments).layer_names)}, coreset {settings(arguments).coreset_ratio}: "
          f"{len(good)} train, {len(test)} test images")

    detector = detector_of(backbone, settings(arguments))
    start = time.perf_counter()
    detector.fit(good)
    print(f"  {fit_line(detector, time.perf_counter() - start)}")

    scores, maps = detector.score_images_with_maps(test)
    print(f"  {quality(dataset, test_rows, masks, scores, maps)}")

    scored = test[: arguments.score_images]
    backbone_input = scored.astype(np.float32) / 127.5 - 1.0
    backbone.predict(backbone_input[:32], batch_size=32, verbose=0)
    detector_seconds, backbone_seconds, ratio = paired_ratio(
        lambda: detector.score_images_with_maps(scored),
        lambda: backbone.predict(backbone_input, batch_size=32, verbose=0),
        arguments.rounds,
    )
    print(f"  scoring {len(scored) / detector_seconds:.1f} img/s vs bare backbone "
          f"{len(scored) / backbone_seconds:.1f} img/s: ratio {ratio:.2f} "
          f"({len(scored)} images, {arguments.rounds} alternating passes, fastest of each)")
    print(f"  peak resident memory so far {peak_rss_mib():.0f} MiB")

    if arguments.compare_exact:
        features = detector.patch_features(good)
        flat = features.reshape(-1, features.shape[-1])
        start = time.perf_counter()
        indices = greedy_coreset_indices(flat, detector.coreset_ratio, seed=detector.seed)
        exact_coreset_seconds = time.perf_counter() - start
        exact = detector_of(backbone, settings(arguments), search_index="exact")
        exact.grid_shape_ = detector.grid_shape_
        exact.memory_bank_ = PatchMemoryBank(
            coreset_ratio=1.0, patch_neighbors=detector.patch_neighbors, search_index="exact"
        ).fit_bank(flat[indices])
        exact_scores, exact_maps = exact.score_images_with_maps(test)
        print(f"  exact greedy coreset {exact_coreset_seconds:.1f} s and exact search: "
              f"{quality(dataset, test_rows, masks, exact_scores, exact_maps)}")

    if not arguments.skip_full:
        everything = dataset.images_of("train")
        detector = detector_of(backbone, settings(arguments))
        start = time.perf_counter()
        detector.fit(everything)
        print(f"  whole train set, {len(everything)} images: {fit_line(detector, time.perf_counter() - start)}")


def large_benchmark(arguments) -> None:
    """Fit on ``--large`` images made from the category's own (8 flips and rotations of each); one JSON line."""
    dataset = data.load_category(arguments.data, arguments.category, arguments.image_size, seed=0)
    good = dataset.images_of("train")
    images = np.empty((arguments.large, *good.shape[1:]), dtype=good.dtype)
    for index in range(arguments.large):
        variant, source = divmod(index, len(good))
        turned = np.rot90(good[source], variant % 4)
        images[index] = turned[:, ::-1] if variant % 8 >= 4 else turned
    del good, dataset
    detector = detector_of(imagenet_backbone(arguments.image_size), settings(arguments))
    start = time.perf_counter()
    detector.fit(images)
    print(json.dumps({"images": len(images), "line": fit_line(detector, time.perf_counter() - start),
                      "peak_rss_mib": round(peak_rss_mib())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data"))
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-images", type=int, default=209)
    parser.add_argument("--feature-layers", default="auto", help="as the run's feature_layers (default: auto)")
    parser.add_argument("--score-images", type=int, default=128, help="test images per timed scoring pass")
    parser.add_argument("--rounds", type=int, default=3, help="timed scoring passes of each side")
    parser.add_argument("--compare-exact", action="store_true")
    parser.add_argument("--skip-full", action="store_true", help="skip the whole-train-set fit")
    parser.add_argument("--large", type=int, default=2000, help="train images of the large fit (0: skip)")
    parser.add_argument("--large-only", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if not WEIGHTS_FILE.is_file() or not (Path(arguments.data) / arguments.category).is_dir():
        sys.exit(f"needs {WEIGHTS_FILE} and {Path(arguments.data) / arguments.category} (the shared folder)")
    if arguments.large_only:
        large_benchmark(arguments)
        return
    category_benchmark(arguments)
    if arguments.large:
        child = subprocess.run(
            [sys.executable, __file__, "--large-only", "--data", arguments.data, "--category", arguments.category,
             "--image-size", str(arguments.image_size), "--large", str(arguments.large),
             "--feature-layers", arguments.feature_layers],
            capture_output=True, text=True, check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"  {result['images']} train images (flipped and rotated copies): {result['line']}; "
              f"peak resident memory {result['peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
