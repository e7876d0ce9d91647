"""Optuna studies over a method's training settings, one nested MLflow run per trial.

``run_study`` is what ``defectlab tune`` and ``mlflow run . -e tune`` call:

1. The search space (the built-in one of the method, or a YAML file) is
   validated against the fixed training settings before anything trains.
2. A parent MLflow run is opened for this invocation of the study (tags
   ``study_name``, ``method``, ``category``).
3. Each trial draws its settings (`suggest_training_params`, the one place
   with ``trial.suggest_*``), trains a full tracked run of the method as a
   nested run (tags ``trial_number``, ``study_name``, ``trial_state``) and
   returns its ``val_image_auroc``, or its ``val_pixel_auroc`` when the study
   tunes for localisation (``objective``). The ``test`` split is never looked
   at by the objective; it only feeds each run's final figures. Every few
   epochs the validation split is scored so that a
   `optuna.pruners.MedianPruner` can stop hopeless trials (image AUROC: a
   study maximising ``val_pixel_auroc`` does not prune). A trial that draws the settings of a completed
   one reuses its run and value instead (``duplicate_of``).
4. When this worker is done, the parent logs the best settings, the best
   trial's run id and test figures, a trials table and Optuna's plots.

Several workers (processes, machines) on the same ``storage`` and study name
share one study, and together finish ``n_trials`` trials (complete or pruned).
A worker that dies mid-trial stops sending heartbeats; the next worker to look
marks its trial failed and enqueues a retry with the same settings.
"""

from __future__ import annotations

import dataclasses
import logging

import optuna

from defectlab import data, runner, tracking
from defectlab.config import ConfigError
from defectlab.methods import get_method
from defectlab.tuning.config import TuneConfig
from defectlab.tuning.objective import StudyObjective, dataset_key
from defectlab.tuning.report import StudyResult, log_study_summary, study_result
from defectlab.tuning.search_space import resolve_search_space
from defectlab.tuning.storage import describe_url, open_study
from defectlab.tuning.worker import run_worker_trials

logger = logging.getLogger(__name__)


def run_study(tune_config: TuneConfig, base_config, pruner: optuna.pruners.BasePruner | None = None) -> StudyResult:
    """Validate, open (or join) the study, run this worker's trials under a parent run, summarise.

    Parameters
    ----------
    tune_config : TuneConfig
    base_config : RunConfig
        The config of ``tune_config.method``.
        The training settings held fixed (the searched ones are replaced per trial).
    pruner : optuna.pruners.BasePruner, optional
        Default: `optuna.pruners.MedianPruner` (none when ``pruning_interval`` is 0).
    """
    method = get_method(tune_config.method)
    if type(base_config) is not method.config_class:
        raise ConfigError(
            f"method={tune_config.method} needs a {method.config_class.__name__}, "
            f"got {type(base_config).__name__}"
        )
    data_root = data.resolve_data_root(base_config.data_dir)
    search_space = resolve_search_space(tune_config, base_config, data_root)
    method.check(base_config)  # weights files and downloads, before the dataset is read
    # Loaded once, before any run exists: a missing category fails here, not in every trial.
    grayscale = method.grayscale(base_config)
    dataset = runner.load_dataset(base_config, grayscale)
    check_objective_data(tune_config, dataset)
    tracking.prepare_tracking_store()
    study = open_study(tune_config, pruner)
    parent_tags = {
        "study_name": tune_config.resolved_study_name,
        "method": method.tag,
        "category": tune_config.category,
        "dataset": dataset.dataset_name,
        "storage": describe_url(tune_config.storage),
    }
    with tracking.tracked_run(
        dataclasses.asdict(tune_config), parent_tags, run_name=f"study-{tune_config.resolved_study_name}"
    ) as parent:
        tracking.log_dataset_inputs(dataset)
        tracking.log_dict(search_space, "search_space.yaml")
        tracking.log_dict(dataclasses.asdict(base_config), "fixed_settings.json")
        objective = StudyObjective(
            tune_config, base_config, search_space, parent.info.run_id,
            datasets={dataset_key(base_config, grayscale): dataset},
        )
        try:
            run_worker_trials(study, objective, tune_config)
        finally:
            # Also after Ctrl-C or a stop: the parent keeps what was learned so far.
            try:
                log_study_summary(study, tune_config.objective)
            except Exception as error:
                logger.warning("could not log the study summary: %s", error)
    return study_result(study, parent.info.run_id)


def check_objective_data(tune_config: TuneConfig, dataset) -> None:
    """Refuse ``val_pixel_auroc`` on a category whose val split has no masked defect (it would never be logged)."""
    if tune_config.objective != "val_pixel_auroc":
        return
    from defectlab.evaluation.pixel import rows_with_ground_truth

    val_kept, _ = rows_with_ground_truth(dataset.table, "val")
    if not (val_kept & (dataset.table["label"].to_numpy() == 1)).any():
        raise ConfigError(
            f"objective val_pixel_auroc needs ground-truth masks of defects in the val split; "
            f"{dataset.dataset_name} has none, so use objective val_image_auroc"
        )
