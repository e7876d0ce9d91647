"""``defectlab export --format onnx``: parity without TensorFlow for every method, the parity failure, bad input.

The exported detector is scored in a fresh Python process in which TensorFlow
and Keras cannot be imported (`tests.tensorflow_blocker`), through
``mlflow.pyfunc.load_model`` and ``defectlab predict``, and compared with the
original detector scored here.

Detectors: the patch method's is `tiny_patch_store`'s (a fitted run: parity
on its ``scores.csv`` threshold rows). The metric and SSIM ones are bundles of
seeded, untrained networks fitted on the tiny dataset (parity on
``--category``): parity concerns the networks' arithmetic, not their
training, and an L2-softmax network trained from scratch for an epoch or two at
64 px has embedding features whose spread across good images is ~1e-9
(near-dead units), which LOF's standardisation magnifies until float32
rounding alone moves scores by 1e-3: the export refuses such a detector, as
it should (see docs/serving.md, "Exporting a detector without TensorFlow").
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from defectlab.cli import main
from defectlab.config import ConfigError, ExportConfig
from defectlab.methods import REGISTRY, get_method
from defectlab.methods.base import OnnxExport
from defectlab.serving.detector import load_detector
from defectlab.serving.export import (
    PARITY_RELATIVE_TOLERANCE, ParityError, check_parity, relative_differences, run_export,
)
from tests.tensorflow_blocker import blocked_environment

CHECKED_TEST_IMAGES = 6

# Run in the blocked child: load the export as MLflow does, score files, ask for maps, run predict.
SCORE_WITHOUT_TENSORFLOW = """
import json, sys
import mlflow
import pandas as pd

model_dir, paths_file, predict_input, predict_out, makes_maps = sys.argv[1:6]
paths = json.loads(open(paths_file).read())
model = mlflow.pyfunc.load_model(model_dir)
answer = {"scores": model.predict(pd.DataFrame({"image": paths}))["score"].tolist()}
if makes_maps == "true":
    with_maps = model.predict(pd.DataFrame({"image": paths[:1]}), params={"return_maps": True, "map_size": 8})
    answer["map_shape"] = [len(with_maps["anomaly_map"][0]), len(with_maps["anomaly_map"][0][0])]

from defectlab.config import PredictConfig
from defectlab.serving.predict import run_predict

result = run_predict(PredictConfig(model_uri=model_dir, input=predict_input, out=predict_out))
answer["predict_scored"] = result.scored
answer["blocked_modules"] = sorted(
    name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx")
)
print("ANSWER " + json.dumps(answer))
"""


def score_without_tensorflow(model_dir: Path, paths: list[str], work: Path, makes_maps: bool) -> dict:
    """Score ``paths`` with the exported detector in a child process that cannot import TensorFlow or Keras."""
    paths_file = work / "paths.json"
    paths_file.write_text(json.dumps(paths))
    predict_input = work / "predict-input.txt"
    predict_input.write_text("\n".join(paths) + "\n")
    completed = subprocess.run(
        [sys.executable, "-c", SCORE_WITHOUT_TENSORFLOW, str(model_dir), str(paths_file), str(predict_input),
         str(work / "predicted"), "true" if makes_maps else "false"],
        env=blocked_environment(work / "blocker"), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    (line,) = [line for line in completed.stdout.splitlines() if line.startswith("ANSWER ")]
    return json.loads(line[len("ANSWER "):])


def checked_test_images(data_root: Path, count: int = CHECKED_TEST_IMAGES) -> list[str]:
    """Good and defective test images of the tiny carpet (beyond the threshold split the export checked)."""
    good = sorted((data_root / "carpet" / "test" / "good").glob("*.png"))
    defects = sorted(path for path in (data_root / "carpet" / "test").glob("*/*.png") if path.parent.name != "good")
    return [str(path) for path in good[: count // 2] + defects[: count - count // 2]]


@pytest.mark.training
@pytest.mark.parametrize("source_detector", ["metric", "patch", "ssim"], indirect=True)
def test_exported_detector_scores_like_the_original_in_a_process_without_tensorflow(
    source_detector, tmp_path, tiny_dataset_root,
):
    out = tmp_path / "exported"

    result = run_export(ExportConfig(model_uri=source_detector.model_uri, out=str(out), **source_detector.options))

    assert (out / "MLmodel").is_file()
    assert result.parity.max_relative_difference <= PARITY_RELATIVE_TOLERANCE
    requirements = (out / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "tensorflow" not in requirements and "keras" not in requirements
    original = load_detector(source_detector.model_uri)
    paths = checked_test_images(tiny_dataset_root)
    original_scores = original.score(np.stack([original.decoder.decode(path) for path in paths]))[0]

    answer = score_without_tensorflow(out, paths, tmp_path, original.method.makes_maps)

    assert answer["blocked_modules"] == []
    np.testing.assert_allclose(answer["scores"], original_scores, rtol=PARITY_RELATIVE_TOLERANCE, atol=0)
    assert answer["predict_scored"] == len(paths)
    predicted = pd.read_csv(tmp_path / "predicted" / "predictions.csv")
    np.testing.assert_allclose(predicted["score"], original_scores, rtol=PARITY_RELATIVE_TOLERANCE, atol=0)
    if original.method.makes_maps:
        assert answer["map_shape"] == [8, 8]


def scale_first_weights(onnx_path: Path, factor: float) -> None:
    """Multiply the ONNX graph's first multi-valued float initializer (a layer's weights) by ``factor``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path))
    for initializer in graph.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype == np.float32 and weights.size > 1:
            initializer.CopyFrom(numpy_helper.from_array(weights * factor, initializer.name))
            break
    onnx.save(graph, str(onnx_path))


