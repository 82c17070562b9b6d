"""The champion/challenger gate: pure decisions, then against a real (temporary SQLite) MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from tests.model.conftest import model_settings
from training.contract import FEATURES_ARTIFACT, ModelContract
from training.pipeline import champion_scorer
from training.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_DECISION,
    TAG_REASON,
    client_for,
    decide,
    ensure_experiment,
    register_and_gate,
)


def test_first_model_becomes_champion() -> None:
    d = decide(metric="auc", challenger=0.61, champion=None, margin=0.01)
    assert d.promote and d.outcome == CHAMPION
    assert d.reason == "no champion yet: the first model becomes champion (auc 0.6100 on the holdout)"


@pytest.mark.parametrize(("challenger", "champion", "promote"), [
    (0.70, 0.72, False),    # worse
    (0.725, 0.72, False),   # better, but not by the margin
    (0.73, 0.72, False),    # exactly the margin is not enough
    (0.7301, 0.72, True),   # better by more than the margin
])
def test_challenger_needs_to_beat_the_champion_by_the_margin(challenger: float, champion: float,
                                                             promote: bool) -> None:
    d = decide(metric="auc", challenger=challenger, champion=champion, margin=0.01, champion_version="3")
    assert d.promote is promote
    assert d.outcome == (CHAMPION if promote else CHALLENGER)
    assert "champion v3" in d.reason and f"{challenger:.4f} vs {champion:.4f}" in d.reason
    assert ("beats" if promote else "does not beat") in d.reason


def test_a_champion_that_cannot_be_scored_is_kept() -> None:
    d = decide(metric="auc", challenger=0.9, champion=None, margin=0.0, champion_version="2",
               not_comparable="it needs features ['x'] the holdout lacks")
    assert not d.promote and "cannot be scored on this holdout" in d.reason and "['x']" in d.reason


def _holdout(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-2.5 * x[:, 0]))).astype(int)
    return pd.DataFrame({"signal": x[:, 0], "noise_a": x[:, 1], "noise_b": x[:, 2], "label": y})


def _log(settings_model: str, experiment_id: str, train: pd.DataFrame, features: list[str], rounds: int,
         shuffle: bool, tmp: Path) -> tuple[str, str]:
    y = train["label"].sample(frac=1.0, random_state=0).to_numpy() if shuffle else train["label"].to_numpy()
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
                        xgb.DMatrix(train[features], label=y), rounds)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        contract = ModelContract(model=settings_model, registered_model=settings_model, feature_service="test",
                                 feature_refs=tuple(f"test:{f}" for f in features), features=tuple(features),
                                 entity_keys=("user_id",), label="signal", training_set_sha256="0" * 64)
        (tmp / FEATURES_ARTIFACT).write_text(json.dumps(contract.to_json()))
        mlflow.log_artifact(str(tmp / FEATURES_ARTIFACT))
        info = mlflow.xgboost.log_model(booster, name="model", pip_requirements=["xgboost"])
    return run.info.run_id, info.model_uri


def test_registry_aliases_follow_the_gate_and_reasons_are_recorded(tmp_path: Path) -> None:
    settings = model_settings(tmp_path)
    client = client_for(settings)
    exp = ensure_experiment(client, settings, "gate_test")
    name = "kairos-gate-test"
    train, test = _holdout(3000, 1), _holdout(2000, 2)
    feats = ["signal", "noise_a", "noise_b"]
    scorer = champion_scorer(client, name, test, "auc")

    def gate(shuffle: bool, rounds: int) -> tuple[str, str, str]:
        run_id, uri = _log(name, exp, train, feats, rounds, shuffle, tmp_path)
        booster = mlflow.pyfunc.load_model(uri)
        value = float(roc_auc_score(test["label"], booster.predict(test[feats])))
        version, decision = register_and_gate(client, name=name, model_uri=uri, run_id=run_id, metric="auc",
                                              challenger_value=value, margin=0.005, score_champion=scorer)
        assert version.tags[TAG_DECISION] == decision.outcome and version.tags[TAG_REASON] == decision.reason
        assert client.get_run(run_id).data.tags[TAG_REASON] == decision.reason
        assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(version.version)
        return str(version.version), decision.outcome, decision.reason

    assert gate(shuffle=False, rounds=2)[:2] == ("1", CHAMPION)          # first: champion by default
    v2, outcome, reason = gate(shuffle=True, rounds=20)                  # a model of noise: worse
    assert (v2, outcome) == ("2", CHALLENGER) and "does not beat champion v1" in reason
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    v3, outcome, reason = gate(shuffle=False, rounds=60)                 # more rounds on the signal: better
    assert (v3, outcome) == ("3", CHAMPION) and "beats champion v1 on the same holdout" in reason
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "3"
    assert client.get_model_version(name, "2").tags[TAG_DECISION] == CHALLENGER
