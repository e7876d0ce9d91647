"""Checks before any work: the tracking server answers, the artifact store (bucket) is writable.

A run that cannot be logged fails in one line before training, not after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request

import mlflow

from defectlab.errors import DefectlabError

logger = logging.getLogger(__name__)

class TrackingUnavailableError(DefectlabError, RuntimeError):
    """The tracking server cannot be reached."""


class ArtifactStoreError(DefectlabError, RuntimeError):
    """The run's artifact store (e.g. an S3 bucket) cannot be used; raised before training."""


class RunNotLoggedError(DefectlabError, RuntimeError):
    """Training finished but logging the run failed; the results were saved in a local folder."""


def tracking_uri() -> str:
    """The tracking URI in force (``MLFLOW_TRACKING_URI`` or MLflow's default)."""
    return mlflow.get_tracking_uri()


def check_tracking_server(timeout_seconds: float = 10.0) -> None:
    """Fail fast, before any training, when an HTTP tracking server does not answer."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    health_url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health_url, timeout=timeout_seconds) as response:
            if response.status != 200:
                raise TrackingUnavailableError(
                    f"MLflow tracking server {uri} answered {response.status} at /health"
                )
    except (urllib.error.URLError, OSError) as error:
        raise TrackingUnavailableError(
            f"cannot reach the MLflow tracking server at {uri} ({error}); start it or set "
            "MLFLOW_TRACKING_URI to a reachable server (or unset it for the local sqlite:///mlflow.db)"
        ) from error


def _short_error(error: BaseException, limit: int = 600) -> str:
    """``Type: message``, cut to ``limit`` characters (MLflow's HTTP errors repeat the URL at length)."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + " ..."


def _server_error_message(error: BaseException) -> str:
    """The ``message`` of an MLflow server's JSON error answer, else the error's own text."""
    response = getattr(error, "response", None)
    if response is not None:
        with contextlib.suppress(ValueError, AttributeError):
            return str(response.json()["message"])
    return _short_error(error)


def check_artifact_store(artifact_uri: str) -> None:
    """Fail before training when the run's artifacts could not be stored.

    Two ways of storing artifacts in S3 are checked; other stores (local
    folders) need no check:

    - ``s3://bucket/...``: this process writes to the bucket itself (boto3,
      ``AWS_*`` credentials, ``MLFLOW_S3_ENDPOINT_URL``); the bucket must answer
      ``head_bucket``.
    - ``mlflow-artifacts:/...``: the server proxies artifacts (``mlflow server
      --serve-artifacts --artifacts-destination s3://...``) with its own
      credentials; it must be able to list the run's (still empty) artifact
      folder. Its error names its bucket. Listing writes nothing, so no probe
      file is left in the run.

    Raises
    ------
    ArtifactStoreError
        Naming the bucket (or the server's own explanation) and what to check.
    """
    if artifact_uri.startswith("s3://"):
        _check_s3_bucket(artifact_uri)
    elif artifact_uri.startswith("mlflow-artifacts:"):
        try:
            mlflow.artifacts.list_artifacts(artifact_uri=artifact_uri)
        except Exception as error:
            raise ArtifactStoreError(
                f"the MLflow server {tracking_uri()} cannot use its artifact store "
                f"({_server_error_message(error)}); check that the bucket of its "
                "--artifacts-destination exists and that the server's AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and MLFLOW_S3_ENDPOINT_URL are right"
            ) from error


def _check_s3_bucket(artifact_uri: str) -> None:
    import boto3
    import botocore.exceptions
    from urllib.parse import urlparse

    bucket = urlparse(artifact_uri).netloc
    endpoint_url = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    try:
        # A new session reads the credentials in force now, not ones cached by an earlier client.
        boto3.session.Session().client("s3", endpoint_url=endpoint_url).head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        if isinstance(error, botocore.exceptions.ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            reason = {
                "404": "it does not exist", "NoSuchBucket": "it does not exist",
                "403": "access denied: wrong credentials or no permission",
            }.get(code, _short_error(error))
        else:
            reason = _short_error(error)
        raise ArtifactStoreError(
            f"cannot store artifacts in the S3 bucket {bucket!r} ({artifact_uri}): {reason}; "
            f"check the bucket name, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and "
            f"MLFLOW_S3_ENDPOINT_URL ({endpoint_url or 'AWS'})"
        ) from error
