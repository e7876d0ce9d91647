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

Maps, for methods that make them (``method.makes_maps``): the pyfunc params
``{"return_maps": true, "map_size": 64}`` add a column ``anomaly_map``, each
image's map as a list of ``map_size`` rows of ``map_size`` floats. The values
are the method's own, not rescaled (the units of ``score``, higher = more
anomalous: maps of different requests compare, and the threshold keeps its
meaning on them), bilinearly resampled from the detector's image size
(Pillow, antialiased when shrinking). ``map_size`` defaults to the
detector's image size and must be an integer from 1 to `MAX_MAP_SIZE`.
Without params, or with ``return_maps`` false, the output is exactly
``score`` and ``is_anomaly``. Bad params are HTTP 400 too: ``map_size`` out
of range or not an integer, ``return_maps`` not a bool or true for a method
without maps. Called in process, an unknown key is refused as well; the
scoring server drops keys the signature does not declare before the model
sees them (MLflow logs a warning), so there it is ignored.
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
from defectlab.serving.bundle import BUNDLE_CONFIG_FILE, bundle_decoder, read_bundle

IMAGE_COLUMN = "image"
MAP_COLUMN = "anomaly_map"
INPUT_EXAMPLE_SIZE = 64
# The params of a request; a 1024 x 1024 map is already a million floats of JSON per image.
MAP_PARAMS = ("return_maps", "map_size")
MAX_MAP_SIZE = 1024


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


