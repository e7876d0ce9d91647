"""``mlflow models serve`` of an exported (ONNX) detector in a server process that cannot import TensorFlow or Keras."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defectlab.config import ExportConfig
from defectlab.serving.export import PARITY_RELATIVE_TOLERANCE, run_export
from tests.tensorflow_blocker import blocked_environment

from .conftest import http_answer, served_model, subprocess_environment
from .test_predict_serving import base64_file, request_body

pytestmark = pytest.mark.integration


def test_mlflow_serves_an_exported_detector_without_tensorflow(use_tiny_patch_store, tmp_path):
    store = use_tiny_patch_store
    out = tmp_path / "exported"
    run_export(ExportConfig(model_uri=store.detector_uri, out=str(out)))
    test_rows = store.scores[store.scores["split"] == "test"].head(3)
    environment = blocked_environment(tmp_path / "blocker", subprocess_environment(store.uri))

    with served_model(str(out), tmp_path, store.uri, environment=environment) as server:
        status, text = http_answer(server.invocations, request_body([base64_file(p) for p in test_rows["path"]]))
        maps_status, maps_text = http_answer(
            server.invocations, request_body([base64_file(test_rows["path"].iloc[0])], {"return_maps": True, "map_size": 4}),
        )

    assert status == 200, text
    served_scores = [prediction["score"] for prediction in json.loads(text)["predictions"]]
    np.testing.assert_allclose(served_scores, test_rows["score"], rtol=PARITY_RELATIVE_TOLERANCE, atol=0)
    assert maps_status == 200, maps_text
    assert np.asarray(json.loads(maps_text)["predictions"][0]["anomaly_map"]).shape == (4, 4)
    assert "is blocked in this process" not in server.log_path.read_text()
