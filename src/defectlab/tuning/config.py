"""Settings of an Optuna study (``defectlab tune``)."""

from __future__ import annotations

from dataclasses import dataclass

from defectlab.config import ConfigError

# What a study can maximise: the run metric, computed on the val split only.
OBJECTIVES = ("val_image_auroc", "val_pixel_auroc")


@dataclass(frozen=True)
class TuneConfig:
    """An Optuna study over one method's training settings (``defectlab tune``).

    ``method`` is a registered method's name (`defectlab.methods`). The training
    settings held fixed are that method's config, passed beside this one; ``category``, ``data_dir`` and ``seed`` here are
    also theirs. ``timeout`` 0 means no time limit; ``pruning_interval`` is the
    number of epochs between intermediate validation scores (0: no pruning).
    A worker that stops sending heartbeats for ``grace_period`` seconds has
    its trial marked failed and retried by the next worker that looks.
    ``objective`` is the val-split metric maximised: ``val_image_auroc``
    (telling defective images from good ones) or ``val_pixel_auroc`` (finding
    where the defect is; methods that make anomaly maps, a dataset with masks).
    """

    method: str = "metric"
    category: str = "carpet"
    data_dir: str = "synthetic"
    n_trials: int = 20
    timeout: float = 0.0
    storage: str = "sqlite:///optuna.db"
    study_name: str = ""
    search_space: str = ""
    seed: int = 0
    objective: str = "val_image_auroc"
    pruning_interval: int = 5
    heartbeat_interval: int = 60
    grace_period: int = 180

    @property
    def resolved_study_name(self) -> str:
        """``study_name``, or ``<method>-<category>`` when it is empty."""
        return self.study_name or f"{self.method}-{self.category}"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        from defectlab.methods import all_methods, get_method

        names = [method.name for method in all_methods()]
        if self.method not in names:
            raise ConfigError(f"method must be one of {', '.join(names)}, got {self.method!r}")
        if not self.category:
            raise ConfigError("category must not be empty")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "val_pixel_auroc" and not get_method(self.method).makes_maps:
            map_methods = ", ".join(method.name for method in all_methods() if method.makes_maps)
            raise ConfigError(
                f"objective val_pixel_auroc needs anomaly maps, which method {self.method} does not make "
                f"(methods that do: {map_methods}); use objective val_image_auroc"
            )
        if self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}")
        if self.timeout < 0:
            raise ConfigError(f"timeout must be 0 (no limit) or a number of seconds, got {self.timeout}")
        if not self.storage:
            raise ConfigError("storage must be a SQLAlchemy URL, e.g. sqlite:///optuna.db")
        if self.pruning_interval < 0:
            raise ConfigError(
                f"pruning_interval must be 0 (no pruning) or a number of epochs, got {self.pruning_interval}"
            )
        if self.heartbeat_interval < 1:
            raise ConfigError(f"heartbeat_interval must be at least 1 second, got {self.heartbeat_interval}")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(
                f"grace_period ({self.grace_period} s) must exceed heartbeat_interval "
                f"({self.heartbeat_interval} s), or live workers' trials would be failed"
            )
