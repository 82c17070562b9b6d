"""One Spark session for the parity suite (starting a JVM costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from conf.settings import load_settings
from pipelines.spark_session import spark_session


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    base: Path = tmp_path_factory.mktemp("spark")
    settings = load_settings(data_dir=base, spark={"master": "local[2]", "shuffle_partitions": 2,
                                                    "driver_memory": "2g", "app_name": "kairos-tests"})
    session = spark_session(settings)
    yield session
    session.stop()
