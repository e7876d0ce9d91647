"""Progress of long steps: silent when quick, one log line when slow, a bar on a terminal."""

from __future__ import annotations

import io
import logging

from defectlab import progress as progress_module
from defectlab.progress import progress


def test_a_quick_step_says_nothing_and_still_times_itself(caplog):
    with caplog.at_level(logging.INFO, logger="defectlab.progress"):
        with progress("choosing the coreset", total=10, unit="patches") as step:
            step.update(10)
    assert caplog.text == ""
    assert 0 <= step.seconds < progress_module.QUIET_SECONDS


def test_a_slow_step_logs_one_line_with_its_count_and_seconds(caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "QUIET_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="defectlab.progress"):
        with progress("extracting patch features", total=5, unit="images") as step:
            step.update(2)
            step.update(3)
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == f"extracting patch features: 5 images in {step.seconds:.1f} s"


def test_on_a_terminal_a_bar_is_drawn(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress_module, "QUIET_SECONDS", 0.0)
    with progress("scoring", total=4, unit="images") as step:
        step.update(4)
    assert "scoring:" in terminal.getvalue() and "/4 [" in terminal.getvalue()  # tqdm redraws at most every 0.1 s


def test_a_step_that_fails_still_ends_its_bar_and_time(monkeypatch):
    monkeypatch.setattr(progress_module, "QUIET_SECONDS", 0.0)
    try:
        with progress("indexing the bank", total=1, unit="patches") as step:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert step.seconds > 0
