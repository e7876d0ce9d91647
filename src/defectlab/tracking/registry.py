"""Model registry: promote a registered detector to the alias ``champion``.

Every registry call of defectlab lives here. Only aliases are used (MLflow's
model stages are deprecated): the serving URI is ``models:/<name>@champion``.

A version is judged by a metric of the run that produced it
(``ModelVersion.run_id``): by default ``val_image_auroc``, higher is better.
Model selection stays off the test split, as in tuning: choosing on a
``test_`` metric must be asked for, and the decision records that it was.
The candidate takes the alias only when it is strictly better than the current
champion; the decision is written on the candidate version as tags, so the
registry itself says why a version is or is not serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from defectlab.config import DEFAULT_PROMOTION_METRIC
from defectlab.errors import DefectlabError

CHAMPION_ALIAS = "champion"
TEST_SPLIT_PREFIX = "test_"


class RegistryError(DefectlabError, ValueError):
    """A registered model, version or metric needed for promotion is missing."""


@dataclass(frozen=True)
class PromotionDecision:
    """What `promote` decided, and why.

    Attributes
    ----------
    promoted : bool
        True when the alias ``champion`` now points at ``candidate_version``
        and did not before.
    model_name : str
    metric : str
        The run metric the versions were compared on.
    higher_is_better : bool
    candidate_version : str
    champion_version_before : str or None
        The version behind ``champion`` before the decision (None: there was none).
    candidate_value : float
    champion_value : float or None
    reason : str
        One sentence for people.
    significant : bool or None
        Whether a better candidate's value lies outside the champion's
        bootstrap 95 % interval; None when not judged (no champion, not better,
        or the champion's run logged no interval).
    """

    promoted: bool
    model_name: str
    metric: str
    higher_is_better: bool
    candidate_version: str
    champion_version_before: str | None
    candidate_value: float
    champion_value: float | None
    reason: str
    significant: bool | None = None

    @property
    def champion_version_after(self) -> str:
        return self.candidate_version if self.promoted else self.champion_version_before

    def summary(self) -> str:
        """The decision in one line (what ``defectlab promote`` prints)."""
        verdict = "promoted" if self.promoted else "not promoted"
        return (
            f"{self.model_name} version {self.candidate_version} {verdict}: {self.reason} "
            f"({CHAMPION_ALIAS} is version {self.champion_version_after})"
        )


def _client() -> MlflowClient:
    return MlflowClient()


def _registered_model(client: MlflowClient, model_name: str):
    try:
        return client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"cannot read registered model {model_name!r}: {error.message}") from None
        raise RegistryError(
            f"no registered model named {model_name!r} in the registry; register one with --register-as"
        ) from None


def _model_version(client: MlflowClient, model_name: str, version: str):
    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as error:
        # A version that is not a number is refused as an invalid parameter, not as missing.
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(
                f"cannot read {model_name} version {version}: {error.message}"
            ) from None
        raise RegistryError(f"registered model {model_name!r} has no version {version!r}") from None


def newest_version(model_name: str, client: MlflowClient | None = None) -> str:
    """The highest version number of ``model_name``."""
    client = client or _client()
    _registered_model(client, model_name)
    versions = client.search_model_versions(f"name = '{model_name}'")
    if not versions:
        raise RegistryError(f"registered model {model_name!r} has no versions")
    return str(max(int(version.version) for version in versions))


def champion_version(model_name: str, client: MlflowClient | None = None) -> str | None:
    """The version behind the alias ``champion`` (None when the alias is not set)."""
    client = client or _client()
    alias_version = _registered_model(client, model_name).aliases.get(CHAMPION_ALIAS)
    return None if alias_version is None else str(alias_version)


def version_run_interval(model_name: str, version: str, metric: str,
                         client: MlflowClient | None = None) -> tuple[float, float] | None:
    """The bootstrap 95 % interval (``<metric>_ci_low``, ``_ci_high``) logged by ``version``'s run, if any."""
    client = client or _client()
    try:
        low = version_run_metric(model_name, version, f"{metric}_ci_low", client)
        high = version_run_metric(model_name, version, f"{metric}_ci_high", client)
    except RegistryError:
        return None
    return low, high


def version_run_metric(model_name: str, version: str, metric: str,
                       client: MlflowClient | None = None) -> float:
    """``metric`` of the run that produced ``version``; `RegistryError` when it has none."""
    client = client or _client()
    model_version = _model_version(client, model_name, version)
    if not model_version.run_id:
        raise RegistryError(
            f"{model_name} version {version} was not registered from a run, so it has no "
            f"metric {metric!r} to compare"
        )
    try:
        run = client.get_run(model_version.run_id)
    except MlflowException:
        raise RegistryError(
            f"{model_name} version {version}: its run {model_version.run_id} no longer exists"
        ) from None
    if metric not in run.data.metrics:
        available = ", ".join(sorted(run.data.metrics)) or "none"
        raise RegistryError(
            f"{model_name} version {version}: its run {model_version.run_id} has no metric "
            f"{metric!r} (it has: {available})"
        )
    return float(run.data.metrics[metric])


def _is_better(candidate_value: float, champion_value: float, higher_is_better: bool) -> bool:
    # Strictly better only: a tie keeps the serving version, so a re-run never moves the alias.
    if higher_is_better:
        return candidate_value > champion_value
    return candidate_value < champion_value


def _record_decision(client: MlflowClient, decision: PromotionDecision) -> None:
    tags = {
        "promotion_decision": "promoted" if decision.promoted else "not_promoted",
        "promotion_reason": decision.reason,
        "promotion_metric": decision.metric,
        "promotion_on_test_split": str(decision.metric.startswith(TEST_SPLIT_PREFIX)).lower(),
        "promotion_higher_is_better": str(decision.higher_is_better).lower(),
        "promotion_candidate_value": repr(decision.candidate_value),
        "promotion_champion_value": (
            "" if decision.champion_value is None else repr(decision.champion_value)
        ),
        "compared_with_version": decision.champion_version_before or "",
        "promotion_significant": {True: "true", False: "false", None: "unknown"}[decision.significant],
    }
    for key, value in tags.items():
        client.set_model_version_tag(decision.model_name, decision.candidate_version, key, value)


def promote(
    model_name: str,
    metric: str = DEFAULT_PROMOTION_METRIC,
    version: str | int | None = None,
    higher_is_better: bool = True,
    require_significant: bool = False,
) -> PromotionDecision:
    """Give ``version`` the alias ``champion`` if its run beats the current champion's on ``metric``.

    Parameters
    ----------
    model_name : str
        Registered model name, e.g. ``defectlab-metric-carpet``.
    metric : str
        Metric of the producing runs to compare (default ``val_image_auroc``:
        the validation split; a ``test_`` metric selects on the test split,
        which the decision's reason and the tag ``promotion_on_test_split`` record).
    version : str or int, optional
        Candidate version; default (None or empty) the newest.
    higher_is_better : bool
        False for metrics such as a loss.
    require_significant : bool
        Promote a better candidate only if its value lies outside the
        champion's bootstrap 95 % interval (``<metric>_ci_low``/``_ci_high`` of
        the champion's run; without one, significance is unknown and the
        candidate is not promoted). Either way the decision says whether the
        gain is inside that interval.

    Returns
    -------
    PromotionDecision
        Also recorded as tags on the candidate version. The first version
        compared when no champion exists becomes champion.

    Raises
    ------
    RegistryError
        Unknown model or version, or a run without ``metric``; the alias is
        then left untouched.
    """
    client = _client()
    significant = None
    candidate_version = str(version) if version not in (None, "") else newest_version(model_name, client)
    candidate_value = version_run_metric(model_name, candidate_version, metric, client)
    current_champion = champion_version(model_name, client)

    if current_champion is None:
        promoted, champion_value = True, None
        reason = f"no {CHAMPION_ALIAS} yet; {metric}={candidate_value:.6g} becomes the first"
    elif current_champion == candidate_version:
        promoted, champion_value = False, candidate_value
        reason = f"version {candidate_version} already is the {CHAMPION_ALIAS}"
    else:
        champion_value = version_run_metric(model_name, current_champion, metric, client)
        promoted = _is_better(candidate_value, champion_value, higher_is_better)
        direction = "higher" if higher_is_better else "lower"
        comparison = (
            f"{metric}={candidate_value:.6g} against {champion_value:.6g} of version "
            f"{current_champion} ({direction} is better)"
        )
        reason = ("better: " if promoted else "not strictly better: ") + comparison
        if promoted:
            interval = version_run_interval(model_name, current_champion, metric, client)
            if interval is None:
                significant = None
                reason += (f"; version {current_champion}'s run logged no 95 % interval of {metric}, "
                           "so whether the gain is significant is unknown")
            else:
                significant = not interval[0] <= candidate_value <= interval[1]
                reason += (
                    f"; the gain is {'outside' if significant else 'inside'} version {current_champion}'s "
                    f"95 % interval ({interval[0]:.6g}-{interval[1]:.6g})"
                    + ("" if significant else ": not significant")
                )
            if require_significant and not significant:
                promoted = False
                reason += "; not promoted (--require-significant)"
    if metric.startswith(TEST_SPLIT_PREFIX):
        reason += (
            f"; chosen on the test split ({metric}, as asked), so {metric} no longer measures the "
            "champion without bias"
        )

    decision = PromotionDecision(
        promoted=promoted,
        model_name=model_name,
        metric=metric,
        higher_is_better=higher_is_better,
        candidate_version=candidate_version,
        champion_version_before=current_champion,
        candidate_value=candidate_value,
        champion_value=champion_value,
        reason=reason,
        significant=significant,
    )
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, candidate_version)
    _record_decision(client, decision)
    return decision


