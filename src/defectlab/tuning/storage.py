"""Where a study lives: the Optuna storage (retries, heartbeats), the seeded sampler, the study.

Several workers (processes, machines) open the same storage and study name and
share one study. A worker that dies mid-trial stops sending heartbeats; the
next worker to look fails its trial (`RetryStaleTrial`) and enqueues a retry
with the same settings.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import warnings

import optuna

from defectlab import tracking
from defectlab.config import ConfigError
from defectlab.tuning.config import TuneConfig
from defectlab.tuning.errors import TuningError

logger = logging.getLogger(__name__)

STALE_TRIAL_RETRIES = 2
STORAGE_ATTEMPTS = 6
STORAGE_BACKOFF_SECONDS = 0.5
SQLITE_LOCK_TIMEOUT_SECONDS = 60


def describe_url(url: str) -> str:
    import sqlalchemy

    with contextlib.suppress(Exception):
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    return url


def _with_retries(what: str, action):
    """Run ``action``, retrying on database errors: concurrent workers race to create the schema."""
    import sqlalchemy.exc

    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            return action()
        except (sqlalchemy.exc.DBAPIError, optuna.exceptions.DuplicatedStudyError) as error:
            if attempt == STORAGE_ATTEMPTS:
                raise TuningError(f"{what} failed {attempt} times; last error: {error}") from error
            # Jitter, so that two workers that collided do not collide again.
            time.sleep(STORAGE_BACKOFF_SECONDS * attempt * (1 + random.random()))


# The study user attribute naming the metric it maximises (`TuneConfig.objective`), and what
# studies made before it was recorded maximised.
OBJECTIVE_ATTR = "objective"
OLDEST_OBJECTIVE = "val_image_auroc"
# The trial user attribute of a trial that reused a completed twin's run (`objective.StudyObjective`).
DUPLICATE_ATTR = "duplicate_of"


class RetryStaleTrial:
    """Heartbeat callback: a trial whose worker died ends FAIL in MLflow too, and is retried.

    Optuna has already marked the trial failed; this ends the dead worker's
    MLflow runs (trial and parent) as FAILED with the reason, then lets
    `optuna.storages.RetryHeartbeatStaleTrialCallback` enqueue the same settings again
    (Optuna 4.9 deprecated its older name, RetryFailedTrialCallback).
    """

    REASON = "the worker running this trial stopped sending heartbeats (killed, or lost its storage)"

    def __init__(self, max_retry: int = STALE_TRIAL_RETRIES):
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        logger.warning("trial %d of study %s: %s; retrying it", trial.number, study.study_name, self.REASON)
        # A duplicate's mlflow_run_id is the run of the trial it reused, which finished well.
        keys = ("mlflow_parent_run_id",) if DUPLICATE_ATTR in trial.user_attrs else ("mlflow_run_id", "mlflow_parent_run_id")
        for key in keys:
            run_id = trial.user_attrs.get(key)
            if run_id:
                # The dead worker's tracking store may not be this worker's: best effort.
                with contextlib.suppress(Exception):
                    tracking.end_run_by_id(
                        run_id, "FAILED", {"trial_state": "FAIL", "failure_reason": self.REASON}
                    )
        self.retry(study, trial)


def open_storage(tune_config: TuneConfig) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats; the schema is created if missing (race-safe)."""
    url = tune_config.storage
    try:
        import sqlalchemy

        backend = sqlalchemy.engine.make_url(url).get_backend_name()
    except Exception as error:
        raise ConfigError(f"storage {url!r} is not a SQLAlchemy URL (e.g. sqlite:///optuna.db): {error}") from error
    if backend == "sqlite":
        # Wait for a concurrent writer (another worker) instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_SECONDS}}
    else:
        engine_kwargs = {"pool_pre_ping": True}  # trials outlive idle database connections

    def create():
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=tune_config.heartbeat_interval,
            grace_period=tune_config.grace_period,
            heartbeat_stale_trial_callback=RetryStaleTrial(),
        )

    try:
        with tracking.sqlite_creation_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
            return _with_retries(f"opening the Optuna storage {describe_url(url)}", create)
    except ImportError as error:
        raise ConfigError(f"storage {describe_url(url)} needs a database driver that is not installed: {error}") from error


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random draws of trial *k* are seeded with ``seed + k``.

    Workers sharing a study then draw different settings (one seeded sampler
    per worker would propose the same ones in every worker), while a study run
    by one worker stays reproducible from its seed.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.delegate = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study, trial) -> None:
        self.delegate = optuna.samplers.TPESampler(seed=self.seed + trial.number)
        self.delegate.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.delegate.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.delegate.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.delegate.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.delegate.after_trial(study, trial, state, values)


def open_study(tune_config: TuneConfig, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study, or join it when another worker already has (``load_if_exists``)."""
    storage = open_storage(tune_config)
    if pruner is None:
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
            if tune_config.pruning_interval else optuna.pruners.NopPruner()
        )
    study = _with_retries(
        f"creating or loading the study {tune_config.resolved_study_name}",
        lambda: optuna.create_study(
            storage=storage,
            study_name=tune_config.resolved_study_name,
            direction="maximize",
            sampler=TrialSeededSampler(tune_config.seed),
            pruner=pruner,
            load_if_exists=True,
        ),
    )
    check_study_objective(study, tune_config)
    return study


def check_study_objective(study: optuna.Study, tune_config: TuneConfig) -> None:
    """Record the metric a new study maximises; refuse a worker that joins it with another.

    Values of two metrics cannot be ranked together. A study from before the
    objective was recorded, with trials, maximised ``val_image_auroc``.
    """
    recorded = study.user_attrs.get(OBJECTIVE_ATTR)
    if recorded is None:
        if not study.get_trials(deepcopy=False):
            _with_retries("recording the study's objective",
                          lambda: study.set_user_attr(OBJECTIVE_ATTR, tune_config.objective))
            # Read back: a worker creating the study at the same moment may have written first.
            recorded = study.user_attrs.get(OBJECTIVE_ATTR, tune_config.objective)
        else:
            recorded = OLDEST_OBJECTIVE
    if recorded != tune_config.objective:
        raise ConfigError(
            f"study {tune_config.resolved_study_name!r} maximises {recorded}, not {tune_config.objective}: "
            f"pass objective {recorded} to join it, or another study name"
        )
