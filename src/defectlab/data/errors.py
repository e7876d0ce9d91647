"""Errors of the data layer."""

from defectlab.errors import DefectlabError


class DatasetError(DefectlabError, ValueError):
    """The data on disk is missing, malformed or unusable; the message names the path."""
