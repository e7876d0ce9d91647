"""Cold and warm load time of one category through the data layer's on-disk cache.

Cold: an empty cache, every PNG decoded and resized. Warm: the same call
again, served from the cached arrays (no PNG opened). Prints both and the
speed-up; asserts nothing.

Run: ``python benchmarks/bench_data_load.py [--data-dir synthetic] [--category carpet] [--image-size 224]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from defectlab import data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="synthetic")
    parser.add_argument("--category", default="carpet")
    parser.add_argument("--image-size", type=int, default=224)
    arguments = parser.parse_args()
    root = data.resolve_data_root(arguments.data_dir)  # generating the synthetic set is not timed
    with tempfile.TemporaryDirectory() as cache:
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            dataset = data.load_category(
                root, arguments.category, arguments.image_size, cache_dir=Path(cache)
            )
            timings.append(time.perf_counter() - start)
    cold, warm = timings
    print(f"{arguments.category} ({len(dataset.table)} images at {arguments.image_size} px from {root}):")
    print(f"cold load {cold:.2f} s, warm load {warm:.3f} s, warm is {cold / warm:.0f}x faster")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
