"""What a training run refuses, skips or counts: collapsed detectors, bad weights files, unreadable
images, defects without masks. The toy map-making method (tests/toy_method.py) keeps each run to seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from defectlab.evaluation import CollapsedModelError, check_scores_vary
from defectlab.runner import run_training
from tests.toy_method import PixelMeanConfig, toy_method  # noqa: F401 (a fixture)

pytestmark = pytest.mark.training


@pytest.fixture
def carpet_copy(tiny_dataset_root, tmp_path) -> Path:
    """The tiny dataset's carpet alone, in a folder this test may damage."""
    root = tmp_path / "damaged"
    shutil.copytree(Path(tiny_dataset_root) / "carpet", root / "carpet")
    return root


def the_run():
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1
    return runs[0]


def test_constant_held_out_good_scores_are_a_collapse():
    table = pd.DataFrame({"label": [0, 0, 0, 1], "split": ["threshold", "val", "test", "test"]})
    with pytest.raises(CollapsedModelError, match="all 3 held-out good images score 0.5"):
        check_scores_vary(table, [0.5, 0.5, 0.5 + 1e-9, 3.0])
    check_scores_vary(table, [0.5, 0.5, 0.5001, 3.0])  # a real detector's spread passes


def test_a_collapsed_model_fails_its_run_and_is_never_registered(toy_method, tracking_uri, tiny_dataset_root):
    with pytest.raises(CollapsedModelError, match="the model collapsed"):
        run_training(PixelMeanConfig(data_dir=str(tiny_dataset_root), collapse=True, register_as="toy-carpet"))
    run = the_run()
    assert run.info.status == "FAILED"
    assert "CollapsedModelError: the model collapsed" in run.data.tags["failure_reason"]
    assert mlflow.MlflowClient().search_registered_models() == []
    assert "test_image_auroc" not in run.data.metrics


def test_a_file_that_is_not_weights_fails_before_any_data_is_loaded(tracking_uri, tmp_path):
    from defectlab.cli import main

    not_weights = tmp_path / "weights.h5"
    not_weights.write_text("these are not weights")
    missing_data = tmp_path / "no-such-dataset"
    for command in (["metric", "--weights", str(not_weights)], ["patch", "--backbone", str(not_weights)]):
        result = CliRunner().invoke(main, [*command, "--data-dir", str(missing_data), "--image-size", "64"])
        assert result.exit_code == 1
        # The weights are named, the dataset (which does not even exist) was never reached.
        assert f"weights file {not_weights} is not a Keras weights file" in result.output
        assert "does not start like a HDF5 file" in result.output
    wrong_suffix = tmp_path / "weights.txt"
    wrong_suffix.write_text("x")
    result = CliRunner().invoke(main, ["metric", "--weights", str(wrong_suffix), "--data-dir", str(missing_data)])
    assert result.exit_code == 1 and "its suffix is '.txt'" in result.output


def test_skip_logs_the_unreadable_images_and_their_count(toy_method, tracking_uri, carpet_copy):
    broken = carpet_copy / "carpet" / "train" / "good" / "zz_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(Exception, match="cannot read image .*zz_broken.png"):
        run_training(PixelMeanConfig(data_dir=str(carpet_copy)))

    run_training(PixelMeanConfig(data_dir=str(carpet_copy), on_bad_image="skip"))
    run = [run for run in mlflow.search_runs(search_all_experiments=True, output_format="list")
           if run.info.status == "FINISHED"][0]
    assert run.data.metrics["skipped_images"] == 1
    skipped = pd.read_csv(mlflow.MlflowClient().download_artifacts(run.info.run_id, "data/skipped_images.csv"))
    assert skipped["path"].tolist() == [str(broken)]
    splits = pd.read_csv(mlflow.MlflowClient().download_artifacts(run.info.run_id, "data/splits.csv"))
    assert str(broken) not in set(splits["path"])


def test_defects_without_masks_are_left_out_of_the_pixel_metrics_and_counted(toy_method, tracking_uri,
                                                                              carpet_copy):
    from defectlab import data

    table = data.split_category_table(data.read_category_table(carpet_copy, "carpet"), seed=0)
    test_defects = table[(table["split"] == "test") & (table["label"] == 1)]
    Path(test_defects["mask_path"].iloc[0]).unlink()

    result = run_training(PixelMeanConfig(data_dir=str(carpet_copy)))
    assert result.metrics["test_pixel_images_without_mask"] == 1
    assert result.metrics["test_pixel_images"] == len(test_defects) - 1
    assert the_run().data.metrics["test_pixel_images_without_mask"] == 1
