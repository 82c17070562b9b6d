"""Spark's face of the shared contracts: spec dtypes as Spark types, the offline tables' Spark schema
(from :func:`pipelines.store.offline.offline_columns`), Arrow batches as spec rows, and frames back to pandas."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pandas as pd
import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from conf.settings import Settings
from features import spec
from features.events import ALL_FIELDS
from pipelines.store.offline import PARTITION, offline_columns, offline_table_path

SPARK_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "int64": T.LongType(),
    "float64": T.DoubleType(),
    "bool": T.BooleanType(),
    "timestamp": T.TimestampType(),
    "array<string>": T.ArrayType(T.StringType()),
}
EVENT_SPARK_SCHEMA = T.StructType([T.StructField(f.name, SPARK_TYPES[f.dtype], True) for f in ALL_FIELDS])


def offline_schema(view: spec.FeatureView) -> T.StructType:
    """The offline table's Spark schema (:func:`pipelines.store.offline.offline_columns`)."""
    return T.StructType([T.StructField(c.name, SPARK_TYPES[c.dtype], c.nullable) for c in offline_columns(view)])


def read_offline_table(spark: SparkSession, settings: Settings, view: spec.FeatureView) -> DataFrame:
    """A view's offline table (empty if it was never built)."""
    schema = offline_schema(view).add(PARTITION, T.StringType())
    try:
        df = spark.read.schema(schema).parquet(str(offline_table_path(settings, view)))
    except AnalysisException as e:
        if "PATH_NOT_FOUND" not in str(e):
            raise
        df = spark.createDataFrame([], schema)
    return df.drop(PARTITION)


def arrow_records(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """Rows of an Arrow batch as dicts: exact int64s, ``None`` for nulls, ``datetime.UTC``-aware times."""
    names = batch.schema.names
    columns: list[list[Any]] = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        values = column.to_pylist()
        if pa.types.is_timestamp(field.type):
            values = [None if v is None else v.replace(tzinfo=UTC) for v in values]
        columns.append(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def to_pandas(df: DataFrame) -> pd.DataFrame:
    """``df.toPandas()`` with every timestamp column as ``datetime64[us, UTC]`` (Spark hands back naive times).

    The session time zone is UTC (:func:`pipelines.spark.session.spark_session`), so
    naive values are UTC instants.
    """
    pdf = df.toPandas()
    for f in df.schema.fields:
        if isinstance(f.dataType, T.TimestampType):
            col = pd.to_datetime(pdf[f.name])
            col = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
            pdf[f.name] = col.astype("datetime64[us, UTC]")
    return pdf
