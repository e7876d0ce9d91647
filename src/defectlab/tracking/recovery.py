"""When the tracking server is lost after training: the run's results are saved to a local folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import traceback
from pathlib import Path

from defectlab.tracking.preflight import RunNotLoggedError, _short_error, tracking_uri
from defectlab.tracking.runs import active_run_id

# Where a run's results go when the tracking server is lost after training.
RECOVERY_DIR_VARIABLE = "DEFECTLAB_RECOVERY_DIR"
DEFAULT_RECOVERY_DIR = "defectlab-recovery"

logger = logging.getLogger(__name__)

def recovery_folder(category: str, run_id: str | None) -> Path:
    """A new folder ``<DEFECTLAB_RECOVERY_DIR or ./defectlab-recovery>/<time>-<category>-<run>``."""
    root = Path(os.environ.get(RECOVERY_DIR_VARIABLE) or DEFAULT_RECOVERY_DIR)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{category}-{(run_id or 'norun')[:8]}"
    folder, suffix = root / name, 1
    while folder.exists():
        folder, suffix = root / f"{name}-{suffix}", suffix + 1
    folder.mkdir(parents=True)
    return folder.resolve()


@contextlib.contextmanager
def saving_locally_if_logging_fails(category: str, save_results):
    """Guard a run's logging tail: if it raises, keep the trained results as local files.

    Training is the expensive part; a tracking server or artifact store that
    goes away after it must not lose it. On any exception in the block,
    ``save_results(folder)`` writes the results into a new `recovery_folder`
    (with ``run.json``: run id, tracking URI and the error), the folder is
    logged at once (before MLflow's retries to end the run), and
    `RunNotLoggedError` naming the folder is raised from the original error.
    """
    try:
        yield
    except Exception as error:
        run_id = active_run_id()
        folder = recovery_folder(category, run_id)
        (folder / "run.json").write_text(json.dumps({
            "run_id": run_id,
            "tracking_uri": tracking_uri(),
            "error": _short_error(error, limit=5000),
            "traceback": traceback.format_exc(),
        }, indent=2))
        try:
            save_results(folder)
        except Exception as save_error:
            raise RunNotLoggedError(
                f"logging the run to {tracking_uri()} failed after training ({_short_error(error)}), "
                f"and saving the results in {folder} failed too ({_short_error(save_error)})"
            ) from error
        message = (
            f"logging the run to {tracking_uri()} failed after training ({_short_error(error)}); "
            f"the trained model, the detector bundle and the scores are saved in {folder}"
        )
        logger.error(message)
        raise RunNotLoggedError(message) from error
