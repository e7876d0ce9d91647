"""Memory and speed of the patch method: bank size, coreset and fit time, scoring against the bare backbone.

For one category at each image size: patches and bytes of the memory bank
before and after the coreset, coreset selection seconds, fit seconds (feature
extraction plus coreset), test images/s of the detector (features, nearest
bank patches, maps) against the bare backbone's forward pass on the same
images, and the process's peak resident memory. Random backbone weights (the
cost does not depend on them). Asserts nothing.

Also prints the estimate for MVTec AD's largest category (about 400 train
images) at 224 px, from the same formula the run uses to refuse a bank.

Run: ``python benchmarks/bench_patch.py [--category carpet] [--sizes 64,224] [--coreset-ratio 0.1]``
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmark_utils import paired_ratio  # noqa: E402
from defectlab import data  # noqa: E402
from defectlab.methods.patch.config import DEFAULT_FEATURE_LAYERS  # noqa: E402
from defectlab.methods.patch.detector import PatchCoreDetector  # noqa: E402
from defectlab.methods.patch.features import patch_feature_extractor  # noqa: E402
from defectlab.methods.patch.memory_bank import estimate_bank_bytes, greedy_coreset_indices  # noqa: E402

MIB = 2 ** 20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(category: str, image_size: int, coreset_ratio: float, batch_size: int, rounds: int) -> None:
    dataset = data.load_category("synthetic", category, image_size, seed=0)
    good = dataset.images_of("train")
    test = dataset.images[dataset.rows("test")]
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), alpha=0.5, include_top=False, weights=None
    )
    layers = tuple(DEFAULT_FEATURE_LAYERS.split(","))
    detector = PatchCoreDetector(
        patch_feature_extractor(backbone, layers), coreset_ratio=coreset_ratio, batch_size=batch_size
    )

    start = time.perf_counter()
    features = detector.patch_features(good)
    extract_seconds = time.perf_counter() - start
    flat = features.reshape(-1, features.shape[-1])
    start = time.perf_counter()
    greedy_coreset_indices(flat, coreset_ratio, seed=0)
    coreset_seconds = time.perf_counter() - start
    start = time.perf_counter()
    detector.fit(good)
    fit_seconds = time.perf_counter() - start

    # Warm both paths once (Keras traces its predict function on the first call).
    detector.score_images_with_maps(test[:batch_size])
    backbone_input = test.astype(np.float32) / 127.5 - 1.0
    backbone.predict(backbone_input[:batch_size], batch_size=batch_size, verbose=0)
    detector_seconds, backbone_seconds, ratio = paired_ratio(
        lambda: detector.score_images_with_maps(test),
        lambda: backbone.predict(backbone_input, batch_size=batch_size, verbose=0),
        rounds,
    )
    detector_rate, backbone_rate = len(test) / detector_seconds, len(test) / backbone_seconds

    bank = detector.memory_bank_
    print(f"{category} at {image_size} px, {len(good)} train / {len(test)} test images, "
          f"layers {','.join(layers)}, coreset_ratio {coreset_ratio}:")
    print(f"  patches before coreset {bank.n_patches_seen_:>9d} ({flat.nbytes / MIB:8.1f} MiB), "
          f"after {len(bank.bank_):>8d} ({bank.bank_.nbytes / MIB:6.1f} MiB)")
    print(f"  feature extraction {extract_seconds:6.2f} s, coreset selection {coreset_seconds:6.2f} s, "
          f"fit (both) {fit_seconds:6.2f} s")
    print(f"  detector {detector_rate:7.1f} img/s vs bare backbone {backbone_rate:7.1f} img/s: "
          f"ratio {ratio:.2f} (goal >= 0.5; {rounds} alternating passes, fastest of each)")
    print(f"  peak resident memory so far {peak_rss_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="carpet")
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed scoring passes of each side")
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    for image_size in (int(size) for size in arguments.sizes.split(",")):
        measure(arguments.category, image_size, arguments.coreset_ratio, arguments.batch_size, arguments.rounds)
    estimate = estimate_bank_bytes(400, 56, 56, 32, arguments.coreset_ratio)
    needed = estimate["all_patches_bytes"] + estimate["coreset_selection_bytes"] + estimate["bank_bytes"]
    print(f"MVTec AD's largest category (400 train images) at 224 px: {estimate['n_patches']} patches, "
          f"{needed / MIB:.0f} MiB while fitting, bank {estimate['bank_bytes'] / MIB:.0f} MiB "
          "(the run's limit: memory_limit_gib 4)")


if __name__ == "__main__":
    main()
