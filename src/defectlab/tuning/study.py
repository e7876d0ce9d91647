"""Optuna studies over a method's training settings, one nested MLflow run per trial.

``run_study`` is what ``defectlab tune`` and ``mlflow run . -e tune`` call:

1. The search space (the built-in one of the method, or a YAML file) is
   validated against the fixed training settings before anything trains.
2. A parent MLflow run is opened for this invocation of the study (tags
   ``study_name``, ``method``, ``category``).
3. Each trial draws its settings (`suggest_training_params`, the one place
   with ``trial.suggest_*``), trains a full tracked run of the method as a
   nested run (tags ``trial_number``, ``study_name``, ``trial_state``) and
   returns its ``val_image_auroc``. The ``test`` split is never looked at by
   the objective; it only feeds each run's final figures. Every few epochs
   the validation split is scored so that a `optuna.pruners.MedianPruner`
   can stop hopeless trials.
4. When this worker is done, the parent logs the best settings, the best
   trial's run id and test figures, a trials table and Optuna's plots.

Several workers (processes, machines) on the same ``storage`` and study name
share one study, and together finish ``n_trials`` trials (complete or pruned).
A worker that dies mid-trial stops sending heartbeats; the next worker to look
marks its trial failed and enqueues a retry with the same settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from defectlab import data, runner, tracking
from defectlab.config import ConfigError
from defectlab.errors import DefectlabError
from defectlab.methods import all_methods, get_method
from defectlab.tuning.config import TuneConfig

logger = logging.getLogger(__name__)

SEARCH_SPACE_TYPES = ("int", "float", "categorical")
SPEC_KEYS = {
    "int": {"type", "low", "high", "log", "step"},
    "float": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
# Settings that say what is tuned (or where a model goes), not how it is trained.
NOT_SEARCHABLE = ("category", "data_dir", "register_as", "repeats")
OBJECTIVE_METRIC = "val_image_auroc"
INTERMEDIATE_METRIC = "intermediate_val_image_auroc"
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
STALE_TRIAL_RETRIES = 2
# A worker gives up after this many failed trials in a row: the cause is then
# almost surely not the settings drawn (a full disk, a lost server, a bug).
MAX_CONSECUTIVE_FAILURES = 5
STORAGE_ATTEMPTS = 6
STORAGE_BACKOFF_SECONDS = 0.5
SQLITE_LOCK_TIMEOUT_SECONDS = 60


class SearchSpaceError(ConfigError):
    """The search space (built-in or YAML) is invalid; the message names the parameter."""


class TuningError(DefectlabError, RuntimeError):
    """The study cannot go on (storage unreachable, every trial failing, ...)."""


class SurplusTrialError(RuntimeError):
    """Another worker already started the study's last trial (failed unrun, not counted)."""


# Search space


