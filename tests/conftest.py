"""Shared fixtures: settings pointing at a temporary data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from conf.settings import Settings, load_settings
from pipelines.spark.session import spark_session


def settings_in(path: Path, **overrides: object) -> Settings:
    return load_settings(data_dir=path, online_store={"type": "sqlite", "path": str(path / "online.db")},
                         **overrides)


@pytest.fixture
def tmp_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose every path is under a fresh temporary directory (also for subprocesses via env)."""
    monkeypatch.setenv("KAIROS__DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KAIROS__ONLINE_STORE__PATH", str(tmp_path / "online.db"))
    yield settings_in(tmp_path)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """One Spark session for the whole run (a JVM start costs seconds), sized for 2 cores."""
    base: Path = tmp_path_factory.mktemp("spark")
    settings = load_settings(data_dir=base, spark={"master": "local[2]", "shuffle_partitions": 2,
                                                    "driver_memory": "2g", "app_name": "kairos-tests"})
    session = spark_session(settings)
    yield session
    session.stop()
