"""``defectlab evaluate`` of an SSIM-autoencoder detector: the training run's pixel metrics and heatmaps too."""

from __future__ import annotations

import mlflow
import pytest
from click.testing import CliRunner

from defectlab.cli import main
from defectlab.methods.ssim import SSIMConfig
from defectlab.runner import run_training

from .conftest import run_artifact_paths

pytestmark = pytest.mark.integration


def test_evaluate_of_an_ssim_detector_adds_pixel_metrics_and_heatmaps(tracking_uri, tiny_dataset_root):
    training = run_training(SSIMConfig(
        category="carpet", data_dir=str(tiny_dataset_root), image_size=64, epochs=2, augment_to=64,
        batch_size=16, latent_dim=16,
    ))

    result = CliRunner().invoke(
        main, ["evaluate", "--model-uri", training.detector_uri, "--data-dir", str(tiny_dataset_root)],
    )

    assert result.exit_code == 0, result.output
    run = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.evaluated_model = '{training.detector_uri}'",
        output_format="list",
    )[0]
    assert run.data.tags["method"] == "ssim_ae"
    for key in ("test_image_auroc", "test_pixel_auroc", "test_aupro"):
        assert run.data.metrics[key] == pytest.approx(training.metrics[key])
    assert {"heatmaps/top_defects.png", "heatmaps/hard_defects.png", "heatmaps/false_alarms.png"} <= (
        run_artifact_paths(run.info.run_id, folders=("heatmaps",))
    )
