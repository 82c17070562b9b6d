"""MLflow: tracking setup from settings, and the champion/challenger promotion gate.

Every new model version gets the ``challenger`` alias. It takes ``champion`` only
if it beats the current champion, scored on the *same* holdout rows, by more than
the configured margin; with no champion yet, the first version becomes champion.
Either way the reason is written to the version and to its run as tags
(``promotion_decision``, ``promotion_reason``), so the registry says why each
version holds the alias it holds.

URIs come only from settings (:attr:`conf.settings.Settings.mlflow_tracking_uri`):
the embedded SQLite store by default, an MLflow server URL if configured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conf.settings import Settings
from training.contract import FEATURES_ARTIFACT, ModelContract

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
TAG_DECISION: Final = "promotion_decision"
TAG_REASON: Final = "promotion_reason"


def client_for(settings: Settings) -> MlflowClient:
    """Point MLflow at the settings' tracking and registry URIs and return a client for them."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_registry_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_registry_uri)


def experiment_name(settings: Settings, model: str) -> str:
    return f"{settings.mlflow.experiment_prefix}/{model}"


def registered_model_name(settings: Settings, model: str) -> str:
    return f"{settings.mlflow.registered_model_prefix}-{model}"


def ensure_experiment(client: MlflowClient, settings: Settings, model: str) -> str:
    """The experiment of ``model`` (created with the settings' artifact location if new); returns its id."""
    name = experiment_name(settings, model)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    root = settings.mlflow_artifact_location
    location = None if root is None else f"{root.rstrip('/')}/{model}"  # one folder per experiment
    return str(client.create_experiment(name, artifact_location=location, tags={"kairos.model": model}))


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    metric: str
    challenger_value: float
    champion_value: float | None = None
    champion_version: str | None = None

    @property
    def outcome(self) -> str:
        return CHAMPION if self.promote else CHALLENGER


def decide(*, metric: str, challenger: float, champion: float | None, margin: float,
           champion_version: str | None = None, not_comparable: str | None = None) -> PromotionDecision:
    """The gate: promote iff there is no champion, or ``challenger > champion + margin`` on the same holdout."""
    if champion_version is None:
        return PromotionDecision(True, f"no champion yet: the first model becomes champion ({metric} "
                                       f"{challenger:.4f} on the holdout)", metric, challenger)
    if not_comparable is not None or champion is None:
        return PromotionDecision(False, f"champion v{champion_version} cannot be scored on this holdout "
                                        f"({not_comparable}); stays champion", metric, challenger, None,
                                 champion_version)
    delta = challenger - champion
    if delta - margin > 1e-12:  # strictly more than the margin, not a floating-point hair above it
        return PromotionDecision(True, f"beats champion v{champion_version} on the same holdout: {metric} "
                                       f"{challenger:.4f} vs {champion:.4f} (+{delta:.4f} > margin {margin})",
                                 metric, challenger, champion, champion_version)
    return PromotionDecision(False, f"does not beat champion v{champion_version} by the margin: {metric} "
                                    f"{challenger:.4f} vs {champion:.4f} ({delta:+.4f} <= margin {margin})",
                             metric, challenger, champion, champion_version)


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def model_contract(client: MlflowClient, version: ModelVersion) -> ModelContract:
    """The contract a version was logged with (``features.json`` of its run)."""
    if version.run_id is None:
        raise ValueError(f"model version {version.version} has no run")
    path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=FEATURES_ARTIFACT,
                                               tracking_uri=client.tracking_uri)
    with open(path, encoding="utf-8") as fh:
        return ModelContract.from_json(json.load(fh))


# A champion scorer gets the champion's version and returns its metric on the holdout, or raises
# LookupError naming why it cannot be scored there (e.g. a feature the holdout lacks).
ChampionScorer = Callable[[ModelVersion], float]


def register_and_gate(client: MlflowClient, *, name: str, model_uri: str, run_id: str, metric: str,
                      challenger_value: float, margin: float, score_champion: ChampionScorer,
                      tags: dict[str, str] | None = None) -> tuple[ModelVersion, PromotionDecision]:
    """Register ``model_uri`` as a new version of ``name``, alias it ``challenger``, and run the gate."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"kairos.metric": metric})
    champion = current_champion(client, name)
    version = mlflow.register_model(model_uri, name, tags=tags or {})
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    champion_value: float | None = None
    not_comparable: str | None = None
    if champion is not None:
        try:
            champion_value = score_champion(champion)
        except LookupError as e:
            not_comparable = str(e)
    decision = decide(metric=metric, challenger=challenger_value, champion=champion_value, margin=margin,
                      champion_version=None if champion is None else str(champion.version),
                      not_comparable=not_comparable)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    record = {TAG_DECISION: decision.outcome, TAG_REASON: decision.reason,
              f"holdout_{metric}": f"{challenger_value:.6f}"}
    if champion_value is not None:
        record[f"champion_holdout_{metric}"] = f"{champion_value:.6f}"
        record["compared_with_version"] = str(decision.champion_version)
    for k, v in record.items():
        client.set_model_version_tag(name, version.version, k, v)
        client.set_tag(run_id, k, v)
    client.set_tag(run_id, "registered_model", name)
    client.set_tag(run_id, "registered_version", str(version.version))
    return client.get_model_version(name, version.version), decision


@dataclass
class LoadedModel:
    """A registered model version with its feature contract: what serving needs to score a frame."""

    name: str
    version: str
    contract: ModelContract
    pyfunc: Any

    @property
    def features(self) -> list[str]:
        return list(self.contract.features)

    @property
    def feature_service(self) -> str:
        return self.contract.feature_service

    def predict(self, frame: Any) -> Any:
        """Probabilities for the rows of ``frame`` (a DataFrame holding at least the contract's features)."""
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise KeyError(f"{self.name} v{self.version} needs features {missing}")
        return np.asarray(self.pyfunc.predict(frame[self.features].astype("float64")), dtype=float).reshape(-1)


def load_model(settings: Settings, model: str, alias: str = CHAMPION) -> LoadedModel:
    """The version of ``model`` holding ``alias``, loaded with its feature contract (``features.json``)."""
    client = client_for(settings)
    name = registered_model_name(settings, model)
    version = client.get_model_version_by_alias(name, alias)
    return LoadedModel(name=name, version=str(version.version), contract=model_contract(client, version),
                       pyfunc=mlflow.pyfunc.load_model(f"models:/{name}@{alias}"))
