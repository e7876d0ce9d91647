"""Optuna studies over a method's settings, one nested MLflow run per trial.

- `config`: `TuneConfig` (no TensorFlow import, so the CLI starts fast);
- `study`: search spaces, storage, the objective, workers and the study summary.

The names of `study` are reachable from here too (``tuning.run_study``); they
load Keras on first use.
"""

import importlib

from defectlab.tuning.config import TuneConfig


def __getattr__(name: str):
    study = importlib.import_module("defectlab.tuning.study")
    try:
        return getattr(study, name)
    except AttributeError:
        raise AttributeError(f"module 'defectlab.tuning' has no attribute {name!r}") from None


__all__ = ["TuneConfig"]
