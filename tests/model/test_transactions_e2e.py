"""A transaction export to a champion model: the simulator's transactions-only mode -> the importer -> a cutoff
task configured in settings alone -> XGBoost beats logistic regression and BG/NBD on the holdout, in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from kairos import jobs
from pipelines.ingest.transactions import TransactionExportConfig, write_transaction_export
from tests.model.conftest import model_settings
from training.pipeline import train_all
from training.registry import CHAMPION, client_for

REPO = Path(__file__).resolve().parents[2]
TASK = "repurchase_90d"


def test_a_cutoff_task_from_settings_beats_logreg_and_bgnbd_on_an_imported_transaction_log(
        tmp_path: Path, spark: SparkSession) -> None:
    export = write_transaction_export(tmp_path / "export.csv", TransactionExportConfig(customers=900, months=18))
    # the whole task comes from settings: the embedded repurchase_90d task, named in training.run
    settings = model_settings(tmp_path / "data", training={"run": [TASK], "xgboost": {
        "max_depth": [2, 3], "min_child_weight": [10.0]}})
    summary = jobs.import_log(settings, REPO / "conf/importers/retail_transactions.yaml", export.path)
    assert summary.accepted == export.rows
    lines: list[str] = []
    report = train_all(settings, spark=spark, progress=lines.append)
    assert set(report.models) == {TASK}
    r = report.models[TASK]
    assert r.feature_service == "customer_value_v1" and "cutoff" in r.label_definition
    assert {"xgboost", "logreg", "bgnbd"} <= set(r.metrics)
    assert r.auc["xgboost"] > r.auc["logreg"], "\n".join(lines)
    assert r.auc["xgboost"] > r.auc["bgnbd"], "\n".join(lines)
    assert r.auc["bgnbd"] > 0.7  # the classical model is a real baseline on this log, not a strawman
    assert r.alias == CHAMPION and r.beats_baselines
    run = client_for(settings).get_run(r.run_id)
    assert run.data.params["decision_points"] == "cutoffs" and run.data.params["bgnbd_library"]
    assert run.data.metrics["xgboost_auc_over_bgnbd"] == pytest.approx(r.auc["xgboost"] - r.auc["bgnbd"])
    assert run.data.metrics["xgboost_auc_over_logreg"] > 0 and run.data.metrics["bgnbd_auc"] == r.auc["bgnbd"]
    # no training label window reaches into the test period
    assert any("train" in line and "test" in line and "cutoffs" in line for line in lines)
    assert isinstance(client_for(settings), MlflowClient)
