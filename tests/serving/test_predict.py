"""``defectlab predict`` on a folder of new images: the files it writes, its scores, exit codes, bad input.

One tiny patch detector (`tiny_patch_store`: random backbone, 64 px, makes maps) serves every test;
the streaming itself, without a detector, is in test_predict_streaming.py.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from defectlab.cli import main
from defectlab.serving.detector import IMAGE_COLUMN
from defectlab.serving.predict import ERROR_COLUMNS, PREDICTION_COLUMNS

pytestmark = pytest.mark.training  # the detector fixture fits a patch model on the built-in dataset

GOOD_COUNT = 3  # at most: the tiny dataset's test split may hold fewer
DEFECT_COUNT = 3


def source_rows(scores: pd.DataFrame) -> pd.DataFrame:
    """A few good and defective test images of the training run, with the scores it logged."""
    test_rows = scores[scores["split"] == "test"]
    return pd.concat([
        test_rows[test_rows["label"] == 0].head(GOOD_COUNT), test_rows[test_rows["label"] == 1].head(DEFECT_COUNT),
    ])


@pytest.fixture
def new_images(tmp_path, tiny_patch_store):
    """A folder as a line would leave it: good and defective images, nested folders, two unreadable files, a note.

    Returns (folder, {copied path: the training run's score of its source}, [unreadable paths]).
    """
    folder = tmp_path / "incoming"
    expected_scores = {}
    for index, row in enumerate(source_rows(tiny_patch_store.scores).itertuples()):
        subfolder = folder / "line_a" if row.label == 0 else folder / "line_b" / "shift_2" / "camera_1"
        subfolder.mkdir(parents=True, exist_ok=True)
        copied = subfolder / f"{'good' if row.label == 0 else 'defect'}_{index}.png"
        shutil.copyfile(row.path, copied)
        expected_scores[str(copied)] = row.score
    (folder / "not_an_image.png").write_text("plain text, not a picture")
    first_image = Path(next(iter(expected_scores))).read_bytes()
    (folder / "line_a" / "truncated.png").write_bytes(first_image[: len(first_image) // 2])
    (folder / "notes.txt").write_text("a note, not an image: left out of the search")
    return folder, expected_scores, [str(folder / "not_an_image.png"), str(folder / "line_a" / "truncated.png")]


def invoke_predict(*arguments):
    return CliRunner().invoke(main, ["predict", *arguments])


def test_predict_writes_the_documented_files_and_counts(use_tiny_patch_store, new_images, tmp_path):
    folder, expected_scores, unreadable = new_images
    out = tmp_path / "out"

    result = invoke_predict(
        "--model-uri", use_tiny_patch_store.detector_uri, "--input", str(folder), "--out", str(out),
        "--batch-size", "4",
    )

    # Two unreadable files: everything is written, and the exit status says so.
    assert result.exit_code == 1, result.output
    scored = len(expected_scores)
    assert f"2 of {scored + 2} images could not be read" in result.output
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert tuple(predictions.columns) == PREDICTION_COLUMNS
    assert sorted(predictions["path"]) == sorted(expected_scores)
    assert predictions["model_uri"].unique().tolist() == [use_tiny_patch_store.detector_uri]
    assert predictions["model_version"].astype(str).unique().tolist() == [""]
    threshold = predictions["threshold"].iloc[0]
    assert (predictions["is_anomaly"] == (predictions["score"] > threshold)).all()
    errors = pd.read_csv(out / "errors.csv")
    assert tuple(errors.columns) == ERROR_COLUMNS
    assert sorted(errors["path"]) == sorted(unreadable)
    assert errors["reason"].str.contains("not a readable PNG/JPEG image").all()
    assert (out / "summary.png").stat().st_size > 0
    flagged = predictions[predictions["is_anomaly"]]
    assert len(flagged) > 0, "no test image flagged: the overlays are not exercised"
    overlays = sorted(str(path.relative_to(out / "overlays")) for path in (out / "overlays").rglob("*.png"))
    assert overlays == sorted(str(Path(path).relative_to(folder)) for path in flagged["path"])
    assert f"{len(flagged)} of {scored} scored images flagged as anomalous" in result.output
    assert "2 unreadable" in result.output

    # The same files score as the training run scored them (same decoder, same detector).
    scores_by_path = dict(zip(predictions["path"], predictions["score"]))
    assert [scores_by_path[path] for path in expected_scores] == pytest.approx(
        list(expected_scores.values()), rel=1e-4, abs=1e-6
    )
    # ... and as the detector pyfunc scores them.
    pyfunc_scores = mlflow.pyfunc.load_model(use_tiny_patch_store.detector_uri).predict(
        pd.DataFrame({IMAGE_COLUMN: list(expected_scores)})
    )["score"]
    assert [scores_by_path[path] for path in expected_scores] == pytest.approx(
        pyfunc_scores.tolist(), rel=1e-4, abs=1e-6
    )


def test_allow_errors_exits_zero_and_an_all_readable_input_exits_zero(use_tiny_patch_store, new_images, tmp_path):
    folder, expected_scores, _ = new_images

    allowed = invoke_predict(
        "--model-uri", use_tiny_patch_store.detector_uri, "--input", str(folder),
        "--out", str(tmp_path / "allowed"), "--allow-errors",
    )
    list_file = tmp_path / "readable.txt"
    list_file.write_text("# the readable ones\n\n" + "\n".join(
        str(Path(path).relative_to(tmp_path)) for path in expected_scores
    ))
    readable = invoke_predict(
        "--model-uri", use_tiny_patch_store.detector_uri, "--input", str(list_file),
        "--out", str(tmp_path / "readable"),
    )

    assert allowed.exit_code == 0, allowed.output
    assert "2 unreadable" in allowed.output
    assert readable.exit_code == 0, readable.output
    readable_predictions = pd.read_csv(tmp_path / "readable" / "predictions.csv")
    assert readable_predictions["path"].tolist() == [str(tmp_path / Path(path).relative_to(tmp_path)) for path in expected_scores]
    assert pd.read_csv(tmp_path / "readable" / "errors.csv").empty


@pytest.mark.parametrize("form", ["models:/{name}/1", "models:/{name}@champion", "logged-model folder", "bundle folder"])
def test_every_form_of_model_uri_scores_the_same(use_tiny_patch_store, new_images, tmp_path, form):
    folder, expected_scores, _ = new_images
    if form.startswith("models:/"):
        model_uri, version = form.format(name=use_tiny_patch_store.model_name), "1"
    else:
        logged_model = mlflow.artifacts.download_artifacts(
            artifact_uri=use_tiny_patch_store.detector_uri, dst_path=str(tmp_path / "downloaded")
        )
        model_uri = logged_model if form == "logged-model folder" else str(Path(logged_model) / "artifacts" / "bundle")
        version = ""

    result = invoke_predict(
        "--model-uri", model_uri, "--input", str(folder / "**" / "*_[0-9].png"), "--out", str(tmp_path / "out"),
    )

    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False, dtype={"model_version": str})
    assert predictions["model_version"].unique().tolist() == [version]
    scores_by_path = dict(zip(predictions["path"], predictions["score"]))
    assert [scores_by_path[path] for path in expected_scores] == pytest.approx(
        list(expected_scores.values()), rel=1e-4, abs=1e-6
    )


def test_log_records_a_run_tagged_with_the_model_uri(use_tiny_patch_store, new_images, tmp_path):
    folder, expected_scores, _ = new_images
    model_uri = f"models:/{use_tiny_patch_store.model_name}@champion"

    result = invoke_predict(
        "--model-uri", model_uri, "--input", str(folder), "--out", str(tmp_path / "out"),
        "--allow-errors", "--log",
    )

    assert result.exit_code == 0, result.output
    # The store is shared by the session's tests: other predict runs may be there too.
    runs = mlflow.search_runs(
        search_all_experiments=True, output_format="list",
        filter_string=f"tags.predicted_model = '{model_uri}' and params.out = '{tmp_path / 'out'}'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.tags["predicted_model_version"] == "1"
    assert "method" not in run.data.tags  # compare must not take it for a training run
    assert run.data.metrics["predicted_images"] == len(expected_scores) and run.data.metrics["unreadable_images"] == 2
    artifacts = {entry.path for entry in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"predictions.csv", "errors.csv", "summary.png"} <= artifacts


# Bad input: one line, before any scoring


def test_an_input_without_images_is_refused(use_tiny_patch_store, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")

    result = invoke_predict("--model-uri", use_tiny_patch_store.detector_uri, "--input", str(empty), "--out", str(tmp_path / "out"))

    assert result.exit_code == 1
    assert "PredictInputError: no images in the folder" in result.output
    assert not (tmp_path / "out").exists()


def test_a_missing_input_is_refused(use_tiny_patch_store, tmp_path):
    result = invoke_predict(
        "--model-uri", use_tiny_patch_store.detector_uri, "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"),
    )

    assert result.exit_code == 1
    assert "is neither a folder" in result.output


@pytest.mark.parametrize("what", ["the run's Keras model", "a folder that is no detector"])
def test_a_model_that_is_not_a_defectlab_detector_is_refused(use_tiny_patch_store, new_images, tmp_path, what):
    folder, _, _ = new_images
    model_uri = f"runs:/{use_tiny_patch_store.run_id}/model" if what.startswith("the run") else str(folder)

    result = invoke_predict("--model-uri", model_uri, "--input", str(folder), "--out", str(tmp_path / "out"))

    assert result.exit_code == 1
    # One line (MLflow's download progress may come before it).
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "DetectorUnavailableError" in error_lines[0]
    assert "is not a defectlab detector" in error_lines[0]
    assert not (tmp_path / "out").exists()


def test_a_non_empty_out_is_refused_unless_overwrite(use_tiny_patch_store, new_images, tmp_path):
    folder, _, _ = new_images
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's own file")
    arguments = ["--model-uri", use_tiny_patch_store.detector_uri, "--input", str(folder), "--out", str(out), "--allow-errors"]

    refused = invoke_predict(*arguments)

    assert refused.exit_code == 1
    assert "exists and is not empty" in refused.output and "--overwrite" in refused.output
    assert not (out / "predictions.csv").exists()

    overwritten = invoke_predict(*arguments, "--overwrite")

    assert overwritten.exit_code == 0, overwritten.output
    assert (out / "predictions.csv").is_file() and (out / "keep.txt").read_text() == "the user's own file"


def test_without_a_terminal_progress_is_one_log_line_per_n_images(use_tiny_patch_store, new_images, tmp_path, caplog):
    folder, expected_scores, _ = new_images
    total = len(expected_scores) + 2
    with caplog.at_level(logging.INFO, logger="defectlab.serving.predict"):
        result = invoke_predict(
            "--model-uri", use_tiny_patch_store.detector_uri, "--input", str(folder), "--out", str(tmp_path / "out"),
            "--batch-size", "2", "--progress-every", "4", "--allow-errors",
        )

    assert result.exit_code == 0, result.output
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("predict:")]
    assert lines == [f"predict: {done} of {total} images done" for done in (*range(4, total, 4), total)]


def test_a_folder_lists_broken_links_and_link_loops_so_they_are_accounted_for(tmp_path):
    from defectlab.serving.predict import list_input_images

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes(b"not checked here")
    (folder / "loop.png").symlink_to(folder / "loop.png")  # a link to itself
    (folder / "gone.png").symlink_to(folder / "missing.png")
    (folder / "sub.png").mkdir()  # a folder named like an image is not an image
    assert [Path(path).name for path in list_input_images(str(folder))] == ["gone.png", "good.png", "loop.png"]
    # and decoding them says why, so predict writes them to errors.csv
    from defectlab.data import ImageDecodeError, ImageDecoder

    for name in ("loop.png", "gone.png"):
        with pytest.raises(ImageDecodeError, match="not a readable PNG/JPEG image"):
            ImageDecoder(64).decode(folder / name)
