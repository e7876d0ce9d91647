"""Progress of long steps: a bar on a terminal, one line in the log, the step's seconds.

``with progress("choosing the coreset", total=n, unit="patches") as step:``
then ``step.update(k)`` as work is done; ``step.seconds`` afterwards. On a
terminal (stderr a TTY) a tqdm bar appears once the step has run for
`QUIET_SECONDS`; wherever the output goes (a log file, CI), a step that took
at least that long logs one line when it ends. Shorter steps stay silent, so
serving a request or scoring a handful of images prints nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

logger = logging.getLogger("defectlab.progress")

QUIET_SECONDS = 2.0


class Step:
    """A running step: `update` counts work done; ``seconds`` is its duration once it has ended."""

    def __init__(self, description: str, total: int, unit: str):
        self.description = description
        self.total = int(total)
        self.unit = unit
        self.done = 0
        self.seconds = 0.0
        self._started = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, desc=description, unit=f" {unit}", file=sys.stderr, delay=QUIET_SECONDS,
                leave=False, dynamic_ncols=True,
            )

    def update(self, count: int = 1) -> None:
        self.done += int(count)
        if self._bar is not None:
            self._bar.update(int(count))

    def _end(self) -> None:
        self.seconds = time.perf_counter() - self._started
        if self._bar is not None:
            self._bar.close()
        if self.seconds >= QUIET_SECONDS:
            logger.info("%s: %d %s in %.1f s", self.description, self.done, self.unit, self.seconds)


@contextmanager
def progress(description: str, total: int, unit: str):
    """A `Step` for the ``with`` block (see the module docstring)."""
    step = Step(description, total, unit)
    try:
        yield step
    finally:
        step._end()
