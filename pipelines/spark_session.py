"""The Spark session, built from settings alone.

Running on a Spark cluster
--------------------------
Nothing in Kairos assumes local mode: the master URL, resources and any extra
Spark configuration come from the ``spark`` section of the settings::

    KAIROS__SPARK__MASTER=spark://spark-master:7077 \\
    KAIROS__SPARK__DRIVER_MEMORY=8g \\
    KAIROS__SPARK__SHUFFLE_PARTITIONS=200 \\
    python -m pipelines.spark_builder backfill --start 2026-10-01 --end 2026-11-01

or, in a YAML file named by ``KAIROS_CONFIG``::

    spark:
      master: spark://spark-master:7077      # or yarn, k8s://https://..., local[2]
      shuffle_partitions: 200
      driver_memory: 8g
      conf:
        spark.executor.memory: 16g
        spark.executor.cores: "4"
        spark.submit.pyFiles: dist/kairos-0.1.0-py3-none-any.whl

The executors run the shared Python aggregation code (``features/``), so they need
the Kairos package: ship the wheel (``uv build``) with ``spark.submit.pyFiles`` or
install it in the executors' image. Paths in ``data_dir`` must then be on storage
every executor can read (for example ``s3a://`` or HDFS).
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from conf.settings import Settings


def spark_session(settings: Settings) -> SparkSession:
    """Get or create the session described by ``settings.spark``."""
    s = settings.spark
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(s.master)
        .appName(s.app_name)
        .config("spark.sql.shuffle.partitions", str(s.shuffle_partitions))
        .config("spark.default.parallelism", str(s.shuffle_partitions))
        .config("spark.driver.memory", s.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in s.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
