"""Point-in-time training sets in Spark: the retrieval half of the Spark engine.

:class:`SparkRetrieval` fills :class:`pipelines.engine.RetrievalEngine`: each entity
row gets the selected features as of its timestamp from the offline tables the
backfill (:mod:`pipelines.spark.backfill`) writes.

The as-of join is a union of query and table rows, hashed by key and scanned in
time order with ``last(..., ignorenulls)``: a sort, never a cross join. Views of
the same entity share one scan, and table rows older than the earliest query
minus the view's TTL are skipped (they can only hold defaults by then).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from functools import reduce
from typing import Any

import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.settings import Settings
from features import spec
from features.registry import REGISTRY, FeatureSelection, Registry
from features.semantics import EPOCH
from pipelines.engine import RetrievalEngine
from pipelines.spark.schema import SPARK_TYPES, arrow_records, read_offline_table
from pipelines.spark.session import spark_session
from pipelines.store.offline import ARROW_TYPES, EVENT_TIMESTAMP


class SparkRetrieval(RetrievalEngine[DataFrame]):
    """Spark's point-in-time join over the offline tables (Spark or pandas entity frames in, Spark out)."""

    def __init__(self, settings: Settings, registry: Registry = REGISTRY, spark: SparkSession | None = None) -> None:
        super().__init__(registry)
        self.settings = settings
        self.spark = spark or spark_session(settings)
        self._bounds: tuple[datetime, datetime] | None = None  # of the current call's timestamps (entity_frame)

    def offline_table(self, view: spec.FeatureView) -> DataFrame:
        """A view's offline table (empty if it was never built)."""
        return read_offline_table(self.spark, self.settings, view)

    def training_set(self, entity_df: DataFrame | pd.DataFrame, features: FeatureSelection,
                     timestamp_col: str = EVENT_TIMESTAMP) -> DataFrame:
        """:meth:`get_historical_features` from a Spark or a pandas frame of entity rows."""
        frame = self.spark_frame(entity_df, timestamp_col) if isinstance(entity_df, pd.DataFrame) else entity_df
        return self.get_historical_features(frame, features, timestamp_col)

    def spark_frame(self, entity_df: pd.DataFrame, ts: str) -> DataFrame:
        """A pandas frame of entity rows as Spark takes it (``ts`` an aware UTC instant, in microseconds)."""
        if ts not in entity_df.columns:
            raise ValueError(f"entity_df has no column {ts!r}")
        stamps = entity_df[ts]
        if not isinstance(stamps.dtype, pd.DatetimeTZDtype):
            raise ValueError(f"entity_df[{ts!r}] must be timezone-aware UTC timestamps, got {stamps.dtype}")
        entity_df = entity_df.assign(**{ts: stamps.dt.tz_convert("UTC").astype("datetime64[us, UTC]")})
        return self.spark.createDataFrame(entity_df)

    # -- hooks -----------------------------------------------------------------------------------
    def entity_frame(self, entity_df: DataFrame, timestamp_col: str) -> DataFrame:
        ts = timestamp_col
        if ts not in entity_df.columns:
            raise ValueError(f"entity_df has no column {ts!r}")
        if not isinstance(entity_df.schema[ts].dataType, T.TimestampType):
            raise ValueError(f"entity_df column {ts!r} is {entity_df.schema[ts].dataType.simpleString()}, "
                             "expected timestamp (an instant, UTC)")
        # the earliest and latest query, as exact UTC instants (collect() would give naive local times)
        row = entity_df.agg(F.min(F.unix_micros(ts)), F.max(F.unix_micros(ts))).first()
        self._bounds = None
        if row is not None and row[0] is not None:
            self._bounds = (EPOCH + timedelta(microseconds=row[0]), EPOCH + timedelta(microseconds=row[1]))
        return entity_df

    def columns(self, frame: DataFrame) -> list[str]:
        return list(frame.columns)

    def select(self, frame: DataFrame, columns: Sequence[str], names: Sequence[str]) -> DataFrame:
        return frame.select(*(F.col(f"`{c}`") for c in columns), *names)

    def as_of_join(self, frame: DataFrame, key: str, views: Sequence[spec.FeatureView], timestamp_col: str
                   ) -> DataFrame:
        df, ts, bounds = frame, timestamp_col, self._bounds
        payload = F.struct(*(F.col(f"`{c}`") for c in df.columns))
        payload_type = df.select(payload.alias("p")).schema["p"].dataType
        value_types = [T.StructType([T.StructField(f.name, SPARK_TYPES[f.dtype], True) for f in v.features])
                       for v in views]

        def values(i: int | None) -> list[Column]:
            return [(F.struct(*(F.col(f.name) for f in v.features)) if j == i else F.lit(None).cast(value_types[j]))
                    .alias(f"_v{j}") for j, v in enumerate(views)]

        parts = [df.select(F.col(key).alias("_k"), F.col(ts).alias("_t"), F.lit(1).alias("_q"), payload.alias("_p"),
                           *values(None))]
        for i, v in enumerate(views):
            table = self.offline_table(v)
            if bounds is not None:  # a row older than the TTL holds only defaults; a lifetime view's never expire
                upper = F.col(EVENT_TIMESTAMP) <= F.lit(bounds[1])
                table = table.where(
                    upper if v.lifetime else (F.col(EVENT_TIMESTAMP) >= F.lit(bounds[0] - v.ttl)) & upper)
            parts.append(table.select(F.col(key).alias("_k"), F.col(EVENT_TIMESTAMP).alias("_t"), F.lit(0).alias("_q"),
                                      F.lit(None).cast(payload_type).alias("_p"), *values(i)))
        union = reduce(DataFrame.unionByName, parts)
        w = Window.partitionBy("_k").orderBy("_t", "_q").rowsBetween(Window.unboundedPreceding, Window.currentRow)
        matched = (union.select("_q", "_p", *(F.last(f"_v{i}", ignorenulls=True).over(w).alias(f"_v{i}")
                                             for i in range(len(views))))
                   .where(F.col("_q") == 1))
        return matched.select("_p.*", *(self._default(F.col(f"_v{i}.{f.name}"), f).alias(f.name)
                                        for i, v in enumerate(views) for f in v.features))

    @staticmethod
    def _default(value: Column, f: spec.Feature) -> Column:
        if f.default is None:
            return value
        if f.dtype == "array<string>":
            fallback = F.array(*(F.lit(x) for x in f.default)).cast(SPARK_TYPES[f.dtype])
        else:
            fallback = F.lit(f.default).cast(SPARK_TYPES[f.dtype])
        return F.coalesce(value, fallback)

    def on_demand(self, frame: DataFrame, views: Sequence[spec.OnDemandView], timestamp_col: str) -> DataFrame:
        """The spec's on-demand expressions, row by row in Python (as the reference and Feast run them)."""
        df, odvs, ts = frame, views, timestamp_col
        out = [f for o in odvs for f in o.features]
        inputs = sorted({n for o in odvs for v in o.sources for n in v.feature_names} | {ts}
                        | {r.name for o in odvs for r in o.request_fields if r.name != spec.REQUEST_TIME.name})
        missing = [c for c in inputs if c not in df.columns]
        if missing:
            raise ValueError(f"on-demand features need columns {missing}")
        schema = T.StructType([*df.schema.fields, *(T.StructField(f.name, SPARK_TYPES[f.dtype], True) for f in out)])

        def compute(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                results: dict[str, list[Any]] = {f.name: [] for f in out}
                for r in arrow_records(batch.select(inputs)):
                    r[spec.REQUEST_TIME.name] = r[ts]
                    for o in odvs:
                        for name, value in o.compute(r).items():
                            results[name].append(value)
                arrays = [pa.array(results[f.name], type=ARROW_TYPES[f.dtype]) for f in out]
                yield pa.RecordBatch.from_arrays([*batch.columns, *arrays],
                                                 names=[*batch.schema.names, *(f.name for f in out)])

        return df.mapInArrow(compute, schema)
