"""The ``detector`` pyfunc: images in, ``score`` and ``is_anomaly`` out.

A detector is a *bundle* folder of plain files (Keras ``.keras`` networks,
``.npy`` arrays and ``detector.json``) logged as MLflow's models-from-code:
``detector_model.py`` builds a `DefectDetector`, which reads the bundle in
``load_context``. Nothing live is pickled.

Input: a DataFrame with one column ``image`` whose values are PNG/JPEG bytes,
base64-encoded PNG/JPEG strings (what a JSON request to ``mlflow models
serve`` carries), or paths of image files. Output: a DataFrame with ``score``
(float, higher = more anomalous) and ``is_anomaly`` (``score > threshold``).
Bad input raises an `MlflowException` with ``INVALID_PARAMETER_VALUE``,
which the scoring server answers with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from defectlab.data.decoder import ImageDecodeError, ImageDecoder
from defectlab.errors import DefectlabError
from defectlab.methods import method_by_tag
from defectlab.serving.bundle import bundle_decoder, read_bundle

IMAGE_COLUMN = "image"
INPUT_EXAMPLE_SIZE = 64


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _image_bytes(value, row: int) -> bytes:
    """Bytes of one input value: raw bytes, a file path, or base64 text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        if not value:
            raise _invalid(f"row {row}: the image value is empty")
        if len(value) < 4096 and os.path.isfile(value):
            try:
                return Path(value).read_bytes()
            except OSError as error:
                raise _invalid(f"row {row}: cannot read the image file {value} ({error})") from None
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(
                f"row {row}: the image value is neither base64-encoded PNG/JPEG data nor an "
                "existing file path"
            ) from None
    raise _invalid(
        f"row {row}: the image value has type {type(value).__name__}; expected bytes, "
        "base64 text or a file path"
    )


def decode_image(value, decoder: ImageDecoder, row: int = 0) -> np.ndarray:
    """Decode one input value with the detector's `ImageDecoder`.

    Raises `MlflowException` (HTTP 400) naming the row and the problem.
    """
    payload = _image_bytes(value, row)
    try:
        return decoder.decode(payload)
    except ImageDecodeError as error:
        raise _invalid(f"row {row}: {error}") from None


def decode_images(model_input, decoder: ImageDecoder) -> np.ndarray:
    """Decode the ``image`` column of a pyfunc input into a ``uint8`` batch."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        raise _invalid(
            f"expected a DataFrame with a column {IMAGE_COLUMN!r}, got {type(model_input).__name__}"
        )
    if IMAGE_COLUMN not in model_input.columns:
        raise _invalid(
            f"the input has no column {IMAGE_COLUMN!r} (columns: {', '.join(map(str, model_input.columns)) or 'none'})"
        )
    values = model_input[IMAGE_COLUMN].tolist()
    if not values:
        raise _invalid("the input holds no images")
    batch = decoder.empty_batch(len(values))
    for row, value in enumerate(values):
        batch[row] = decode_image(value, decoder, row)
    return batch


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` image ``(h, w, channels)``."""
    array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class DefectDetector(mlflow.pyfunc.PythonModel):
    """pyfunc over a detector bundle: ``predict`` returns ``score`` and ``is_anomaly``."""

    def load_context(self, context):
        self.load_bundle(Path(context.artifacts["bundle"]))

    def load_bundle(self, bundle_dir: Path) -> "DefectDetector":
        self.bundle_config, self.scorer = read_bundle(Path(bundle_dir))
        self.method = method_by_tag(self.bundle_config["method"])
        self.decoder = bundle_decoder(self.bundle_config)
        self.threshold = float(self.bundle_config["threshold"])
        return self

    def predict(self, context, model_input, params=None):
        return self.predict_images(decode_images(model_input, self.decoder), params)

    def predict_images(self, images: np.ndarray, params=None) -> pd.DataFrame:
        """Scores of already-decoded images (the path tests and benchmarks use)."""
        params = params or {}
        if params.get("return_map"):
            if not self.method.makes_maps:
                raise _invalid(
                    f"return_map: the {self.bundle_config['method']} detector makes no anomaly maps"
                )
            scores, maps = self.scorer.score_images_with_maps(images)
            result = pd.DataFrame({"score": scores, "is_anomaly": scores > self.threshold})
            result["anomaly_map"] = [m.tolist() for m in maps]
            return result
        scores = np.asarray(self.scorer.score_images(images), dtype=np.float64)
        return pd.DataFrame({"score": scores, "is_anomaly": scores > self.threshold})


def detector_signature_and_example(image_size: int, grayscale: bool):
    """MLflow signature (``image`` in; ``score``, ``is_anomaly`` out; param ``return_map``) and an input example."""
    from mlflow.models import infer_signature

    channels = 1 if grayscale else 3
    example_image = np.full((INPUT_EXAMPLE_SIZE, INPUT_EXAMPLE_SIZE, channels), 128, dtype=np.uint8)
    input_example = pd.DataFrame(
        {IMAGE_COLUMN: [base64.b64encode(encode_png(example_image)).decode("ascii")]}
    )
    output_example = pd.DataFrame({"score": [0.0], "is_anomaly": [False]})
    signature = infer_signature(input_example, output_example, params={"return_map": False})
    return signature, input_example


def bundle_to_local_detector(bundle_dir: Path) -> DefectDetector:
    """A `DefectDetector` straight from a bundle folder, without MLflow."""
    return DefectDetector().load_bundle(Path(bundle_dir))


class DetectorUnavailableError(DefectlabError, RuntimeError):
    """A logged or registered detector cannot be loaded from its URI."""


def load_logged_detector(model_uri: str):
    """Load a logged ``detector`` pyfunc and the `DefectDetector` inside it.

    Parameters
    ----------
    model_uri : str
        ``models:/<name>@champion``, ``models:/<name>/<version>``, ``runs:/<run_id>/detector``...

    Returns
    -------
    pyfunc_model : mlflow.pyfunc.PyFuncModel
        Its ``predict`` is the path the scoring server takes (signature enforcement, decoding).
    detector : DefectDetector
        The loaded python model: ``bundle_config`` (``detector.json``: ``method``,
        ``image_size``, ``grayscale``, ``threshold``, the method's own entries),
        ``threshold`` (``score > threshold`` is flagged) and ``scorer``.
    """
    try:
        pyfunc_model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as error:
        raise DetectorUnavailableError(f"cannot load detector {model_uri}: {error.message}") from None
    except OSError as error:
        raise DetectorUnavailableError(f"cannot load detector {model_uri}: {error}") from None
    try:
        python_model = pyfunc_model.unwrap_python_model()
    except MlflowException:
        python_model = None  # another flavor (e.g. the Keras ``model``), not a detector pyfunc
    if not isinstance(python_model, DefectDetector):
        raise DetectorUnavailableError(
            f"{model_uri} is not a defectlab detector (its python model is a "
            f"{type(python_model).__name__})"
        )
    return pyfunc_model, python_model
