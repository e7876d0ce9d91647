"""Overhead of the tuning machinery (Optuna + MLflow) per trial, as a share of trial time.

Runs a small Optuna study (``defectlab.tuning.run_study``) of metric learning
on a generated synthetic set, in a throwaway SQLite MLflow store and SQLite
Optuna storage. Each trial records how long its training run took
(``experiment.run_training``: training, scoring and the run's own logging, which
any untuned run pays too) and how long the pruning callback spent scoring the
validation split. Everything else is the tuning machinery:

- per trial: Optuna's ask/tell, heartbeats, storage round trips, the sampler,
  the trial's tags, plus the intermediate validation scoring for pruning;
- per study: opening the storage, the parent run, and its summary (trials
  table, best trial, Optuna's plots), spread over the trials.

Run: ``python benchmarks/bench_tuning.py --image-size 64 --epochs 3 --n-trials 4``
(the CPU demo settings are ``--image-size 96 --epochs 10 --batch-size 32``).
Prints the figures and the overhead share (goal: at most 10 %); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402
import optuna  # noqa: E402

from defectlab import tuning  # noqa: E402
from defectlab.tuning import TuneConfig  # noqa: E402
from defectlab.data.synthetic import SyntheticSpec, generate_dataset  # noqa: E402

SEARCH_SPACE = (
    "optimizer: {type: categorical, choices: [sgd, adam]}\n"
    "learning_rate: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reference-size", type=int, default=32)
    parser.add_argument("--n-trials", type=int, default=4)
    parser.add_argument("--pruning-interval", type=int, default=1,
                        help="epochs between intermediate validation scores (1: the most overhead)")
    parser.add_argument("--count-scale", type=float, default=0.25, help="size of the generated dataset")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        os.environ["DEFECTLAB_CACHE"] = str(folder / "cache")
        data_root = generate_dataset(
            folder / "data", SyntheticSpec(image_size=arguments.image_size, count_scale=arguments.count_scale),
            ["carpet", "leather", "cable", "capsule"],
        )
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        os.chdir(folder)  # artifacts of the SQLite store land here
        (folder / "space.yaml").write_text(SEARCH_SPACE)
        tune_config = TuneConfig(
            method="metric", data_dir=str(data_root), n_trials=arguments.n_trials,
            storage=f"sqlite:///{folder / 'optuna.db'}", search_space=str(folder / "space.yaml"),
            pruning_interval=arguments.pruning_interval,
        )
        base_config = tuning.base_training_config(tune_config, {
            "image_size": arguments.image_size, "epochs": arguments.epochs,
            "batch_size": arguments.batch_size, "weights": "none",
            "reference_size": arguments.reference_size,
        })

        study_start = time.perf_counter()
        tuning.run_study(tune_config, base_config)
        study_seconds = time.perf_counter() - study_start

        study = optuna.load_study(study_name=tune_config.resolved_study_name, storage=tune_config.storage)
        trials = [trial for trial in study.trials if "training_seconds" in trial.user_attrs]
        training = sum(trial.user_attrs["training_seconds"] for trial in trials)
        scoring = sum(trial.user_attrs["validation_scoring_seconds"] for trial in trials)
        trial_wall = sum((trial.datetime_complete - trial.datetime_start).total_seconds() for trial in trials)

    per_trial_machinery = trial_wall - training + scoring
    study_machinery = study_seconds - trial_wall
    overhead = per_trial_machinery + study_machinery
    count = len(trials)
    print(f"settings: image_size={arguments.image_size} epochs={arguments.epochs} "
          f"batch_size={arguments.batch_size} reference_size={arguments.reference_size} "
          f"pruning_interval={arguments.pruning_interval}, {count} complete trials")
    print(f"study wall time                        {study_seconds:8.1f} s")
    print(f"training runs (run_training), per trial  {training / count:8.2f} s")
    print(f"  of which pruning's validation scoring{scoring / count:8.2f} s")
    print(f"Optuna around each trial, per trial    {(trial_wall - training) / count:8.2f} s")
    print(f"study setup + parent summary, per trial{study_machinery / count:8.2f} s")
    print(f"tuning machinery, per trial            {overhead / count:8.2f} s")
    print(f"overhead share of trial time           {overhead / study_seconds:8.1%}  (goal <= 10%)")


if __name__ == "__main__":
    main()
