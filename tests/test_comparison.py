"""The showdown report (`defectlab compare`) and `repeats`, over real MLflow stores.

Most tests log runs directly with mlflow (tags, params, metrics as the training
runs write them), so no training is needed; the expected statistics are
computed here from the logged values, independently of `defectlab.comparison`.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from defectlab import comparison
from defectlab.cli import main
from defectlab.methods.metric import MetricConfig
from defectlab.runner import RunResult, run_repeated, run_training

from .conftest import TINY_METRIC_OPTIONS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "showdown"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def log_training_run(category, method, seed, tpr_tnr, auroc, ensemble_size=1, image_size=64,
                     dataset="synthetic", nested=False, status="FINISHED", extra_tags=None,
                     extra_metrics=None):
    """A run with the tags, params and final metrics of a defectlab training run."""
    with mlflow.start_run(nested=nested) as run:
        mlflow.log_params({"category": category, "image_size": image_size, "seed": seed,
                           "ensemble": ensemble_size})
        mlflow.set_tags({"method": method, "category": category, "dataset": dataset,
                         "ensemble_size": ensemble_size, "image_size": image_size, **(extra_tags or {})})
        mlflow.log_metrics({"test_tpr_tnr_best": tpr_tnr, "test_image_auroc": auroc, **(extra_metrics or {})})
        if status != "FINISHED":
            mlflow.end_run(status=status)
    return run.info.run_id


def read_table(out_dir: Path) -> pd.DataFrame:
    """comparison.csv exactly as written (strings), so 'missing' stays visible."""
    return pd.read_csv(out_dir / "comparison.csv", dtype=str, keep_default_na=False)


def table_row(table: pd.DataFrame, category: str, method: str, group: str = "synthetic, 64 px"):
    rows = table[(table["group"] == group) & (table["category"] == category) & (table["method"] == method)]
    assert len(rows) == 1, f"expected one row for {group}/{category}/{method}, got {len(rows)}"
    return rows.iloc[0]


@pytest.fixture
def showdown_runs(tracking_uri):
    """Several categories, methods and repeats, plus runs that must not be counted.

    Returns {(category, method label): [(run_id, tpr_tnr, auroc), ...]} of the runs that count.
    """
    mlflow.set_experiment(EXPERIMENT)
    rng = np.random.default_rng(7)
    counted = {}

    def add(category, method, label, seeds, ensemble_size=1, nested=False):
        for seed in seeds:
            tpr_tnr, auroc = float(rng.uniform(0.8, 1.9)), float(rng.uniform(0.4, 1.0))
            run_id = log_training_run(category, method, seed, tpr_tnr, auroc, ensemble_size, nested=nested)
            counted.setdefault((category, label), []).append((run_id, tpr_tnr, auroc))

    add("carpet", "ssim_ae", "SSIM AE", [0, 1, 2])
    # L2-softmax on carpet as `repeats` makes it: a parent (no metrics) and nested children.
    with mlflow.start_run():
        mlflow.set_tags({"method": "l2_softmax", "category": "carpet", "dataset": "synthetic", "repeats": 3})
        add("carpet", "l2_softmax", "L2-softmax", [0, 1, 2], nested=True)
    add("carpet", "l2_softmax", "L2-softmax ensemble of 3", [0, 1], ensemble_size=3)
    add("leather", "l2_softmax", "L2-softmax", [0, 1])
    add("leather", "ssim_ae", "SSIM AE", [0])

    # Not training results: a failed run, an evaluate run and an earlier compare run.
    log_training_run("leather", "ssim_ae", 5, 0.1, 0.1, status="FAILED")
    log_training_run("carpet", "l2_softmax", 0, 0.2, 0.2, extra_tags={"evaluated_model": "models:/x/1"})
    with mlflow.start_run():
        mlflow.set_tag("method", "compare")
    with mlflow.start_run():  # a tuning study: its trials try other settings, they are not repeats
        mlflow.set_tags({"method": "l2_softmax", "category": "carpet"})
        log_training_run("carpet", "l2_softmax", 0, 0.3, 0.3, nested=True, extra_tags={"trial_number": 0})
    return counted


def test_compare_cli_writes_every_figure_and_a_table_matching_the_runs(showdown_runs, tmp_path):
    out_dir = tmp_path / "report"
    result = CliRunner().invoke(main, ["compare", "--experiment", EXPERIMENT, "--out", str(out_dir)])
    assert result.exit_code == 0, result.output

    for category in comparison.ARTICLE_CATEGORIES:
        for metric in comparison.COMPARED_METRICS:
            figure_path = out_dir / "figures" / "synthetic-64px" / f"{category}-{metric}.png"
            assert figure_path.read_bytes()[:8] == PNG_SIGNATURE, figure_path

    table = read_table(out_dir)
    for (category, method), runs in showdown_runs.items():
        row = table_row(table, category, method)
        assert int(row["n"]) == len(runs)
        assert set(row["run_ids"].split()) == {run_id for run_id, _, _ in runs}
        for metric, values in (("test_tpr_tnr_best", [run[1] for run in runs]),
                               ("test_image_auroc", [run[2] for run in runs])):
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.mean(values))
            if len(values) > 1:
                assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values))
            else:
                assert row[f"{metric}_std"] == "missing"  # one run has no spread
    # Only the counted runs are behind the numbers (no parent, failed, evaluate or compare run).
    all_counted = {run_id for runs in showdown_runs.values() for run_id, _, _ in runs}
    assert set(" ".join(table["run_ids"]).split()) - {"missing"} == all_counted

    page = (out_dir / "comparison.html").read_text()
    assert "(one run)" in page and "± " in page
    assert "1 tuning trial run(s) (tag trial_number) were left out" in page
    assert "1 training run(s) not FINISHED were left out" in page
    assert 'src="figures/synthetic-64px/carpet-test_tpr_tnr_best.png"' in page

    compare_run_id = re.search(r"compare run (\w+):", result.output).group(1)
    compare_run = mlflow.get_run(compare_run_id)
    assert compare_run.info.status == "FINISHED"
    assert compare_run.data.tags["method"] == "compare"
    assert compare_run.info.experiment_id == mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    artifacts = mlflow.artifacts.download_artifacts(run_id=compare_run_id, dst_path=str(tmp_path / "logged"))
    logged = Path(artifacts)
    assert (logged / "comparison.csv").read_text() == (out_dir / "comparison.csv").read_text()
    assert (logged / "figures" / "synthetic-64px" / "capsule-test_image_auroc.png").is_file()


def test_missing_categories_and_methods_are_reported_missing_never_zero(showdown_runs, tmp_path):
    out_dir = tmp_path / "report"
    compare_result = comparison.compare_experiment(EXPERIMENT, str(out_dir))
    table = read_table(out_dir)
    for category in ("cable", "capsule"):
        for method in ("SSIM AE", "L2-softmax", "L2-softmax ensemble of 3"):
            row = table_row(table, category, method)
            assert row["n"] == "0"
            for column in ("test_tpr_tnr_best_mean", "test_image_auroc_mean", "run_ids"):
                assert row[column] == "missing"
    # Leather has no ensemble run: that method is missing there, the others are not.
    assert table_row(table, "leather", "L2-softmax ensemble of 3")["test_image_auroc_mean"] == "missing"
    assert table_row(table, "leather", "L2-softmax")["n"] == "2"
    assert (compare_result.table["n"] > 0).sum() == len(showdown_runs)

    page = (out_dir / "comparison.html").read_text()
    assert "missing" in page

    training, _ = comparison.training_runs(mlflow.search_runs(experiment_names=[EXPERIMENT]))
    figures = dict(comparison.comparison_figures(training, comparison.load_published_results()))
    cable_texts = " ".join(text.get_text() for text in figures["figures/synthetic-64px/cable-test_image_auroc.png"].texts)
    assert "No finished runs for cable" in cable_texts
    leather_axes = figures["figures/synthetic-64px/leather-test_image_auroc.png"].axes[0]
    assert any(text.get_text() == "missing\n(no runs)" for text in leather_axes.texts)


def test_published_numbers_are_drawn_named_and_unconfirmed_ones_are_said(showdown_runs, tmp_path):
    out_dir = tmp_path / "report"
    comparison.compare_experiment(EXPERIMENT, str(out_dir))
    published = pd.read_csv(out_dir / "published.csv", dtype=str)
    carpet_ssim = published[(published["category"] == "carpet") & (published["method"] == "AE-SSIM")]
    assert carpet_ssim["value"].tolist() == ["1.33"]
    assert "CVPR 2019" in carpet_ssim["source"].iloc[0]
    for category in ("cable", "capsule"):
        rows = published[(published["category"] == category) & (published["metric"] == "test_tpr_tnr_best")]
        assert rows["value"].tolist() == ["not confirmed"]

    training, _ = comparison.training_runs(mlflow.search_runs(experiment_names=[EXPERIMENT]))
    figures = dict(comparison.comparison_figures(training, comparison.load_published_results()))
    carpet_axes = figures["figures/synthetic-64px/carpet-test_tpr_tnr_best.png"].axes[0]
    legend = [text.get_text() for text in carpet_axes.get_legend().get_texts()]
    assert "AE-SSIM (MVTec AD paper, Table 2): 1.33" in legend
    assert "GMM texture inspection (MVTec AD paper, Table 2): 1.18" in legend
    assert carpet_axes.get_title() and carpet_axes.get_ylabel() and carpet_axes.get_xlabel()
    cable_figure = figures["figures/synthetic-64px/cable-test_tpr_tnr_best.png"]
    assert cable_figure.axes[0].get_legend() is None
    assert "not confirmed" in " ".join(text.get_text() for text in cable_figure.texts)
    capsule_auroc_legend = [
        text.get_text()
        for text in figures["figures/synthetic-64px/capsule-test_image_auroc.png"].axes[0].get_legend().get_texts()
    ]
    assert capsule_auroc_legend == ["L2-softmax (article): 0.57"]


def test_runs_of_other_image_sizes_or_datasets_are_grouped_not_pooled(tracking_uri, tmp_path):
    mlflow.set_experiment(EXPERIMENT)
    values = {
        ("synthetic", 64): [(1.2, 0.7), (1.4, 0.8)],
        ("synthetic", 96): [(1.9, 0.99)],
        ("mvtec_ad", 64): [(1.0, 0.5), (1.1, 0.6)],
    }
    for (dataset, image_size), metrics in values.items():
        for seed, (tpr_tnr, auroc) in enumerate(metrics):
            log_training_run("carpet", "l2_softmax", seed, tpr_tnr, auroc, image_size=image_size, dataset=dataset)
    out_dir = tmp_path / "report"
    comparison.compare_experiment(EXPERIMENT, str(out_dir))
    table = read_table(out_dir)
    assert set(table["group"]) == {"synthetic, 64 px", "synthetic, 96 px", "mvtec_ad, 64 px"}
    for (dataset, image_size), metrics in values.items():
        row = table_row(table, "carpet", "L2-softmax", group=f"{dataset}, {image_size} px")
        assert int(row["n"]) == len(metrics)
        assert float(row["test_image_auroc_mean"]) == pytest.approx(statistics.mean(a for _, a in metrics))
        assert (out_dir / "figures" / f"{dataset}-{image_size}px" / "carpet-test_image_auroc.png").is_file()


def test_compare_refuses_an_experiment_without_training_runs_with_a_clear_error(tracking_uri, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["compare", "--experiment", "nowhere", "--out", str(tmp_path / "a")])
    assert result.exit_code == 1
    assert "no MLflow experiment named 'nowhere'" in result.output

    mlflow.set_experiment("only-evaluations")
    log_training_run("carpet", "l2_softmax", 0, 1.0, 0.5, extra_tags={"evaluated_model": "models:/m/1"})
    result = runner.invoke(main, ["compare", "--experiment", "only-evaluations", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert "has no FINISHED training run" in result.output
    assert not (tmp_path / "b").exists()


def test_mlproject_compare_entry_point_matches_the_cli():
    entry_point = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]["compare"]
    options = {option.name: option for option in main.commands["compare"].params}
    assert set(entry_point["parameters"]) == set(options)
    assert entry_point["parameters"]["out"]["default"] == options["out"].default
    assert "default" not in entry_point["parameters"]["experiment"] and options["experiment"].required
    for name in entry_point["parameters"]:
        assert f"--{name} {{{name}}}" in entry_point["command"]


def recording_run_function(calls, fail_at_seed=None):
    """A stand-in for run_training: one nested tracked run per call, no training."""
    from defectlab import tracking
    from defectlab.methods import method_of_config

    def run_function(config, run_name=None, nested=False):
        calls.append((config, run_name, nested))
        tags = {"method": method_of_config(config).tag, "category": config.category}
        with tracking.tracked_run(dataclasses.asdict(config), tags, run_name=run_name, nested=nested) as run:
            if config.seed == fail_at_seed:
                raise RuntimeError("boom")
            tracking.log_metrics({"test_image_auroc": 0.5 + config.seed / 10})
        return RunResult(run_id=run.info.run_id, metrics={}, detector_uri="")

    return run_function


def test_run_repeated_with_one_repeat_is_one_plain_run(tracking_uri, tiny_dataset_root):
    mlflow.set_experiment(EXPERIMENT)
    calls = []
    config = MetricConfig(data_dir=str(tiny_dataset_root), seed=4)
    results = run_repeated(config, recording_run_function(calls), run_name="single")
    assert calls == [(config, "single", False)]
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT])
    assert list(runs["run_id"]) == [results[0].run_id]


def test_run_repeated_failing_child_fails_the_parent(tracking_uri, tiny_dataset_root):
    mlflow.set_experiment(EXPERIMENT)
    calls = []
    config = MetricConfig(data_dir=str(tiny_dataset_root), seed=3, repeats=3)
    with pytest.raises(RuntimeError, match="boom"):
        run_repeated(config, recording_run_function(calls, fail_at_seed=4))
    assert [call[0].seed for call in calls] == [3, 4]
    assert all(call[0].repeats == 1 and call[2] for call in calls)
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT]).set_index("run_id")
    parent = runs[runs["tags.repeats"] == "3"]
    assert parent["status"].tolist() == ["FAILED"]
    assert sorted(runs.loc[runs["tags.mlflow.parentRunId"] == parent.index[0], "status"]) == ["FAILED", "FINISHED"]


@pytest.mark.training
def test_repeats_two_on_a_real_metric_run_gives_one_parent_and_two_seeded_children(
    tracking_uri, tiny_dataset_root, tmp_path
):
    mlflow.set_experiment(EXPERIMENT)
    options = {**TINY_METRIC_OPTIONS, "epochs": 1}  # one epoch: this test is about runs, not quality
    config = MetricConfig(category="carpet", data_dir=str(tiny_dataset_root), repeats=2, **options)
    results = run_repeated(config, run_training)

    runs = mlflow.search_runs(experiment_names=[EXPERIMENT])
    assert len(runs) == 3 and set(runs["status"]) == {"FINISHED"}
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1
    parent = parents.iloc[0]
    assert (parent["tags.method"], parent["tags.category"], parent["tags.repeats"]) == ("l2_softmax", "carpet", "2")
    assert np.isnan(parent.get("metrics.test_image_auroc", np.nan))
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]].sort_values("params.seed")
    assert children["params.seed"].tolist() == ["0", "1"]
    assert children["params.repeats"].tolist() == ["1", "1"]
    assert set(children["run_id"]) == {result.run_id for result in results}
    assert set(children["tags.dataset"]) == {parent["tags.dataset"]}

    # The report counts the two children, not the parent.
    compare_result = comparison.compare_experiment(EXPERIMENT, str(tmp_path / "report"))
    row = compare_result.table[
        (compare_result.table["category"] == "carpet") & (compare_result.table["method"] == "L2-softmax")
    ].iloc[0]
    assert row["n"] == 2 and set(row["run_ids"].split()) == set(children["run_id"])


def test_pixel_auroc_is_reported_beside_image_auroc_for_map_making_methods_only(tracking_uri, tmp_path):
    mlflow.set_experiment(EXPERIMENT)
    for seed, pixel_auroc in ((0, 0.90), (1, 0.96)):
        run_id = log_training_run("carpet", "patch", seed, 1.8, 0.95)
        mlflow.MlflowClient().log_metric(run_id, "test_pixel_auroc", pixel_auroc)
    log_training_run("carpet", "l2_softmax", 0, 1.5, 0.8)

    result = comparison.compare_experiment(EXPERIMENT, str(tmp_path / "out"))

    table = read_table(tmp_path / "out")
    patch_row = table_row(table, "carpet", "Patch (PatchCore)")
    assert float(patch_row["test_pixel_auroc_mean"]) == pytest.approx(0.93)
    assert patch_row["n"] == "2"
    # The metric run counts (it has the required metrics) but has no pixel AUROC to report.
    metric_row = table_row(table, "carpet", "L2-softmax")
    assert metric_row["n"] == "1" and metric_row["test_pixel_auroc_mean"] == "missing"
    assert any(str(path).endswith("carpet-test_pixel_auroc.png") for path in result.figure_paths)
    assert "n/a" in (tmp_path / "out" / "comparison.html").read_text()


def with_interval(auroc_low, auroc_high):
    return {"test_image_auroc_ci_low": auroc_low, "test_image_auroc_ci_high": auroc_high,
            "test_tpr_tnr_best_ci_low": 1.0, "test_tpr_tnr_best_ci_high": 1.2}


def test_compare_reports_the_intervals_and_says_which_methods_overlap(tracking_uri, tmp_path):
    mlflow.set_experiment(EXPERIMENT)
    log_training_run("carpet", "l2_softmax", 0, 1.1, 0.80, extra_metrics=with_interval(0.70, 0.88))
    log_training_run("carpet", "l2_softmax", 1, 1.1, 0.82, extra_metrics=with_interval(0.72, 0.90))
    log_training_run("carpet", "ssim_ae", 0, 1.1, 0.85, extra_metrics=with_interval(0.78, 0.93))
    log_training_run("carpet", "patch", 0, 1.1, 0.99, extra_metrics=with_interval(0.97, 1.00))
    log_training_run("leather", "patch", 0, 1.1, 0.99)  # an older run: no interval

    result = CliRunner().invoke(main, ["compare", "--experiment", EXPERIMENT, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    table = read_table(tmp_path / "out")
    metric_learning = table_row(table, "carpet", "L2-softmax")
    assert float(metric_learning["test_image_auroc_ci_low"]) == pytest.approx(0.71)  # mean over the repeats
    assert float(metric_learning["test_image_auroc_ci_high"]) == pytest.approx(0.89)
    assert metric_learning["test_image_auroc_overlaps"] == "SSIM AE"
    assert table_row(table, "carpet", "Patch (PatchCore)")["test_image_auroc_overlaps"] == "none"
    assert table_row(table, "leather", "Patch (PatchCore)")["test_image_auroc_overlaps"] == "missing"
    page = (tmp_path / "out" / "comparison.html").read_text()
    assert "the 95 % intervals of L2-softmax (0.710-0.890) and SSIM AE (0.780-0.930) overlap" in page
    assert "Patch (PatchCore) (0.970" not in page  # its interval overlaps no other


def test_a_users_own_dataset_shows_only_its_categories_and_methods_with_runs(tracking_uri, tmp_path):
    mlflow.set_experiment("tiles")
    for seed in (0, 1):
        log_training_run("magnetic_tile", "patch", seed, 1.5, 0.9, dataset="magnetic_tile_data", image_size=224)
    log_training_run("magnetic_tile", "l2_softmax", 0, 1.2, 0.7, dataset="magnetic_tile_data", image_size=224)
    out_dir = tmp_path / "report"

    comparison.compare_experiment("tiles", str(out_dir))

    table = read_table(out_dir)
    assert sorted(zip(table["category"], table["method"])) == [
        ("magnetic_tile", "L2-softmax"), ("magnetic_tile", "Patch (PatchCore)"),
    ]
    assert "missing" not in set(table["test_image_auroc_mean"])
    drawn = sorted(path.name for path in (out_dir / "figures").rglob("*.png"))
    assert drawn and all(name.startswith("magnetic_tile-") for name in drawn)
    page = (out_dir / "comparison.html").read_text()
    assert "<h1>L2-softmax vs Patch (PatchCore): experiment tiles</h1>" in page
    assert "SSIM" not in page.split("<h2>Published numbers</h2>")[0]