def tamper_patch_exports(monkeypatch, factor: float) -> None:
    """Make the patch method's ONNX export scale its extractor's first weights by ``factor``."""
    patch_method = get_method("patch")

    def write_tampered(detector, folder):
        description = patch_method.onnx_export.write(detector, folder)
        scale_first_weights(Path(folder) / description["extractor"], factor)
        return description

    monkeypatch.setitem(REGISTRY, "patch", dataclasses.replace(
        patch_method, onnx_export=OnnxExport(write=write_tampered, load=patch_method.onnx_export.load),
    ))


@pytest.mark.training
def test_a_tampered_graph_fails_the_export_saying_by_how_much(use_tiny_patch_store, tmp_path, monkeypatch):
    tamper_patch_exports(monkeypatch, 1.5)
    out = tmp_path / "exported"

    with pytest.raises(ParityError, match=r"beyond 0\.0001 relative: max relative difference \d\S* over \d+ images") as raised:
        run_export(ExportConfig(model_uri=use_tiny_patch_store.detector_uri, out=str(out)))
    assert "do not deploy it" in str(raised.value) and "parity_tolerance" not in str(raised.value)

    assert not out.exists()
    assert not list(tmp_path.glob(".exported-export-*"))  # the staging folder is gone too


def test_relative_differences_hand_computed():
    differences = relative_differences([2.0, -4.0, 0.0, 1e-9], [2.0002, -4.0, 1e-7, 2e-9])

    np.testing.assert_allclose(differences, [1e-4, 0.0, 0.1, 1e-3])


def test_check_parity_reports_the_worst_image():
    class FixedScores:
        def __init__(self, scores):
            self.scores = np.asarray(scores)

        def score(self, images):
            return self.scores, None

    report = check_parity(FixedScores([1.0, 2.0]), FixedScores([1.0, 2.00002]), ["a.png", "b.png"], np.zeros((2, 1)))
    assert report.worst_image == "b.png"
    assert report.max_relative_difference == pytest.approx(1e-5)

    with pytest.raises(ParityError, match=r"max relative difference 0\.01 over 2 images \(worst b\.png"):
        check_parity(FixedScores([1.0, 2.0]), FixedScores([1.0, 2.02]), ["a.png", "b.png"], np.zeros((2, 1)))


