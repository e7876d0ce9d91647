"""What a run logs besides parameters: metrics, ``scores.csv``, figures, the logged models.

A training run logs the contract's metrics, ``scores.csv``, the ranked grids and
plots, and the logged models ``model`` (Keras) and ``detector`` (pyfunc).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np

from defectlab.evaluation import figures
from defectlab.tracking.runs import log_metrics

DETECTOR_NAME = "detector"
KERAS_MODEL_NAME = "model"

def log_figure(figure, artifact_path: str) -> None:
    """Log a matplotlib figure as a PNG artifact and free it."""
    try:
        mlflow.log_figure(figure, artifact_path)
    finally:
        plt.close(figure)


def log_evaluation(evaluation, images: np.ndarray, extra_figures: dict | None = None) -> None:
    """The one logging path of every method: metrics, ``scores.csv``, plots, ranked grids.

    Parameters
    ----------
    evaluation : defectlab.evaluation.Evaluation
        Scored table (rows of the threshold/val/test splits), threshold and metrics.
    images : numpy.ndarray
        Images aligned with ``evaluation.scored_table`` rows, for the ranked grids.
    extra_figures : dict of {artifact_path: Figure}, optional
        Method-specific figures (e.g. ``heatmaps/...``).
    """
    log_metrics(evaluation.metrics)
    with tempfile.TemporaryDirectory() as folder:
        scores_path = Path(folder) / "scores.csv"
        evaluation.scores_frame().to_csv(scores_path, index=False)
        mlflow.log_artifact(str(scores_path))

    test = evaluation.test_rows()
    labels = evaluation.scored_table["label"].to_numpy()[test]
    scores = evaluation.scored_table["score"].to_numpy()[test]
    defect_types = evaluation.scored_table["defect_type"].to_numpy()[test]
    test_images = images[test]
    log_figure(figures.roc_figure(labels, scores), "plots/roc.png")
    log_figure(
        figures.score_histogram_figure(labels, scores, evaluation.threshold), "plots/score_hist.png"
    )
    for grid_name, indices in figures.ranked_indices(labels, scores).items():
        log_figure(
            figures.ranked_grid_figure(
                test_images[indices], scores[indices], defect_types[indices],
                figures.RANKED_TITLES[grid_name], threshold=evaluation.threshold,
            ),
            f"ranking/{grid_name}.png",
        )
    for artifact_path, figure in (extra_figures or {}).items():
        log_figure(figure, artifact_path)


def keras_model_signature(model):
    """The Keras network's tensor signature (any batch size), read from its input and output tensors.

    Nothing is run: predicting one example to infer it traced a predict
    function, about a second for a MobileNetV2 ensemble.
    """
    import keras
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(tensor, name: str | None = None) -> TensorSpec:
        return TensorSpec(np.dtype(keras.backend.standardize_dtype(tensor.dtype)), (-1, *tensor.shape[1:]), name)

    (input_tensor,) = model.inputs
    outputs = model.outputs
    if len(outputs) == 1:
        output_specs = [spec(outputs[0])]
    else:
        output_specs = [spec(output, f"output_{index}") for index, output in enumerate(outputs)]
    return ModelSignature(Schema([spec(input_tensor)]), Schema(output_specs))


def log_keras_model(model, name: str = KERAS_MODEL_NAME):
    """Log the Keras network as the logged model ``model``, with its tensor signature.

    Requirements are stated, not inferred: MLflow's inference reloads the model
    in a subprocess (a fresh TensorFlow import), 7 s of a 45 s demo run.
    """
    return mlflow.keras.log_model(
        model, name=name, signature=keras_model_signature(model), pip_requirements=_model_requirements()
    )


def log_detector(
    bundle_dir: Path, signature, input_example, name: str = DETECTOR_NAME,
    pip_requirements: list[str] | None = None,
):
    """Log the ``detector`` pyfunc as models-from-code over a bundle folder of plain files.

    The package's own source travels in ``code_paths`` so the detector loads in
    any process with MLflow, Keras and scikit-learn installed (for a bundle of
    ONNX networks, pass their ``pip_requirements``: onnxruntime in place of
    TensorFlow and Keras).
    """
    return mlflow.pyfunc.log_model(
        name=name, **_detector_model_arguments(bundle_dir, signature, input_example, pip_requirements)
    )


def save_detector(path: Path, bundle_dir: Path, signature, input_example,
                  pip_requirements: list[str] | None = None) -> Path:
    """`log_detector`'s model written as a local MLflow model folder ``path`` (no run); returns it."""
    mlflow.pyfunc.save_model(
        path=str(path), **_detector_model_arguments(bundle_dir, signature, input_example, pip_requirements)
    )
    return Path(path)


def _detector_model_arguments(bundle_dir: Path, signature, input_example, pip_requirements) -> dict:
    import defectlab

    package_dir = Path(defectlab.__file__).resolve().parent
    return {
        "python_model": str(package_dir / "serving" / "detector_model.py"),
        "artifacts": {"bundle": str(bundle_dir)},
        "code_paths": [str(package_dir)],
        "signature": signature,
        "input_example": input_example,
        "pip_requirements": _model_requirements() if pip_requirements is None else pip_requirements,
    }


def pinned_requirements(packages: list[str]) -> list[str]:
    """``package==version`` of each installed package (the versions a logged model was made with)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in packages]


def _model_requirements() -> list[str]:
    """Pinned packages a logged model needs (the versions installed here)."""
    return pinned_requirements(["mlflow", "tensorflow", "keras", "scikit-learn", "numpy", "pandas", "pillow", "faiss-cpu"])


def register_model(model_uri: str, name: str):
    """Register ``model_uri`` under ``name``; returns the `ModelVersion`."""
    return mlflow.register_model(model_uri, name)


def log_artifacts(folder: Path, artifact_path: str | None = None) -> None:
    """Log every file under ``folder`` as artifacts of the active run."""
    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def log_table(frame, artifact_path: str) -> None:
    """Log a pandas frame as a CSV artifact of the active run."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(artifact_path).name
        frame.to_csv(path, index=False)
        directory = str(Path(artifact_path).parent)
        mlflow.log_artifact(str(path), artifact_path=None if directory == "." else directory)


def log_dict(dictionary: dict, artifact_path: str) -> None:
    """Log a dict as a JSON or YAML artifact (by the file's suffix)."""
    mlflow.log_dict(dictionary, artifact_path)


def log_text(text: str, artifact_path: str) -> None:
    mlflow.log_text(text, artifact_path)
