"""The Spark session, built from settings alone.

Running on a Spark cluster
--------------------------
Nothing in Kairos assumes local mode: the master URL, resources and any extra
Spark configuration come from the ``spark`` section of the settings
(``conf/kairos.yaml``, a YAML file named by ``KAIROS_CONFIG``, or environment
variables ``KAIROS__SPARK__<KEY>``):

=====================  =======================================  ======================
setting                Spark property                           default
=====================  =======================================  ======================
``master``             ``spark.master``                         ``local[2]``
``app_name``           ``spark.app.name``                       ``kairos``
``shuffle_partitions`` ``spark.sql.shuffle.partitions`` (and     ``4``
                       ``spark.default.parallelism``)
``driver_memory``      ``spark.driver.memory``                  ``4g``
``conf``               any other property, applied last         ``{}``
=====================  =======================================  ======================

For example::

    KAIROS__SPARK__MASTER=spark://spark-master:7077 \
    KAIROS__SPARK__DRIVER_MEMORY=8g \
    KAIROS__SPARK__SHUFFLE_PARTITIONS=200 \
    KAIROS__SPARK__CONF='{"spark.executor.memory": "16g", "spark.executor.cores": "4",
                          "spark.submit.pyFiles": "dist/kairos-0.1.0-py3-none-any.whl"}' \
    KAIROS__DATA_DIR=/mnt/kairos-lake/prod \
    kairos backfill --start 2026-10-01 --end 2026-11-01

or, in YAML::

    spark:
      master: spark://spark-master:7077      # or yarn, k8s://https://..., local[2]
      shuffle_partitions: 200
      driver_memory: 8g
      conf:
        spark.executor.memory: 16g
        spark.executor.cores: "4"
        spark.submit.pyFiles: dist/kairos-0.1.0-py3-none-any.whl

Shipping the code: the executors run the shared Python aggregation code
(``features/``: the state machine, monoids and expressions) inside
``mapInArrow``, so they need the Kairos package and its dependencies (pandas,
pyarrow). Build a wheel (``uv build``) and ship it with ``spark.submit.pyFiles``
(pure-Python code only; the executors' Python must already have pandas and
pyarrow), or install the wheel into the executors' image, which is the robust
choice. ``PYSPARK_PYTHON`` defaults to this interpreter; set it in the
environment (or ``spark.pyspark.python``) when executors' Python lives elsewhere.

Always set here: session time zone UTC, parquet timestamps written as
``TIMESTAMP_MICROS`` (Feast and Spark 4 read them back exactly), dynamic
partition overwrite (interval reruns replace only their days) and Arrow for
Python data exchange. ``data_dir`` must be on storage every executor can reach;
settings hold it as a filesystem path, so today that is a shared mount (an
object-store URI such as ``s3a://`` would need ``data_dir`` to become a URI).
The engine deletes stale partitions through Hadoop's ``FileSystem`` API of the
session's JVM, so it needs a classic session, not Spark Connect.
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