@pytest.mark.training
def test_an_export_registered_like_any_detector_is_tagged_runtime_onnx(use_tiny_patch_store, tmp_path):
    result = run_export(ExportConfig(
        model_uri=use_tiny_patch_store.detector_uri, out=str(tmp_path / "exported"),
        register_as="defectlab-patch-carpet-onnx",
    ))

    client = mlflow.MlflowClient()
    version = client.get_model_version("defectlab-patch-carpet-onnx", result.model_version)
    assert version.tags["runtime"] == "onnx"
    run = client.get_run(result.run_id)
    assert run.data.tags["runtime"] == "onnx"
    assert run.data.tags["exported_model"] == use_tiny_patch_store.detector_uri
    assert run.data.tags["metrics_from_run"] == use_tiny_patch_store.run_id
    assert "test_image_auroc" in run.data.metrics
    assert run.data.metrics["parity_max_relative_difference"] <= PARITY_RELATIVE_TOLERANCE
    registered = load_detector("models:/defectlab-patch-carpet-onnx/" + result.model_version)
    assert registered.bundle_config["runtime"] == "onnx"


# Bad input: one line each, before any work


def export_output(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["export", *arguments])
    return result.exit_code, result.output


def test_a_format_other_than_onnx_is_refused(tmp_path):
    exit_code, output = export_output("--model-uri", str(tmp_path), "--format", "tflite", "--out", str(tmp_path / "out"))

    assert exit_code == 1
    assert output.strip().splitlines() == ["Error: ConfigError: format must be one of onnx, got 'tflite'"]
    assert not (tmp_path / "out").exists()


@pytest.mark.training
def test_a_small_parity_miss_says_how_to_accept_it_and_that_tolerance_lets_it_through(
    use_tiny_patch_store, tmp_path, monkeypatch,
):
    tamper_patch_exports(monkeypatch, 1.0 + 2e-4)  # a difference the size of magnified rounding
    out = tmp_path / "exported"

    result = CliRunner().invoke(main, ["export", "--model-uri", use_tiny_patch_store.detector_uri, "--out", str(out)])

    assert result.exit_code == 1 and "ParityError" in result.output, result.output
    suggested = re.search(r"accept the difference with --parity-tolerance (\S+)", result.output)
    assert suggested, result.output
    measured = float(re.search(r"max relative difference (\S+) over", result.output).group(1))
    assert measured < float(suggested.group(1)) <= 3 * measured
    assert not out.exists()

    accepted = run_export(ExportConfig(
        model_uri=use_tiny_patch_store.detector_uri, out=str(out), parity_tolerance=float(suggested.group(1)),
    ))
    assert (out / "MLmodel").is_file()
    assert f"within {float(suggested.group(1)):g}" in accepted.summary()


def test_parity_tolerance_must_be_a_relative_difference():
    for value in (0.0, -1e-4, 0.2, 1.0):
        with pytest.raises(ConfigError, match="parity_tolerance must be a relative difference"):
            ExportConfig(model_uri="m", out="o", parity_tolerance=value)


def test_a_folder_that_is_not_a_detector_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")

    exit_code, output = export_output("--model-uri", str(tmp_path / "notes"), "--out", str(tmp_path / "out"))

    assert exit_code == 1
    assert len(output.strip().splitlines()) == 1
    assert "is not a defectlab detector" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.training
def test_a_logged_model_that_is_not_a_detector_is_refused(use_tiny_patch_store, tmp_path):
    exit_code, output = export_output(
        "--model-uri", f"runs:/{use_tiny_patch_store.run_id}/model", "--out", str(tmp_path / "out"),
    )

    assert exit_code == 1
    # MLflow's download progress bars share the output; the error itself is one line.
    (error_line,) = [line for line in output.splitlines() if line.startswith("Error:")]
    assert "is not a defectlab detector" in error_line


def test_an_out_folder_that_is_not_empty_is_refused_before_the_detector_is_read(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    exit_code, output = export_output("--model-uri", "runs:/no-such-run/detector", "--out", str(out))

    assert exit_code == 1
    assert output.strip().splitlines() == [
        f"Error: ExportError: out {out} exists and is not empty; choose another folder or pass --overwrite "
        "(it replaces an earlier export there)"
    ]
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_only_an_earlier_export(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    exit_code, output = export_output("--model-uri", "runs:/no-such-run/detector", "--out", str(out), "--overwrite")

    assert exit_code == 1
    assert "holds files that are not an exported model" in output
    assert (out / "keep.txt").read_text() == "mine"
