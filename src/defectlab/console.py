"""What a person reads on the console: TensorFlow imported without its start-up chatter.

On a machine without a GPU, importing TensorFlow writes an absl notice, the
CUDA stub lines and a cuInit failure straight to file descriptor 2, before
``TF_CPP_MIN_LOG_LEVEL`` applies. `import_tensorflow_quietly` points that
descriptor at a small filter process (``python -m defectlab.console``) for
the import: it forwards every line that is not chatter as it arrives, so a
real warning, an import error or the last words of a crashing import (e.g.
TensorFlow aborting on a CPU it cannot run on) still reach the user, in order.
This module imports nothing heavy: the filter process starts in milliseconds.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

TENSORFLOW_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions: .*rebuild TensorFlow"
)


def is_start_up_noise(line: str, gpu_devices_present: bool) -> bool:
    """Whether a line TensorFlow writes on import is chatter (the cuInit failure only on a machine
    without NVIDIA devices: where one exists it is the only hint of a broken driver)."""
    if not TENSORFLOW_START_UP_NOISE.search(line):
        return False
    return not (gpu_devices_present and "cuInit" in line)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and look for GPUs, with fd 2 passing through the chatter filter meanwhile.

    Where fd 2 cannot be redirected (closed) or the filter cannot start,
    TensorFlow is imported as usual.
    """
    if "tensorflow" in sys.modules:
        return
    gpu_devices_present = bool(glob.glob("/dev/nvidia[0-9]*"))
    sys.stderr.flush()
    try:
        saved_stderr = os.dup(2)
        chatter_filter = subprocess.Popen(
            [sys.executable, "-m", "defectlab.console", "1" if gpu_devices_present else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=saved_stderr,
        )
    except OSError:
        import tensorflow  # noqa: F401

        return
    os.dup2(chatter_filter.stdin.fileno(), 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        sys.stderr.flush()
        os.dup2(saved_stderr, 2)
        chatter_filter.stdin.close()  # the filter sees the end of its input, forwards the rest, exits
        chatter_filter.wait()
        os.close(saved_stderr)


def forward_all_but_chatter(gpu_devices_present: bool) -> None:
    """The filter process: standard input to standard error, chatter left out, line by line."""
    for line in sys.stdin.buffer:
        if not is_start_up_noise(line.decode("utf-8", errors="replace"), gpu_devices_present):
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()


if __name__ == "__main__":
    forward_all_but_chatter(sys.argv[1:] == ["1"])
