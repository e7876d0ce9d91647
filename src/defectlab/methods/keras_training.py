"""Keras training pieces every gradient-trained method shares: optimisers, the NaN guard, progress."""

from __future__ import annotations

import math
import sys

import keras

from defectlab.errors import DefectlabError


class NonFiniteLossError(DefectlabError, RuntimeError):
    """Training produced a NaN or infinite loss."""


class RaiseOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop training with `NonFiniteLossError` as soon as the loss is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(f"training loss became {float(loss)} at batch {batch}")


def progress_verbosity() -> int:
    """Keras's progress bar in a terminal; one line per epoch in logs (``mlflow run``, CI)."""
    return 1 if sys.stdout.isatty() else 2


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """SGD with momentum 0.9 (the article's choice) or Adam."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")


def accelerator() -> str:
    """``GPU`` when TensorFlow sees one, else ``CPU`` (the run's tag ``device``)."""
    import tensorflow as tf

    return "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