def version_of_model_uri(model_uri: str, client: MlflowClient | None = None) -> str:
    """The registered version a ``models:/`` URI names (``models:/<name>/<version>``,
    ``models:/<name>@<alias>``, ``models:/<name>/latest``); ``""`` for any other URI."""
    if not model_uri.startswith("models:/"):
        return ""
    reference = model_uri[len("models:/"):].strip("/")
    client = client or _client()
    if "@" in reference:
        model_name, alias = reference.split("@", 1)
        try:
            return str(client.get_model_version_by_alias(model_name, alias).version)
        except MlflowException as error:
            raise RegistryError(f"{model_uri}: {error.message}") from None
    model_name, _, version = reference.rpartition("/")
    if version.isdigit():
        return version
    if version == "latest":
        return newest_version(model_name, client)
    return ""


def run_id_of_model_uri(model_uri: str, client: MlflowClient | None = None) -> str | None:
    """The run that logged the model ``model_uri`` names, or None when it names none.

    ``runs:/<run_id>/...``; a logged model's ``models:/<model_id>`` (what
    MLflow 3 returns when a model is logged); a registered ``models:/`` URI's
    version's run; a local logged-model folder's ``MLmodel`` ``run_id``
    (None for a bundle folder).
    """
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].strip("/").split("/", 1)[0] or None
    if model_uri.startswith("models:/"):
        client = client or _client()
        reference = model_uri[len("models:/"):].strip("/")
        if "/" not in reference and "@" not in reference:
            try:
                return client.get_logged_model(reference).source_run_id or None
            except MlflowException as error:
                raise RegistryError(f"{model_uri}: {error.message}") from None
        model_name = reference.split("@", 1)[0] if "@" in reference else reference.rpartition("/")[0]
        return _model_version(client, model_name, version_of_model_uri(model_uri, client)).run_id or None
    mlmodel = Path(model_uri).expanduser() / "MLmodel"
    if mlmodel.is_file():
        from mlflow.models import Model

        return Model.load(str(mlmodel)).run_id
    return None