def load_search_space(path: str | Path) -> dict:
    """Read a YAML search space file: ``{parameter: {type, low, high, log, step | choices}}``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SearchSpaceError(f"search space file {path} does not exist")
    try:
        space = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SearchSpaceError(f"search space file {path} is not valid YAML: {error}") from error
    if not isinstance(space, dict):
        raise SearchSpaceError(
            f"search space file {path} must map parameter names to specs, e.g. "
            "'epochs: {type: int, low: 2, high: 20}'"
        )
    return space


def validate_search_space(space: dict, base_config) -> dict:
    """Check every spec against the method's settings; return the space in canonical form.

    Each parameter must be a training setting of the method (not ``category``,
    ``data_dir``, ``register_as`` or ``repeats``), its type must fit the setting's type, its
    bounds must be ordered (positive for ``log``), and every bound or choice must
    be a value the method accepts (``config.validate()``). Raises
    `SearchSpaceError` naming the first problem.
    """
    if not space:
        raise SearchSpaceError("the search space is empty: name at least one parameter to tune")
    field_types = {field.name: type(field.default) for field in dataclasses.fields(base_config)}
    searchable = sorted(name for name in field_types if name not in NOT_SEARCHABLE)
    canonical = {}
    for name, spec in space.items():
        if name not in searchable:
            raise SearchSpaceError(
                f"unknown parameter {name!r} in the search space of {type(base_config).__name__}; "
                f"searchable: {', '.join(searchable)}"
            )
        canonical[name] = _canonical_spec(name, spec, field_types[name])
        for value in _boundary_values(canonical[name]):
            try:
                dataclasses.replace(base_config, **{name: value}).validate()
            except ConfigError as error:
                raise SearchSpaceError(f"search space: {name}={value!r} is not allowed: {error}") from error
    return canonical


def _canonical_spec(name: str, spec, field_type: type) -> dict:
    if not isinstance(spec, dict) or "type" not in spec:
        raise SearchSpaceError(
            f"search space: {name} needs a mapping with a 'type' ({', '.join(SEARCH_SPACE_TYPES)}), "
            f"got {spec!r}"
        )
    kind = spec["type"]
    if kind not in SEARCH_SPACE_TYPES:
        raise SearchSpaceError(
            f"search space: {name} has unknown type {kind!r}; use one of {', '.join(SEARCH_SPACE_TYPES)}"
        )
    unknown_keys = sorted(set(spec) - SPEC_KEYS[kind])
    if unknown_keys:
        raise SearchSpaceError(
            f"search space: {name} ({kind}) has unknown keys {unknown_keys}; "
            f"allowed: {sorted(SPEC_KEYS[kind])}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"search space: {name} needs a non-empty list 'choices'")
        return {"type": kind, "choices": [_typed_value(name, choice, field_type) for choice in choices]}

    if field_type not in (int, float) or (kind == "float" and field_type is int):
        raise SearchSpaceError(
            f"search space: {name} is a {field_type.__name__} setting; a {kind} range does not fit it "
            f"(use {'type: int or ' if field_type is int else ''}type: categorical)"
        )
    missing = [key for key in ("low", "high") if key not in spec]
    if missing:
        raise SearchSpaceError(f"search space: {name} ({kind}) needs {' and '.join(missing)}")
    number_type = int if kind == "int" else float
    low = _typed_value(name, spec["low"], number_type)
    high = _typed_value(name, spec["high"], number_type)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"search space: {name} 'log' must be true or false, got {log!r}")
    if low > high:
        raise SearchSpaceError(f"search space: {name} has low {low} above high {high}")
    if log and low <= 0:
        raise SearchSpaceError(f"search space: {name} is on a log scale, so low must be positive, got {low}")
    canonical = {"type": kind, "low": low, "high": high, "log": log}
    if "step" in spec:
        step = _typed_value(name, spec["step"], number_type)
        if step <= 0:
            raise SearchSpaceError(f"search space: {name} step must be positive, got {step}")
        if log:
            raise SearchSpaceError(f"search space: {name} cannot have both a step and a log scale")
        canonical["step"] = step
    return canonical


def _typed_value(name: str, value, expected_type: type):
    """``value`` as ``expected_type``, or `SearchSpaceError`.

    Float strings are accepted because PyYAML reads ``1e-4`` (no dot) as a string.
    """
    if expected_type is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    if expected_type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected_type) and (expected_type is bool or not isinstance(value, bool)):
        return value
    raise SearchSpaceError(
        f"search space: {name} takes {expected_type.__name__} values, got {value!r}"
    )


def _boundary_values(spec: dict) -> list:
    if spec["type"] == "categorical":
        return list(spec["choices"])
    return [spec["low"], spec["high"]]


def resolve_search_space(tune_config: TuneConfig, base_config, data_root: Path) -> dict:
    """The validated search space of a study: the YAML file's, or the method's built-in one."""
    if tune_config.search_space:
        space = load_search_space(tune_config.search_space)
    else:
        space = get_method(tune_config.method).default_search_space(base_config, data_root)
    return validate_search_space(space, base_config)


def suggest_training_params(trial: optuna.Trial, search_space: dict) -> dict:
    """Draw one value per searched setting: the only place with ``trial.suggest_*`` calls."""
    params = {}
    for name, spec in search_space.items():
        if spec["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(
                name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec["log"]
            )
        else:
            params[name] = trial.suggest_float(
                name, spec["low"], spec["high"], step=spec.get("step"), log=spec["log"]
            )
    return params


# Fixed training settings


def base_training_config(tune_config: TuneConfig, training_options: dict):
    """The method's config with the given training options; all other settings at their defaults.

    ``training_options`` maps setting names to values; ``None`` means "the
    method's default" (the CLI passes that for settings whose default differs
    between methods). A setting of another method only is an error unless it
    is at that method's default (``mlflow run`` passes every parameter).
    """
    config_class = get_method(tune_config.method).config_class
    own_fields = {field.name for field in dataclasses.fields(config_class)}
    other_defaults: dict[str, set] = {}
    owners: dict[str, list[str]] = {}
    for method in all_methods():
        if method.config_class is not config_class:
            for field in dataclasses.fields(method.config_class):
                other_defaults.setdefault(field.name, set()).add(field.default)
                owners.setdefault(field.name, []).append(method.name)
    settings = {}
    for name, value in training_options.items():
        if value is None:
            continue
        if name in own_fields:
            settings[name] = value
        elif name not in other_defaults:
            raise ConfigError(f"unknown training setting {name!r}")
        elif value not in other_defaults[name]:
            raise ConfigError(
                f"{name} is a setting of the other method(s) {', '.join(owners[name])}, "
                f"not of method={tune_config.method}"
            )
    settings.update(category=tune_config.category, data_dir=tune_config.data_dir, seed=tune_config.seed)
    return config_class(**settings)


# Storage and study


def _describe_url(url: str) -> str:
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


class RetryStaleTrial:
    """Heartbeat callback: a trial whose worker died ends FAIL in MLflow too, and is retried.

    Optuna has already marked the trial failed; this ends the dead worker's
    MLflow runs (trial and parent) as FAILED with the reason, then lets
    `optuna.storages.RetryFailedTrialCallback` enqueue the same settings again.
    """

    REASON = "the worker running this trial stopped sending heartbeats (killed, or lost its storage)"

    def __init__(self, max_retry: int = STALE_TRIAL_RETRIES):
        self.retry = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        logger.warning("trial %d of study %s: %s; retrying it", trial.number, study.study_name, self.REASON)
        for key in ("mlflow_run_id", "mlflow_parent_run_id"):
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
            return _with_retries(f"opening the Optuna storage {_describe_url(url)}", create)
    except ImportError as error:
        raise ConfigError(f"storage {_describe_url(url)} needs a database driver that is not installed: {error}") from error


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
    return _with_retries(
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


# Intermediate validation scores (for pruning)


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


# The objective


@dataclass
class TrialCounts:
    done: int
    running: int


def trial_counts(study: optuna.Study) -> TrialCounts:
    """Trials of the whole study (every worker) that are done (complete or pruned) or running."""
    trials = study.get_trials(deepcopy=False, states=(*DONE_STATES, TrialState.RUNNING))
    done = sum(trial.state in DONE_STATES for trial in trials)
    return TrialCounts(done=done, running=len(trials) - done)


class StudyObjective:
    """The objective of one worker: draw settings, train a nested run, return ``val_image_auroc``.

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

    def dataset(self, image_size: int, grayscale: bool) -> data.CategoryData:
        """The category at one image size, loaded once per worker (searched sizes each once)."""
        key = (image_size, grayscale)
        if key not in self.datasets:
            self.datasets[key] = data.load_category(
                self.base_config.data_dir, self.base_config.category, image_size,
                grayscale=grayscale, seed=self.base_config.seed, resize=self.base_config.resize,
                on_bad_image=self.base_config.on_bad_image,
            )
        return self.datasets[key]

    def run_tags(self, trial: optuna.Trial) -> dict:
        return {"trial_number": trial.number, "study_name": self.tune_config.resolved_study_name}

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("mlflow_parent_run_id", self.parent_run_id)
        self._refuse_surplus_trial(trial)
        params = suggest_training_params(trial, self.search_space)
        config = dataclasses.replace(self.base_config, **params)
        monitor = TrialMonitor(trial, self.run_tags(trial), pruning_interval=self.tune_config.pruning_interval)
        started_ms = int(time.time() * 1000)
        try:
            if self.tune_config.pruning_interval and self.method.pruning_scorer is not None:
                dataset = self.dataset(config.image_size, self.method.grayscale(config))
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
            trial.set_user_attr("fail_reason", reason[:2000])
            self._mark_runs(trial, monitor, started_ms, config, TrialState.FAIL, reason)
            raise
        value = result.metrics[OBJECTIVE_METRIC]
        if not math.isfinite(value):
            reason = f"{OBJECTIVE_METRIC} is {value}"
            trial.set_user_attr("fail_reason", reason)
            tracking.set_run_tags(result.run_id, {"trial_state": TrialState.FAIL.name, "failure_reason": reason})
            raise TuningError(reason)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("training_seconds", watch.seconds)
        trial.set_user_attr("validation_scoring_seconds", monitor.score_seconds)
        for key, metric in result.metrics.items():
            if key.startswith("test_") or key == OBJECTIVE_METRIC:
                trial.set_user_attr(key, float(metric))
        tracking.set_run_tags(result.run_id, {**self.run_tags(trial), "trial_state": TrialState.COMPLETE.name})
        return float(value)

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


