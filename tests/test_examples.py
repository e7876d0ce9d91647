"""The walkthrough scripts in examples/ run top to bottom on the built-in dataset and report their AUROC."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.training
@pytest.mark.parametrize("script", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs_and_reports_its_auroc(script):
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    auroc = float(re.search(r"image AUROC (\d\.\d+)", completed.stdout).group(1))
    assert 0.0 <= auroc <= 1.0


def test_there_is_one_example_per_registered_method():
    from defectlab.methods import all_methods

    assert len(EXAMPLES) == len(all_methods())
