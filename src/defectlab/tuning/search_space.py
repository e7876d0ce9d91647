"""What a study searches: search-space files, their validation, the draws, the fixed settings.

- `load_search_space` reads a YAML file; `validate_search_space` checks every
  spec against the method's config (types, bounds, values the method accepts);
  `resolve_search_space` picks the file's space or the method's built-in one.
- `suggest_training_params` is the one place with ``trial.suggest_*`` calls.
- `base_training_config` builds the method's config from the options held fixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import optuna
import yaml

from defectlab.config import ConfigError
from defectlab.methods import all_methods, get_method
from defectlab.tuning.config import TuneConfig

SEARCH_SPACE_TYPES = ("int", "float", "categorical")
SPEC_KEYS = {
    "int": {"type", "low", "high", "log", "step"},
    "float": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
# Settings that say what is tuned (or where a model goes), not how it is trained.
NOT_SEARCHABLE = ("category", "data_dir", "register_as", "repeats")


class SearchSpaceError(ConfigError):
    """The search space (built-in or YAML) is invalid; the message names the parameter."""


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
