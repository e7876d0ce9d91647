"""Every MLflow call of defectlab lives in this package.

- `preflight`: the tracking server and artifact store answer, before any work;
- `runs`: the one run context manager (`tracked_run`), tags, searches, timing;
- `artifacts`: metrics, ``scores.csv``, figures, the logged ``model`` and ``detector``;
- `lineage`: the data a run used, as MLflow dataset inputs, and the files it skipped;
- `recovery`: a run's results saved locally when the server is lost after training;
- `callbacks`: the Keras per-epoch logger (the only module here that imports Keras,
  so ``compare`` and ``promote`` never load TensorFlow);
- `registry`: the model registry: registration and promotion by alias.
"""

from defectlab.tracking.artifacts import (
    DETECTOR_NAME, KERAS_MODEL_NAME, log_artifacts, log_detector, log_dict, log_evaluation,
    log_figure, log_keras_model, log_table, log_text, pinned_requirements, register_model, save_detector,
)
from defectlab.tracking.lineage import EVALUATION_CONTEXTS, TRAINING_CONTEXTS, log_dataset_inputs
from defectlab.tracking.preflight import (
    ArtifactStoreError, RunNotLoggedError, TrackingUnavailableError, check_artifact_store,
    check_tracking_server, tracking_uri,
)
from defectlab.tracking.recovery import (
    DEFAULT_RECOVERY_DIR, RECOVERY_DIR_VARIABLE, recovery_folder, saving_locally_if_logging_fails,
)
from defectlab.tracking.runs import (
    ExperimentNotFoundError, Stopwatch, active_run_id, child_run_ids, end_run_by_id, log_metrics,
    log_params, log_tags, prepare_tracking_store, record_failed_run, search_experiment_runs,
    set_run_tags, sqlite_creation_lock, tracked_run, use_experiment_for_new_runs,
)

__all__ = [
    "DETECTOR_NAME", "EVALUATION_CONTEXTS", "KERAS_MODEL_NAME", "TRAINING_CONTEXTS", "DEFAULT_RECOVERY_DIR", "RECOVERY_DIR_VARIABLE",
    "ArtifactStoreError", "ExperimentNotFoundError", "RunNotLoggedError", "Stopwatch",
    "TrackingUnavailableError", "active_run_id", "check_artifact_store", "check_tracking_server",
    "child_run_ids", "end_run_by_id", "log_artifacts", "log_detector", "log_dict",
    "log_dataset_inputs", "log_evaluation", "log_figure", "log_keras_model", "log_metrics", "log_params", "log_table",
    "log_tags", "log_text", "prepare_tracking_store", "record_failed_run", "recovery_folder",
    "pinned_requirements", "register_model", "save_detector", "saving_locally_if_logging_fails", "search_experiment_runs",
    "set_run_tags", "sqlite_creation_lock", "tracked_run", "tracking_uri",
    "use_experiment_for_new_runs",
]
