"""Optuna studies over a method's settings, one nested MLflow run per trial.

- `config`: `TuneConfig` (no TensorFlow import, so the CLI starts fast);
- `search_space`: search-space files, their validation, the draws, the fixed settings;
- `storage`: the Optuna storage (retries, heartbeats), the seeded sampler, the study;
- `objective`: one trial (a nested tracked run, pruning on the validation split);
- `interrupts` and `worker`: one worker's trial loop, Ctrl-C never lost;
- `report`: the summary, table and plots on the parent run;
- `study`: `run_study`, which ties them together.

The public names of these modules are reachable from here too
(``tuning.run_study``); they load Keras on first use.
"""

import importlib

from defectlab.tuning.config import TuneConfig

_MODULES = ("study", "search_space", "storage", "objective", "worker", "interrupts", "report", "errors")


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"defectlab.tuning.{name}")
    for module_name in _MODULES:
        module = importlib.import_module(f"defectlab.tuning.{module_name}")
        if not name.startswith("_") and hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'defectlab.tuning' has no attribute {name!r}")


__all__ = ["TuneConfig"]
