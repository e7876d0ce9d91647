"""A child-process environment in which TensorFlow and Keras cannot be imported.

`blocked_environment` writes a ``sitecustomize.py`` that Python runs at start-up
(before MLflow or anything else is imported): it puts a `sys.meta_path`
finder first that raises ImportError for ``tensorflow``, ``keras`` (and their
relatives ``tf_keras`` and ``tf2onnx``, which import TensorFlow). Any process
started with the environment, including ``mlflow models serve`` and its
workers, is blocked.
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCKED_PACKAGES = ("tensorflow", "keras", "tf_keras", "tf2onnx")

SITECUSTOMIZE = f'''\
import sys

BLOCKED_PACKAGES = {BLOCKED_PACKAGES!r}


class TensorFlowBlocker:
    """Refuses every import of a blocked package, whoever asks."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED_PACKAGES:
            raise ImportError(f"{{name}} is blocked in this process (no TensorFlow or Keras)")
        return None


sys.meta_path.insert(0, TensorFlowBlocker())
'''


def blocked_environment(folder: Path, environment: dict | None = None) -> dict:
    """``environment`` (default: this process's) with ``folder``'s blocking ``sitecustomize`` first on PYTHONPATH."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    environment = dict(os.environ if environment is None else environment)
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(folder), environment.get("PYTHONPATH", "")) if part
    )
    return environment
