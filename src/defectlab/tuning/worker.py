"""One worker's loop: run trials until the whole study has ``n_trials`` done, or time is up."""

from __future__ import annotations

import logging
import time
import warnings

import optuna
from optuna.trial import TrialState

from defectlab.tuning.config import TuneConfig
from defectlab.tuning.errors import TuningError
from defectlab.tuning.interrupts import kept_interrupts, raise_if_interrupted
from defectlab.tuning.objective import StudyObjective, trial_counts

logger = logging.getLogger(__name__)

# A worker gives up after this many failed trials in a row: the cause is then
# almost surely not the settings drawn (a full disk, a lost server, a bug).
MAX_CONSECUTIVE_FAILURES = 5


def run_worker_trials(study: optuna.Study, objective: StudyObjective, tune_config: TuneConfig) -> None:
    """Run trials until the study (all workers) has ``n_trials`` done, or ``timeout`` passes.

    Before each trial, trials of dead workers are failed (and retried). When
    the running trials of other workers would complete the count, this worker
    waits for them: if one of them dies, its retry still gets run.
    """
    with kept_interrupts():
        _run_worker_trials(study, objective, tune_config)


def _run_worker_trials(study: optuna.Study, objective: StudyObjective, tune_config: TuneConfig) -> None:
    start = time.monotonic()
    consecutive_failures, last_reason = 0, ""
    while True:
        raise_if_interrupted()
        if tune_config.timeout and time.monotonic() - start >= tune_config.timeout:
            logger.info("timeout of %.0f s reached; no new trial is started", tune_config.timeout)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        counts = trial_counts(study)
        if counts.done >= tune_config.n_trials:
            return
        if counts.done + counts.running >= tune_config.n_trials:
            time.sleep(tune_config.heartbeat_interval)
            continue
        finished = []
        try:
            study.optimize(
                objective, n_trials=1, catch=(Exception,),
                callbacks=[lambda _study, trial: finished.append(trial)],
            )
        except optuna.exceptions.UpdateFinishedTrialError as error:
            # Another worker missed this worker's heartbeats (a stall longer than
            # grace_period), failed the trial and enqueued its retry: carry on.
            logger.warning("this worker's trial was failed by another worker: %s", error)
            continue
        raise_if_interrupted()
        if not finished or finished[-1].user_attrs.get("surplus"):
            continue
        trial = finished[-1]
        if trial.state == TrialState.FAIL:
            consecutive_failures += 1
            last_reason = trial.user_attrs.get("fail_reason", "")
        else:
            consecutive_failures = 0
        if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise TuningError(
                f"{consecutive_failures} trials in a row failed; stopping this worker. Last reason: {last_reason}"
            )
