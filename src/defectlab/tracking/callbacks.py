"""The Keras callback that logs per-epoch metrics: the only tracking module that imports Keras.
"""

from __future__ import annotations

import logging
import math

import keras
import mlflow

from defectlab.tracking.preflight import _short_error, tracking_uri

logger = logging.getLogger(__name__)

class EpochMetricsLogger(keras.callbacks.Callback):
    """Log Keras's per-epoch ``loss``/``accuracy`` as ``<prefix>train_loss``/``train_accuracy``.

    ``step`` is the epoch number (0-based). ``on_epoch`` (optional) is called
    with ``(epoch, logs)`` after logging, e.g. for tuning's pruning.
    """

    KEY_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy"}

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix
        self.logging_failed = False

    def on_epoch_end(self, epoch, logs=None):
        metrics = {
            f"{self.prefix}{self.KEY_NAMES[key]}": float(value)
            for key, value in (logs or {}).items()
            if key in self.KEY_NAMES and math.isfinite(float(value))
        }
        if not metrics or self.logging_failed:
            return
        try:
            mlflow.log_metrics(metrics, step=epoch)
        except Exception as error:
            # Losing the server must not lose the training: train on without per-epoch
            # metrics; the run's tail saves the results locally if the server stays away.
            self.logging_failed = True
            logger.warning(
                "could not log epoch metrics to %s (%s); training goes on without per-epoch logging",
                tracking_uri(), _short_error(error),
            )
