"""End to end: simulate -> Spark backfill -> point-in-time training sets -> GE -> XGBoost -> MLflow registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from features.registry import REGISTRY
from tests.model.conftest import Trained, model_settings
from training.contract import ModelContract
from training.datasets import model_features
from training.pipeline import CHURN, PURCHASE, SCORERS, train_all
from training.registry import CHALLENGER, CHAMPION, TAG_DECISION, TAG_REASON, client_for, experiment_name
from validation.run import DataValidationError

ARTIFACTS = ("plots/roc.png", "plots/pr.png", "plots/calibration.png", "plots/feature_importance.png",
             "plots/shap_summary.png", "features.json", "feature_importance.json", "shap_mean_abs.json",
             "training_set_fingerprint.json", "metrics.json")


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_both_models_are_trained_measured_and_registered(trained: Trained) -> None:
    report = trained.report
    assert set(report.models) == {PURCHASE, CHURN}
    for name, r in report.models.items():
        assert set(r.metrics) == set(SCORERS) - {"bgnbd"}  # the built-in tasks: no classical baseline configured
        for m in r.metrics.values():
            assert 0.0 < m["auc"] < 1.0 and 0.0 < m["pr_auc"] <= 1.0 and m["log_loss"] > 0
            assert 0.0 <= m["ece"] < 1.0 and 0.0 <= m["brier"] < 1.0
        assert r.oracle_auc is not None and 0.5 < r.oracle_auc <= 1.0, name
        assert r.rows_train > 100 and r.rows_test > 100
        assert 0 < r.label_rate_test < 1
        assert (r.version, r.alias) == ("1", CHAMPION)
        assert r.reason.startswith("no champion yet"), r.reason
        assert r.features == [f for f in model_features(REGISTRY.service(r.feature_service))
                              if f not in r.excluded_features]
        assert "request_day_of_week" in r.excluded_features or name == CHURN  # 8 days < calendar_min_span
    text = str(report)
    for r in report.models.values():
        assert f"{r.metrics['xgboost']['auc']:.4f}" in text and f"{r.oracle_auc:.4f}" in text
        assert f"{r.registered_model} v1 -> champion" in text


def test_mlflow_holds_params_metrics_artifacts_and_the_feature_contract(trained: Trained) -> None:
    s = trained.settings
    client = client_for(s)  # also points mlflow's model URIs at this store (other tests use their own)
    assert s.mlflow_tracking_uri == f"sqlite:///{s.data_path}/mlflow.db"
    for name, r in trained.report.models.items():
        exp = client.get_experiment_by_name(experiment_name(s, name))
        assert exp is not None and exp.artifact_location.startswith((s.data_path / "mlartifacts").as_uri())
        run = client.get_run(r.run_id)
        assert run.info.experiment_id == exp.experiment_id
        assert run.data.params["feature_service"] == r.feature_service
        assert run.data.tags["training_set_sha256"] == r.fingerprint
        assert math.isclose(run.data.metrics["xgboost_auc"], r.metrics["xgboost"]["auc"])
        for k in ("logreg_auc", "heuristic_auc", "oracle_auc", "xgboost_pr_auc", "xgboost_log_loss",
                  "xgboost_ece", "xgboost_brier", "xgboost_cv_auc"):
            assert k in run.data.metrics, k
        assert set(ARTIFACTS) <= _artifacts(client, r.run_id)
        contract = json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=r.run_id, artifact_path="features.json", tracking_uri=s.mlflow_tracking_uri)).read_text())
        assert contract["feature_service"] == r.feature_service and contract["features"] == r.features
        assert all(ref.split(":")[1] in r.features for ref in contract["feature_refs"])
        typed = ModelContract.from_json(contract)  # the artifact is the typed contract serving reads
        assert typed.training_set_sha256 == r.fingerprint and list(typed.features) == r.features
        version = client.get_model_version_by_alias(r.registered_model, CHAMPION)
        assert str(version.version) == r.version and version.run_id == r.run_id
        assert str(client.get_model_version_by_alias(r.registered_model, CHALLENGER).version) == r.version
        assert version.tags[TAG_DECISION] == CHAMPION and version.tags[TAG_REASON] == r.reason
        assert run.data.tags[TAG_REASON] == r.reason
        info = mlflow.models.get_model_info(f"models:/{r.registered_model}@{CHAMPION}")
        assert info.signature is not None
        assert [c.name for c in info.signature.inputs.inputs] == r.features
        assert r.data_docs is not None and Path(r.data_docs).read_text().lower().startswith("<!doctype html")


def test_failed_validation_stops_before_training(trained: Trained, tmp_path: Path) -> None:
    s = trained.settings
    blocked = model_settings(s.data_path, mlflow_db=tmp_path / "blocked.db", training={"purchase": {
        "feature_service": "purchase_propensity_v1", "horizon": "24h", "embargo": "24h",
        "label_rate_min": 0.9, "label_rate_max": 1.0}})
    assert blocked.training.churn == s.training.churn  # only the purchase band differs
    lines: list[str] = []
    with pytest.raises(DataValidationError) as exc:
        train_all(blocked, spark=trained.retrieval.spark, progress=lines.append)
    message = str(exc.value)
    assert "training_set.purchase_propensity" in message and "FAILED" in message
    assert "column 'label': expect_column_mean_to_be_between" in message
    assert "outside the band [0.9, 1.0] for purchase_propensity" in message
    assert not any("holdout AUC" in line for line in lines)
    assert not (tmp_path / "blocked.db").exists()  # no run, no model: MLflow was never reached
