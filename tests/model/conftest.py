"""One small simulation, Spark backfill and training run shared by the model tests.

The session-scoped ``spark`` fixture of ``tests/conftest.py`` does the Spark work;
MLflow tracks into a SQLite store under the temporary data directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from conf.settings import Settings, load_settings
from pipelines.ingest.simulator import SimulationConfig, simulate_to_dir
from pipelines.spark.retrieval import SparkRetrieval
from training.pipeline import TrainingReport, train_all

USERS, DAYS = 300, 8


def model_settings(data_dir: Path, mlflow_db: Path | None = None, **overrides: object) -> Settings:
    """Settings whose data, MLflow store and artifacts all live under ``data_dir``."""
    db = mlflow_db or data_dir / "mlflow.db"
    return load_settings(data_dir=data_dir, online_store={"type": "sqlite", "path": str(data_dir / "online.db")},
                         mlflow={"tracking_uri": f"sqlite:///{db}", "artifact_location": ""},
                         spark={"master": "local[2]", "shuffle_partitions": 2}, **overrides)


@dataclass
class Trained:
    settings: Settings
    retrieval: SparkRetrieval
    report: TrainingReport
    lines: list[str]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, spark: SparkSession) -> Iterator[Trained]:
    """Simulate, train both models end to end once; tests read the report, the store and the registry."""
    data = tmp_path_factory.mktemp("model-data")
    # the settings' own labels, bands and gate; a smaller XGBoost grid keeps the suite within its time budget
    settings = model_settings(data, training={"xgboost": {"max_depth": [2, 3], "min_child_weight": [10.0]}})
    simulate_to_dir(SimulationConfig.from_settings(settings, users=USERS, days=DAYS), data)
    lines: list[str] = []
    report = train_all(settings, spark=spark, progress=lines.append)
    yield Trained(settings=settings, retrieval=SparkRetrieval(settings, spark=spark), report=report, lines=lines)


@pytest.fixture(scope="session")
def purchase_frame(trained: Trained) -> pd.DataFrame:
    """The purchase-propensity training frame, rebuilt from the same decision points (for behavioural tests)."""
    from features.registry import REGISTRY
    from training import labels as lbl
    from training.datasets import build_training_frame

    s = trained.settings
    events = lbl.read_events(s.events_path)
    points = lbl.sample_decision_points(events, per_session=s.training.decision_points_per_session,
                                        seed=s.training.seed)
    labelled = lbl.purchase_labels(points, events, s.training.purchase.horizon)
    service = REGISTRY.service(s.training.purchase.feature_service)
    return build_training_frame(trained.retrieval, labelled, service).frame
