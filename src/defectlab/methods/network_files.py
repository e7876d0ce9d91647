"""The network files of a detector bundle: Keras ``.keras`` files, or ONNX graphs of an exported detector.

A detector saves each network with `save_network` and reads it back with
`load_network`, which goes by the file's suffix: ``.keras`` loads with Keras,
``.onnx`` runs with onnxruntime in an `OnnxNetwork` without importing
TensorFlow or Keras. `OnnxNetwork` answers the part of Keras's model API the
detectors call (``predict_on_batch``, ``input_shape``, ``output_shape``), so a
method's own detector class scores with an ONNX network in place of its Keras
one and nothing after the network is written twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KERAS_FORMAT = "keras"
ONNX_FORMAT = "onnx"
NETWORK_FORMATS = (KERAS_FORMAT, ONNX_FORMAT)


def save_network(model, folder: Path, stem: str, network_format: str = KERAS_FORMAT) -> str:
    """Write the Keras ``model`` into ``folder`` as ``<stem>.keras`` or ``<stem>.onnx``; returns the file's name.

    ``onnx`` needs tf2onnx; Keras 3 exports only a model that has been called,
    so the model first predicts one all-zero image. The graph's batch size is free.
    """
    if network_format not in NETWORK_FORMATS:
        raise ValueError(f"network_format must be one of {', '.join(NETWORK_FORMATS)}, got {network_format!r}")
    file_name = f"{stem}.{network_format}"
    path = Path(folder) / file_name
    if network_format == KERAS_FORMAT:
        model.save(path)
    else:
        model.predict(np.zeros((1, *model.input_shape[1:]), dtype=np.float32), verbose=0)
        model.export(str(path), format="onnx", verbose=False)
    return file_name


def load_network(path: Path):
    """The network saved at ``path``: a ``keras.Model`` for ``.keras``, an `OnnxNetwork` for ``.onnx``."""
    path = Path(path)
    if path.suffix == f".{ONNX_FORMAT}":
        return OnnxNetwork(path)
    import keras

    return keras.models.load_model(path, compile=False)


class OnnxNetwork:
    """An ONNX graph with one input, run on the CPU by onnxruntime.

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file (as written by `save_network`).

    Attributes
    ----------
    input_shape, output_shape : tuple
        Of the first input and (for several outputs) a list of each output's
        shape, ``None`` for the free batch dimension, as Keras reports them.
    """

    def __init__(self, path):
        import onnxruntime

        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        (graph_input,) = self.session.get_inputs()
        self.input_name = graph_input.name
        self.input_shape = _keras_shape(graph_input.shape)
        outputs = self.session.get_outputs()
        shapes = [_keras_shape(output.shape) for output in outputs]
        self.output_shape = shapes[0] if len(shapes) == 1 else shapes

    def predict_on_batch(self, images):
        """The network's output(s) for one batch: an array, or a list for several outputs."""
        outputs = self.session.run(None, {self.input_name: np.asarray(images, dtype=np.float32)})
        return outputs[0] if len(outputs) == 1 else outputs


def _keras_shape(onnx_shape) -> tuple:
    """An ONNX shape (symbolic names for free dimensions) in Keras's form (``None`` for them)."""
    return tuple(size if isinstance(size, int) else None for size in onnx_shape)
