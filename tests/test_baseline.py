"""The built-in dataset is a real test: the PCA + LOF pixel baseline is neither blind nor perfect."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from defectlab.cli import main
from defectlab.baseline import run_pixel_baseline
from defectlab.data.synthetic import CATEGORY_DEFECT_TYPES


@pytest.mark.training
def test_pixel_baseline_auroc_is_between_055_and_095_on_every_default_category():
    # The default set (256 px, seed 0), generated into the test's cache folder.
    results = run_pixel_baseline("synthetic")
    assert set(results) == set(CATEGORY_DEFECT_TYPES)
    for category, metrics in results.items():
        assert 0.55 <= metrics["image_auroc"] <= 0.95, (category, metrics)
        assert 1.0 <= metrics["tpr_tnr_best"] <= 2.0


def test_baseline_command_prints_one_row_per_category(tiny_dataset_root):
    result = CliRunner().invoke(main, ["baseline", "--data-dir", str(tiny_dataset_root), "--category", "carpet",
                                       "--category", "cable", "--n-components", "8", "--lof-neighbors", "5"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.strip().splitlines()[1:]]
    assert [row[0] for row in rows] == ["carpet", "cable"]
    assert all(0.0 <= float(row[1]) <= 1.0 for row in rows)
