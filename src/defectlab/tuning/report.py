"""What a study leaves on its parent run: trial counts, the best trial, the trials table, plots."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from defectlab import tracking
from defectlab.tuning.storage import DUPLICATE_ATTR


def trials_table(study: optuna.Study):
    """One row per trial of the study: number, state, value, params, user attributes, times."""
    return study.trials_dataframe(
        attrs=("number", "state", "value", "params", "user_attrs", "datetime_start",
               "datetime_complete", "duration")
    )


def log_study_summary(study: optuna.Study, objective: str) -> None:
    """Log on the active (parent) run: trial counts, the best trial, the trials table, the plots."""
    trials = study.get_trials(deepcopy=False)
    tracking.log_metrics({
        f"trials_{state.name.lower()}": sum(trial.state == state for trial in trials)
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    })
    if trials:
        tracking.log_table(trials_table(study), "trials.csv")
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if not complete:
        tracking.log_text("No complete trial yet: no best trial, no plots.\n", "plots/NOTE.txt")
        return
    best = study.best_trial
    tracking.log_params({f"best_{name}": value for name, value in best.params.items()})
    tracking.log_tags({
        # A best trial that reused an earlier one's run names that trial: the one with the run.
        "best_trial_number": best.user_attrs.get(DUPLICATE_ATTR, best.number),
        "best_trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
    })
    best_metrics = {
        f"best_{key}": value for key, value in best.user_attrs.items() if key.startswith(("test_", "val_"))
    }
    best_metrics[f"best_{objective}"] = best.value
    tracking.log_metrics(best_metrics)
    _log_study_plots(study, len(complete))


def _log_study_plots(study: optuna.Study, complete_trials: int) -> None:
    from optuna.visualization import matplotlib as optuna_plots

    plots = {
        "plots/optimization_history.png": optuna_plots.plot_optimization_history,
        "plots/slice.png": optuna_plots.plot_slice,
    }
    notes = []
    if complete_trials >= 2:
        plots["plots/param_importances.png"] = optuna_plots.plot_param_importances
    else:
        notes.append("param_importances.png: needs at least 2 complete trials")
    for artifact_path, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (ValueError, RuntimeError) as error:  # e.g. every param constant: no importance
            notes.append(f"{Path(artifact_path).name}: {error}")
            continue
        tracking.log_figure(np.atleast_1d(axes).ravel()[0].figure, artifact_path)
    if notes:
        tracking.log_text("\n".join(notes) + "\n", "plots/NOTE.txt")


@dataclass(frozen=True)
class StudyResult:
    """What one worker's invocation of a study produced."""

    study_name: str
    parent_run_id: str
    best_value: float | None
    best_params: dict
    best_run_id: str | None
    trial_counts: dict


def study_result(study: optuna.Study, parent_run_id: str) -> StudyResult:
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(trial.state == state for trial in trials) for state in TrialState}
    if counts[TrialState.COMPLETE.name] == 0:
        return StudyResult(study.study_name, parent_run_id, None, {}, None, counts)
    best = study.best_trial
    return StudyResult(
        study.study_name, parent_run_id, best.value, dict(best.params),
        best.user_attrs.get("mlflow_run_id"), counts,
    )
