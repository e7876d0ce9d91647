"""One trial: draw settings, train a nested tracked run, report and prune, return the objective.

The objective is a val-split metric of the run (``TuneConfig.objective``:
``val_image_auroc`` or ``val_pixel_auroc``): the ``test`` split is never looked
at by it, only by each run's final figures. Every ``pruning_interval`` epochs
`TrialMonitor` scores the validation split (image AUROC) so a pruner can stop
hopeless trials; a study maximising ``val_pixel_auroc`` does not prune.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass

import keras
import optuna
from optuna.trial import TrialState

from defectlab import data, runner, tracking
from defectlab.methods import get_method
from defectlab.tuning.config import TuneConfig
from defectlab.tuning.errors import SurplusTrialError, TuningError
from defectlab.tuning.interrupts import interrupted, raise_if_interrupted
from defectlab.tuning.search_space import suggest_training_params
from defectlab.tuning.storage import DUPLICATE_ATTR

logger = logging.getLogger(__name__)

INTERMEDIATE_METRIC = "intermediate_val_image_auroc"
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# Trial user attribute: the digest of the study's fixed settings.
FIXED_SETTINGS_ATTR = "fixed_settings"


class TrialMonitor(keras.callbacks.Callback):
    """Ties a trial to its training run: tags the run, reports validation AUROC, prunes.

    At the start of training it tags the active (nested) MLflow run with the
    trial's tags and records the run id on the trial. Every
    ``pruning_interval`` epochs (not after the last one: the run's own final
    scoring follows) it scores the validation split, logs
    ``intermediate_val_image_auroc``, reports it to Optuna and raises
    `optuna.TrialPruned` when the pruner says so. Epochs are counted across
    the fits of an ensemble.
    """

    def __init__(self, trial: optuna.Trial, run_tags: dict, score_validation=None, pruning_interval: int = 0):
        super().__init__()
        self.trial = trial
        self.run_tags = run_tags
        self.score_validation = score_validation
        self.pruning_interval = pruning_interval
        self.run_id = None
        self.epochs_done = 0
        self.score_seconds = 0.0

    def on_train_begin(self, logs=None):
        if self.run_id is None:
            self.run_id = tracking.active_run_id()
            tracking.log_tags({**self.run_tags, "trial_state": TrialState.RUNNING.name})
            self.trial.set_user_attr("mlflow_run_id", self.run_id)

    def on_train_batch_end(self, batch, logs=None):
        raise_if_interrupted()

    def on_epoch_end(self, epoch, logs=None):
        raise_if_interrupted()
        self.epochs_done += 1
        last_epoch_of_fit = epoch + 1 >= self.params.get("epochs", math.inf)
        if not self.pruning_interval or self.score_validation is None or last_epoch_of_fit:
            return
        if self.epochs_done % self.pruning_interval:
            return
        with tracking.Stopwatch() as watch:
            auroc = self.score_validation(self.model)
        self.score_seconds += watch.seconds
        tracking.log_metrics({INTERMEDIATE_METRIC: auroc}, step=self.epochs_done)
        self.trial.report(auroc, step=self.epochs_done)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {self.epochs_done}: validation AUROC {auroc:.4f}, "
                "judged against earlier trials at this epoch by the pruner"
            )


@dataclass
class TrialCounts:
    done: int
    running: int


def trial_counts(study: optuna.Study) -> TrialCounts:
    """Trials of the whole study (every worker) that are done (complete or pruned) or running."""
    trials = study.get_trials(deepcopy=False, states=(*DONE_STATES, TrialState.RUNNING))
    done = sum(trial.state in DONE_STATES for trial in trials)
    return TrialCounts(done=done, running=len(trials) - done)


def dataset_key(config, grayscale: bool) -> tuple:
    """What decides the images a run reads and how they split: size, colour, geometry, bad-file policy, seed."""
    return (config.image_size, grayscale, config.resize, config.on_bad_image, config.seed)


def fixed_settings_fingerprint(base_config, search_space: dict) -> str:
    """A digest of the settings a study holds fixed (everything but the searched ones).

    Workers may join one study with other fixed options (another ``image_size``,
    backbone or data folder under the same study name): only trials whose fixed
    settings match are the same run.
    """
    fixed = {key: value for key, value in dataclasses.asdict(base_config).items() if key not in search_space}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def completed_twin(trial: optuna.Trial, params: dict, fingerprint: str) -> optuna.trial.FrozenTrial | None:
    """The earliest completed trial with the same searched and fixed settings, or None.

    Searched settings: equal ``params``. Fixed ones: an equal ``fixed_settings``
    user attribute (`fixed_settings_fingerprint`). A twin of a twin finds the first of them.
    """
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (
            other.number != trial.number and other.params == params and other.value is not None
            and other.user_attrs.get(FIXED_SETTINGS_ATTR) == fingerprint
        ):
            return other
    return None


class StudyObjective:
    """The objective of one worker: draw settings, train a nested run, return its ``tune_config.objective``.

    A trial that draws exactly the settings of a completed trial, searched and
    fixed alike (likely in a small discrete space: TPE's first 10 trials are
    random draws), trains nothing: runs are seeded, so it would repeat that run
    (exactly for the patch method; up to the nondeterminism of TensorFlow's
    kernels for the trained ones). It returns the completed trial's value and
    records its run and figures, with the user attribute ``duplicate_of``
    naming it; it has no MLflow run of its own.

    A trial that fails (an exception, a non-finite loss, Ctrl-C) is recorded
    as failed: the reason in the trial's user attribute ``fail_reason`` and
    the MLflow run's ``failure_reason``, ``trial_state`` ``FAIL``; then the
    exception propagates to Optuna, which records the state (``optimize`` is
    called with ``catch=(Exception,)`` so the study goes on).
    """

    def __init__(self, tune_config: TuneConfig, base_config, search_space: dict, parent_run_id: str,
                 datasets: dict | None = None):
        self.tune_config = tune_config
        self.base_config = base_config
        self.search_space = search_space
        self.parent_run_id = parent_run_id
        self.method = get_method(tune_config.method)
        self.datasets = dict(datasets or {})
        self.fixed_settings = fixed_settings_fingerprint(base_config, search_space)

    @property
    def prunes(self) -> bool:
        """Whether trials report val image AUROC to the pruner: epochs to prune, and that objective."""
        return bool(
            self.tune_config.pruning_interval and self.method.pruning_scorer is not None
            and self.tune_config.objective == "val_image_auroc"
        )

    def dataset(self, config) -> data.CategoryData:
        """The category as ``config`` reads it, loaded once per worker for each way of reading it.

        Keyed by everything a search may change about the images (`dataset_key`):
        a study searching ``resize`` must score its pruning checks on the images
        the trial trains on, not on the first trial's.
        """
        key = dataset_key(config, self.method.grayscale(config))
        if key not in self.datasets:
            self.datasets[key] = runner.load_dataset(config, key[1])
        return self.datasets[key]

    def run_tags(self, trial: optuna.Trial) -> dict:
        return {"trial_number": trial.number, "study_name": self.tune_config.resolved_study_name}

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("mlflow_parent_run_id", self.parent_run_id)
        self._refuse_surplus_trial(trial)
        params = suggest_training_params(trial, self.search_space)
        trial.set_user_attr(FIXED_SETTINGS_ATTR, self.fixed_settings)
        twin = completed_twin(trial, params, self.fixed_settings)
        if twin is not None:
            return self._reuse(trial, twin)
        config = dataclasses.replace(self.base_config, **params)
        monitor = TrialMonitor(trial, self.run_tags(trial), pruning_interval=self.tune_config.pruning_interval)
        started_ms = int(time.time() * 1000)
        try:
            if self.prunes:
                dataset = self.dataset(config)
                monitor.score_validation = self.method.pruning_scorer(dataset, config)
            with tracking.Stopwatch() as watch:
                result = runner.run_training(
                    config, run_name=f"trial-{trial.number}", nested=True, epoch_callbacks=[monitor]
                )
        except optuna.TrialPruned as pruned:
            self._mark_runs(trial, monitor, started_ms, config, TrialState.PRUNED, str(pruned))
            raise
        except (Exception, KeyboardInterrupt) as error:
            reason = f"{type(error).__name__}: {error}"
            if interrupted() and not isinstance(error, KeyboardInterrupt):
                # Ctrl-C landing inside TensorFlow's C code surfaces as another error (a SystemError
                # "returned a result with an exception set"): the cause is still the user's Ctrl-C.
                reason = f"KeyboardInterrupt: Ctrl-C (surfaced as {reason})"
            trial.set_user_attr("fail_reason", reason[:2000])
            self._mark_runs(trial, monitor, started_ms, config, TrialState.FAIL, reason)
            raise
        objective = self.tune_config.objective
        value = result.metrics.get(objective, math.nan)
        if not math.isfinite(value):
            reason = f"{objective} is {value}" if objective in result.metrics else f"the run logged no {objective}"
            trial.set_user_attr("fail_reason", reason)
            tracking.set_run_tags(result.run_id, {"trial_state": TrialState.FAIL.name, "failure_reason": reason})
            raise TuningError(reason)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("training_seconds", watch.seconds)
        trial.set_user_attr("validation_scoring_seconds", monitor.score_seconds)
        for key, metric in result.metrics.items():
            if key.startswith(("test_", "val_")):
                trial.set_user_attr(key, float(metric))
        tracking.set_run_tags(result.run_id, {**self.run_tags(trial), "trial_state": TrialState.COMPLETE.name})
        return float(value)

    def _reuse(self, trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> float:
        """Record ``twin``'s run and figures on ``trial`` and return its value (see the class docstring)."""
        logger.info(
            "trial %d draws the settings of completed trial %d (%s): its value %.4f is reused, nothing trains",
            trial.number, twin.number, ", ".join(f"{key}={value}" for key, value in twin.params.items()), twin.value,
        )
        # duplicate_of first: a worker dying in between must not let the stale-trial
        # callback end the reused run as FAILED (`storage.RetryStaleTrial`).
        trial.set_user_attr(DUPLICATE_ATTR, twin.user_attrs.get(DUPLICATE_ATTR, twin.number))
        for key, value in twin.user_attrs.items():
            if key == "mlflow_run_id" or key.startswith(("test_", "val_")):
                trial.set_user_attr(key, value)
        return float(twin.value)

    def _refuse_surplus_trial(self, trial: optuna.Trial) -> None:
        """Fail a trial that another worker's earlier trials make one too many.

        Workers check the count before asking for a trial, but two can pass
        that check at the same moment; the trial numbers decide which one runs.
        """
        earlier = [
            other for other in trial.study.get_trials(
                deepcopy=False, states=(*DONE_STATES, TrialState.RUNNING)
            )
            if other.number < trial.number
        ]
        if len(earlier) >= self.tune_config.n_trials:
            reason = f"not run: the study already has its {self.tune_config.n_trials} trials"
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("surplus", True)
            raise SurplusTrialError(reason)

    def _mark_runs(self, trial, monitor: TrialMonitor, started_ms: int, config, state: TrialState,
                   reason: str) -> None:
        """Tag this trial's MLflow run with its end state; make one if training never started."""
        tags = {**self.run_tags(trial), "trial_state": state.name}
        run_ids = [monitor.run_id] if monitor.run_id else []
        with contextlib.suppress(Exception):
            run_ids = run_ids or tracking.child_run_ids(self.parent_run_id, started_ms)
        try:
            if run_ids:
                for run_id in run_ids:
                    tracking.set_run_tags(run_id, tags)
            else:
                run_ids = [tracking.record_failed_run(
                    dataclasses.asdict(config), tags, reason, run_name=f"trial-{trial.number}"
                )]
            trial.set_user_attr("mlflow_run_id", run_ids[0])
        except Exception as error:  # the trial's own failure is the one to report
            logger.warning("could not tag the MLflow run of trial %d: %s", trial.number, error)