def resize_map(anomaly_map: np.ndarray, map_size: int) -> np.ndarray:
    """An anomaly map ``(h, w)`` bilinearly resampled to ``(map_size, map_size)`` float32; values are not rescaled."""
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.shape == (map_size, map_size):
        return anomaly_map
    resized = Image.fromarray(anomaly_map, mode="F").resize(
        (map_size, map_size), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


class DefectDetector(mlflow.pyfunc.PythonModel):
    """pyfunc over a detector bundle: ``predict`` returns ``score`` and ``is_anomaly`` (and maps on request)."""

    def load_context(self, context):
        self.load_bundle(Path(context.artifacts["bundle"]))

    def load_bundle(self, bundle_dir: Path) -> "DefectDetector":
        self.bundle_config, self.scorer = read_bundle(Path(bundle_dir))
        self.method = method_by_tag(self.bundle_config["method"])
        self.decoder = bundle_decoder(self.bundle_config)
        self.threshold = float(self.bundle_config["threshold"])
        return self

    # Type-hinted so MLflow knows the input is a DataFrame (and stops asking for hints in every run).
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        map_size = self.requested_map_size(params)  # bad params are refused before any decoding
        return self._predictions(decode_images(model_input, self.decoder), map_size)

    def predict_images(self, images: np.ndarray, params=None) -> pd.DataFrame:
        """Predictions of already-decoded ``uint8`` images (the path tests and benchmarks use)."""
        return self._predictions(images, self.requested_map_size(params))

    def _predictions(self, images: np.ndarray, map_size: int | None) -> pd.DataFrame:
        scores, anomaly_maps = self.score(images, with_maps=map_size is not None)
        result = pd.DataFrame({"score": scores, "is_anomaly": scores > self.threshold})
        if map_size is not None:
            result[MAP_COLUMN] = [resize_map(anomaly_map, map_size).tolist() for anomaly_map in anomaly_maps]
        return result

    def score(self, images: np.ndarray, with_maps: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores ``(n,)`` float64 (higher = more anomalous) and, ``with_maps``, maps ``(n, h, w)`` at the image size.

        The one scoring call behind ``predict`` and ``defectlab predict``;
        ``with_maps`` needs a method that ``makes_maps`` (None otherwise).
        """
        if with_maps:
            scores, anomaly_maps = self.scorer.score_images_with_maps(images)
            return np.asarray(scores, dtype=np.float64), np.asarray(anomaly_maps)
        return np.asarray(self.scorer.score_images(images), dtype=np.float64), None

    def requested_map_size(self, params) -> int | None:
        """The ``map_size`` that pyfunc ``params`` ask maps at, or None when they ask for none.

        Raises `MlflowException` (HTTP 400) for an unknown key, a ``return_maps``
        that is not a bool, a ``map_size`` that is not an integer from 1 to
        `MAX_MAP_SIZE`, or ``return_maps`` true on a method that makes no maps.
        """
        if not params:
            return None
        if not isinstance(params, dict):
            raise _invalid(f"params must be a mapping, got {type(params).__name__}")
        unknown = sorted(set(map(str, params)) - set(MAP_PARAMS))
        if unknown:
            raise _invalid(f"unknown params {unknown}; known: {', '.join(MAP_PARAMS)}")
        return_maps = params.get("return_maps", False)
        if not isinstance(return_maps, (bool, np.bool_)):
            raise _invalid(f"return_maps must be true or false, got {return_maps!r}")
        map_size = params.get("map_size")
        map_size = self.decoder.image_size if map_size is None else map_size
        if isinstance(map_size, (bool, np.bool_)) or not isinstance(map_size, (int, np.integer)):
            raise _invalid(f"map_size must be an integer, got {map_size!r}")
        if not 1 <= map_size <= MAX_MAP_SIZE:
            raise _invalid(f"map_size must be from 1 to {MAX_MAP_SIZE}, got {map_size}")
        if not return_maps:
            return None
        if not self.method.makes_maps:
            raise _invalid(
                f"return_maps: the {self.bundle_config['method']} detector makes no anomaly maps"
            )
        return int(map_size)


def detector_signature_and_example(image_size: int, grayscale: bool):
    """MLflow signature and an input example of the ``detector`` pyfunc.

    Inputs ``image``; outputs ``score``, ``is_anomaly``; params ``return_maps``
    (boolean, default false) and ``map_size`` (long, default ``image_size``),
    declared so that the scoring server passes them on to `DefectDetector.predict`
    (MLflow drops params a signature does not declare, with a warning).
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ParamSchema, ParamSpec

    channels = 1 if grayscale else 3
    example_image = np.full((INPUT_EXAMPLE_SIZE, INPUT_EXAMPLE_SIZE, channels), 128, dtype=np.uint8)
    input_example = pd.DataFrame(
        {IMAGE_COLUMN: [base64.b64encode(encode_png(example_image)).decode("ascii")]}
    )
    output_example = pd.DataFrame({"score": [0.0], "is_anomaly": [False]})
    columns = infer_signature(input_example, output_example)
    params = ParamSchema([
        ParamSpec("return_maps", "boolean", False),
        ParamSpec("map_size", "long", int(image_size)),
    ])
    return ModelSignature(inputs=columns.inputs, outputs=columns.outputs, params=params), input_example


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


def load_detector(model_uri: str) -> DefectDetector:
    """The `DefectDetector` behind a URI or a local folder.

    ``model_uri`` is what `load_logged_detector` takes (``runs:/``,
    ``models:/<name>/<version>``, ``models:/<name>@<alias>``, a downloaded
    logged-model folder holding ``MLmodel``) or a bundle folder holding
    ``detector.json`` (e.g. a recovery folder's ``bundle/``). Anything else
    raises `DetectorUnavailableError` saying what it is not.
    """
    folder = Path(model_uri).expanduser()
    if folder.is_dir():
        if (folder / BUNDLE_CONFIG_FILE).is_file():
            return bundle_to_local_detector(folder)
        if not (folder / "MLmodel").is_file():
            raise DetectorUnavailableError(
                f"{model_uri} is not a defectlab detector: the folder holds neither "
                f"{BUNDLE_CONFIG_FILE} (a detector bundle) nor MLmodel (a logged detector)"
            )
    return load_logged_detector(model_uri)[1]
