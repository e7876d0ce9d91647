"""Keras training pieces every gradient-trained method shares: optimisers, the NaN guard, progress."""

from __future__ import annotations

import math
import sys

import keras

from defectlab.errors import DefectlabError


class NonFiniteLossError(DefectlabError, RuntimeError):
    """Training produced a NaN or infinite loss."""


class DivergedTrainingError(DefectlabError, RuntimeError):
    """Training diverged: an epoch's loss ended orders of magnitude above where training started."""


# An epoch whose mean loss exceeds the first batch's by this factor has diverged: a softmax
# loss starts near ln(classes) and an SSIM loss is at most 2, so no healthy run gets there
# (--learning-rate 1e6 reached 4.4e7 in its first epoch).
DIVERGENCE_FACTOR = 100.0


class RaiseOnBadLoss(keras.callbacks.Callback):
    """Stop training as soon as the loss is NaN or infinite (`NonFiniteLossError`), or when an
    epoch's loss ends `DIVERGENCE_FACTOR` times above the first batch's (`DivergedTrainingError`)."""

    def on_train_begin(self, logs=None):
        self.first_batch_loss = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if not math.isfinite(float(loss)):
            raise NonFiniteLossError(f"training loss became {float(loss)} at batch {batch}")
        if self.first_batch_loss is None:
            self.first_batch_loss = float(loss)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.first_batch_loss is None or self.first_batch_loss <= 0:
            return
        if float(loss) > DIVERGENCE_FACTOR * self.first_batch_loss:
            raise DivergedTrainingError(
                f"training diverged: the loss rose from {self.first_batch_loss:.4g} (first batch) to "
                f"{float(loss):.4g} (epoch {epoch + 1}); the run is not registered; lower learning_rate"
            )


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
