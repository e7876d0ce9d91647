"""A real ``mlflow models serve`` of a map-making detector returns maps on request and HTTP 400 for a bad param;
``mlflow run . -e predict`` scores a folder.

The detector is the tiny patch run of `tiny_patch_store` (random backbone, 64 px: seconds).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from .conftest import http_answer, run_entry_point, served_model
from .test_serving import base64_file

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def patch_server(tiny_patch_store):
    """``mlflow models serve -m runs:/<patch run>/detector --env-manager local`` on a free port."""
    with served_model(tiny_patch_store.detector_uri, tiny_patch_store.folder, tiny_patch_store.uri) as server:
        yield server


def request_body(images: list[str], params: dict | None = None) -> bytes:
    body = {"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


def test_the_server_returns_maps_with_return_maps(tiny_patch_store, patch_server):
    test_rows = tiny_patch_store.scores[tiny_patch_store.scores["split"] == "test"]
    images = [base64_file(path) for path in test_rows["path"].head(3)]

    plain_status, plain_text = http_answer(patch_server.invocations, request_body(images))
    maps_status, maps_text = http_answer(
        patch_server.invocations, request_body(images, {"return_maps": True, "map_size": 8})
    )

    assert plain_status == 200, plain_text
    assert maps_status == 200, maps_text
    plain = json.loads(plain_text)["predictions"]
    with_maps = json.loads(maps_text)["predictions"]
    assert all(set(prediction) == {"score", "is_anomaly"} for prediction in plain)
    assert [prediction["score"] for prediction in with_maps] == pytest.approx(
        [prediction["score"] for prediction in plain], rel=1e-5
    )
    for prediction in with_maps:
        anomaly_map = prediction["anomaly_map"]
        assert len(anomaly_map) == 8 and all(len(row) == 8 for row in anomaly_map)
        assert all(value >= 0 for row in anomaly_map for value in row)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"return_maps": True, "map_size": 0}, "map_size must be from 1"),
        ({"return_maps": True, "map_size": "many"}, "map_size"),
        ({"return_maps": "maybe"}, "return_maps"),
    ],
    ids=["map-size-zero", "map-size-text", "return-maps-text"],
)
def test_a_bad_param_gets_http_400_and_the_server_keeps_answering(tiny_patch_store, patch_server, params, message):
    image = base64_file(tiny_patch_store.scores["path"].iloc[0])

    status, text = http_answer(patch_server.invocations, request_body([image], params))

    assert status == 400, text
    assert message in json.loads(text)["message"]
    assert http_answer(patch_server.invocations, request_body([image]))[0] == 200
    assert patch_server.process.poll() is None


def test_predict_entry_point_scores_a_folder(tiny_patch_store, tmp_path):
    folder = tmp_path / "incoming" / "nested"
    folder.mkdir(parents=True)
    test_rows = tiny_patch_store.scores[tiny_patch_store.scores["split"] == "test"].head(4)
    for index, path in enumerate(test_rows["path"]):  # defect types reuse file names: number them
        shutil.copyfile(path, folder / f"{index}_{Path(path).name}")
    out = tmp_path / "out"

    completed = run_entry_point(
        PROJECT_ROOT, "predict",
        {"model_uri": f"models:/{tiny_patch_store.model_name}@champion", "input": str(tmp_path / "incoming"),
         "out": str(out), "log": "true"},
        tiny_patch_store.uri, timeout_seconds=600,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "scored images flagged as anomalous" in completed.stdout
    predictions = pd.read_csv(out / "predictions.csv", dtype={"model_version": str})
    assert len(predictions) == len(test_rows)
    assert predictions["model_version"].unique().tolist() == ["1"]
    assert sorted(predictions["score"]) == pytest.approx(sorted(test_rows["score"]), rel=1e-4, abs=1e-6)