class _CtrlC:
    """Whether Ctrl-C was pressed while this worker ran (`kept_interrupts`)."""

    requested = False


def raise_if_interrupted() -> None:
    """Raise `KeyboardInterrupt` again if Ctrl-C was pressed and its first one got lost."""
    if _CtrlC.requested:
        raise KeyboardInterrupt("Ctrl-C")


@contextlib.contextmanager
def kept_interrupts():
    """Ctrl-C raises `KeyboardInterrupt` as usual and is also remembered.

    Python raises it wherever the main thread happens to be; when that is a
    finaliser (``__del__``, which TensorFlow's tensors and iterators have
    plenty of) the exception is printed and dropped, and the worker went on to
    finish its trial and exit 0. The trial monitor and the worker loop call
    `raise_if_interrupted`, so the interrupt takes effect at the next batch.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def remember_and_raise(signal_number, frame):
        _CtrlC.requested = True
        raise KeyboardInterrupt

    _CtrlC.requested = False
    previous = signal.signal(signal.SIGINT, remember_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _CtrlC.requested = False


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


# Study summary on the parent run


def trials_table(study: optuna.Study):
    """One row per trial of the study: number, state, value, params, user attributes, times."""
    return study.trials_dataframe(
        attrs=("number", "state", "value", "params", "user_attrs", "datetime_start",
               "datetime_complete", "duration")
    )


def log_study_summary(study: optuna.Study) -> None:
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
        "best_trial_number": best.number,
        "best_trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
    })
    best_metrics = {
        f"best_{key}": value for key, value in best.user_attrs.items()
        if key.startswith("test_") or key == OBJECTIVE_METRIC
    }
    best_metrics[f"best_{OBJECTIVE_METRIC}"] = best.value
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


# Entry point


@dataclass(frozen=True)
class StudyResult:
    """What one worker's invocation of a study produced."""

    study_name: str
    parent_run_id: str
    best_value: float | None
    best_params: dict
    best_run_id: str | None
    trial_counts: dict


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
    dataset = data.load_category(
        base_config.data_dir, base_config.category, base_config.image_size,
        grayscale=grayscale, seed=base_config.seed, resize=base_config.resize,
        on_bad_image=base_config.on_bad_image,
    )
    tracking.prepare_tracking_store()
    study = open_study(tune_config, pruner)
    parent_tags = {
        "study_name": tune_config.resolved_study_name,
        "method": method.tag,
        "category": tune_config.category,
        "dataset": dataset.dataset_name,
        "storage": _describe_url(tune_config.storage),
    }
    with tracking.tracked_run(
        dataclasses.asdict(tune_config), parent_tags, run_name=f"study-{tune_config.resolved_study_name}"
    ) as parent:
        tracking.log_dataset_inputs(dataset)
        tracking.log_dict(search_space, "search_space.yaml")
        tracking.log_dict(dataclasses.asdict(base_config), "fixed_settings.json")
        objective = StudyObjective(
            tune_config, base_config, search_space, parent.info.run_id,
            datasets={(base_config.image_size, grayscale): dataset},
        )
        try:
            run_worker_trials(study, objective, tune_config)
        finally:
            # Also after Ctrl-C or a stop: the parent keeps what was learned so far.
            try:
                log_study_summary(study)
            except Exception as error:
                logger.warning("could not log the study summary: %s", error)
    return _study_result(study, parent.info.run_id)


def _study_result(study: optuna.Study, parent_run_id: str) -> StudyResult:
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(trial.state == state for trial in trials) for state in TrialState}
    if counts[TrialState.COMPLETE.name] == 0:
        return StudyResult(study.study_name, parent_run_id, None, {}, None, counts)
    best = study.best_trial
    return StudyResult(
        study.study_name, parent_run_id, best.value, dict(best.params),
        best.user_attrs.get("mlflow_run_id"), counts,
    )
