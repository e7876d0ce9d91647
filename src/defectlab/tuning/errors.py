"""The errors of a study that are not a bad setting (those are `ConfigError`)."""

from __future__ import annotations

from defectlab.errors import DefectlabError


class TuningError(DefectlabError, RuntimeError):
    """The study cannot go on (storage unreachable, every trial failing, ...)."""


class SurplusTrialError(RuntimeError):
    """Another worker already started the study's last trial (failed unrun, not counted)."""
