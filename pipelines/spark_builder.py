"""The Spark engine: backfills, incremental runs and point-in-time training sets.

A thin adapter of the shared semantics. Admission (consent, lateness, first
arrival) is the rule of :class:`features.semantics.EventRules` written as Spark
expressions; aggregation runs the shared state machine
(:func:`features.state.sweep`, over the shared monoids) once per entity key with
``applyInPandas``, so no window or aggregation rule is written a second time.
Output names and types come from the specs.

Each view's offline table (the Feast batch source) holds one row per key and
change point: every value the online store could have held, stamped with the
moment it became true. A point-in-time lookup is then an as-of join on that
table, which :meth:`SparkFeatureBuilder.training_set` does in Spark.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.settings import Settings, load_settings
from features import spec
from features.events import ALL_FIELDS, REQUIRED_COMMON
from features.registry import REGISTRY, Registry
from features.state import sweep
from pipelines.builder import BuildReport, FeatureBuilder
from pipelines.spark_session import spark_session

EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
PARTITION = "event_date"

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
    """The offline table's Spark schema, from the spec."""
    return T.StructType([
        T.StructField(view.entity.join_key, T.StringType(), False),
        T.StructField(EVENT_TIMESTAMP, T.TimestampType(), False),
        T.StructField(CREATED_TIMESTAMP, T.TimestampType(), False),
        *(T.StructField(f.name, SPARK_TYPES[f.dtype], f.nullable) for f in view.features),
    ])


def _utc(series: pd.Series) -> pd.Series:
    return pd.to_datetime(series, utc=True)


class SparkFeatureBuilder(FeatureBuilder[DataFrame, DataFrame]):
    """Compile every feature view into Spark jobs over the event log."""

    def __init__(self, settings: Settings, registry: Registry = REGISTRY, spark: SparkSession | None = None) -> None:
        super().__init__(settings, registry)
        self.spark = spark or spark_session(settings)
        self.start: datetime | None = None
        self.end: datetime | None = None

    # -- inputs --------------------------------------------------------------------------------
    def context(self) -> timedelta:
        """How much history before an interval its change points depend on."""
        return max(v.ttl for v in self.registry.views) + self.rules.allowed_lateness

    def read_events(self, path: Path | None = None, start: datetime | None = None,
                    end: datetime | None = None) -> DataFrame:
        """The event log (day-partitioned parquet), pruned to what [start, end) needs."""
        df = self.spark.read.schema(T.StructType([*EVENT_SPARK_SCHEMA.fields, T.StructField(PARTITION, T.StringType())])
                                    ).parquet(
            str(path or self.settings.events_path))
        if start is not None:
            df = df.where(F.col(PARTITION) >= (start - self.context()).date().isoformat())
        if end is not None:
            df = df.where(F.col(PARTITION) <= end.date().isoformat())
        return df.drop(PARTITION)

    # -- hooks ---------------------------------------------------------------------------------
    def validate(self, source: DataFrame, report: BuildReport) -> DataFrame:
        have = {f.name: f.dataType for f in source.schema.fields}
        for f in ALL_FIELDS:
            if f.name not in have:
                raise ValueError(f"event log has no column {f.name!r}")
            if have[f.name] != SPARK_TYPES[f.dtype]:
                raise ValueError(f"event log column {f.name!r} is {have[f.name].simpleString()}, "
                                 f"expected {SPARK_TYPES[f.dtype].simpleString()}")
        bad = F.lit(False)
        for name in REQUIRED_COMMON:
            bad = bad | F.col(name).isNull()
        bad = bad | (F.col("event_time") > F.col("ingest_time"))
        flagged = source.withColumn("_invalid", bad)
        invalid = flagged.where("_invalid").drop("_invalid")
        n_invalid = invalid.count()
        if n_invalid:
            invalid.write.mode("append").parquet(str(self.settings.dead_letter_path / "spark_events"))
        report.dropped["invalid"] = n_invalid
        return flagged.where(~F.col("_invalid")).drop("_invalid")

    def admit(self, events: DataFrame, report: BuildReport) -> DataFrame:
        lateness_s = self.rules.allowed_lateness.total_seconds()
        delay = F.col("ingest_time").cast("double") - F.col("event_time").cast("double")
        consented = F.coalesce(F.col(self.rules.consent_field), F.lit(False))
        staged = events.withColumn("_reason", F.when(~consented, F.lit("no_consent"))
                                   .when(delay > F.lit(lateness_s), F.lit("late")))
        first = Window.partitionBy("event_id").orderBy("ingest_time", "event_id")
        ranked = (staged.where(F.col("_reason").isNull())
                  .withColumn("_rank", F.row_number().over(first)))
        counts = {r["_reason"]: r["count"] for r in staged.groupBy("_reason").count().collect()}
        report.dropped["no_consent"] = counts.get("no_consent", 0)
        report.dropped["late"] = counts.get("late", 0)
        report.dropped["duplicate"] = ranked.where(F.col("_rank") > 1).count()
        return ranked.where(F.col("_rank") == 1).drop("_reason", "_rank")

    def key_by_entity(self, view: spec.FeatureView, events: DataFrame) -> DataFrame:
        key = view.entity.join_key
        cols = sorted(view.event_fields())
        return events.where(F.col(key).isNotNull()).select(*cols)

    def aggregate(self, view: spec.FeatureView, keyed: DataFrame) -> DataFrame:
        key = view.entity.join_key
        start, end = self.start, self.end
        until = end - timedelta(microseconds=1) if end is not None else None
        out_schema = offline_schema(view)
        names = [f.name for f in out_schema.fields]
        ts_fields = [c for c in keyed.columns if isinstance(keyed.schema[c].dataType, T.TimestampType)]

        def run(pdf: pd.DataFrame) -> pd.DataFrame:
            for c in ts_fields:
                pdf[c] = _utc(pdf[c])
            if end is not None:
                pdf = pdf[pdf["ingest_time"] < pd.Timestamp(end)]
            pdf = pdf.sort_values(["ingest_time", "event_id"], kind="stable")
            records = pdf.astype(object).where(pdf.notna(), None).to_dict("records")
            for r in records:
                for c in ts_fields:
                    if r[c] is not None:
                        r[c] = r[c].to_pydatetime()
            rows = []
            for t, values in sweep(view, records, until=until):
                if start is not None and t < start:
                    continue
                rows.append({key: records[0][key], EVENT_TIMESTAMP: t, CREATED_TIMESTAMP: t, **values})
            frame = pd.DataFrame(rows, columns=names)
            for f in out_schema.fields:
                if isinstance(f.dataType, T.TimestampType):
                    frame[f.name] = pd.to_datetime(frame[f.name], utc=True)
            return frame

        return keyed.groupBy(key).applyInPandas(run, schema=out_schema)

    def write(self, view: spec.FeatureView, rows: DataFrame) -> int:
        path = str(self.settings.offline_path / view.name)
        out = rows.withColumn(PARTITION, F.date_format(F.col(EVENT_TIMESTAMP), "yyyy-MM-dd")).cache()
        n = int(out.count())
        (out.repartition(PARTITION).write.mode("overwrite").partitionBy(PARTITION)
         .option("partitionOverwriteMode", "dynamic").parquet(path))
        out.unpersist()
        return n

    # -- jobs ----------------------------------------------------------------------------------
    def backfill(self, start: datetime | None = None, end: datetime | None = None,
                 views: Sequence[spec.FeatureView] | None = None, events_path: Path | None = None) -> BuildReport:
        """Compute every change point in [start, end) and overwrite those days of each offline table.

        Intervals are whole UTC days, so rerunning an interval replaces exactly its
        partitions and gives identical output (idempotent). Without bounds, the
        whole log is built, and timers run until every window is empty.
        """
        for bound in (start, end):
            if bound is not None and (bound.tzinfo is None or bound != bound.replace(hour=0, minute=0, second=0,
                                                                                     microsecond=0)):
                raise ValueError(f"interval bounds must be UTC midnights, got {bound!r}")
        self.start, self.end = start, end
        t0 = time.perf_counter()
        report = self.build(self.read_events(events_path, start, end), views)
        report.seconds = time.perf_counter() - t0
        return report

    def offline_table(self, view: spec.FeatureView) -> DataFrame:
        return self.spark.read.schema(offline_schema(view).add(PARTITION, T.StringType())).parquet(
            str(self.settings.offline_path / view.name)).drop(PARTITION)

    def training_set(self, entity_df: DataFrame | pd.DataFrame, service: spec.FeatureService,
                     timestamp_col: str = EVENT_TIMESTAMP) -> DataFrame:
        """Point-in-time join: each entity row gets every feature of ``service`` as of its timestamp.

        For each view, the value is the offline row of the same key with the latest
        ``event_timestamp <= timestamp`` (an as-of join done as a sorted window scan,
        never a cross join); a key with no such row gets the spec's cold-start defaults.
        On-demand features are then computed with ``request_time`` = the row's timestamp.
        """
        df = self.spark.createDataFrame(entity_df) if isinstance(entity_df, pd.DataFrame) else entity_df
        # ids must not change if Spark recomputes a stage: checkpoint them once
        df = df.withColumn("_row", F.monotonically_increasing_id()).localCheckpoint()
        for v in service.views:
            if isinstance(v, spec.FeatureView):
                df = self._as_of_join(df, v, timestamp_col)
        odvs = [v for v in service.views if isinstance(v, spec.OnDemandView)]
        if odvs:
            df = self._on_demand(df, odvs, timestamp_col)
        return df.drop("_row")

    def _as_of_join(self, df: DataFrame, view: spec.FeatureView, ts: str) -> DataFrame:
        key = view.entity.join_key
        feats = list(view.feature_names)
        table = self.offline_table(view).select(
            F.col(key).alias("_k"), F.col(EVENT_TIMESTAMP).alias("_t"), F.lit(0).alias("_q"),
            F.lit(None).cast("long").alias("_row"), F.struct(*feats).alias("_v"))
        queries = df.select(F.col(key).alias("_k"), F.col(ts).alias("_t"), F.lit(1).alias("_q"), "_row",
                            F.lit(None).cast(table.schema["_v"].dataType).alias("_v"))
        w = (Window.partitionBy("_k").orderBy("_t", "_q")
             .rowsBetween(Window.unboundedPreceding, Window.currentRow))
        matched = (table.unionByName(queries)
                   .withColumn("_asof", F.last("_v", ignorenulls=True).over(w))
                   .where(F.col("_q") == 1)
                   .select("_row", *(F.col(f"_asof.{f}").alias(f) for f in feats)))
        joined = df.join(matched, on="_row", how="left")
        return joined.select(*df.columns, *(self._default(f).alias(f.name) for f in view.features))

    @staticmethod
    def _default(f: spec.Feature) -> Column:
        if f.default is None:
            return F.col(f.name)
        if f.dtype == "array<string>":
            fallback = F.array(*(F.lit(x) for x in f.default)).cast(SPARK_TYPES[f.dtype])
        else:
            fallback = F.lit(f.default).cast(SPARK_TYPES[f.dtype])
        return F.coalesce(F.col(f.name), fallback)

    def _on_demand(self, df: DataFrame, odvs: list[spec.OnDemandView], ts: str) -> DataFrame:
        out_fields = [T.StructField(f.name, SPARK_TYPES[f.dtype], True) for o in odvs for f in o.features]
        schema = T.StructType([*df.schema.fields, *out_fields])
        timestamp_cols = [f.name for f in df.schema.fields if isinstance(f.dataType, T.TimestampType)]

        def compute(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for pdf in batches:
                for c in timestamp_cols:
                    pdf[c] = _utc(pdf[c])
                records = pdf.astype(object).where(pdf.notna(), None).to_dict("records")
                extra: dict[str, list[Any]] = {f.name: [] for f in out_fields}
                for r in records:
                    for c in timestamp_cols:
                        if r[c] is not None:
                            r[c] = r[c].to_pydatetime()
                    inputs = {**r, "request_time": r[ts]}
                    for o in odvs:
                        for name, value in o.compute(inputs).items():
                            extra[name].append(value)
                for name, values in extra.items():
                    pdf[name] = values
                yield pdf

        return df.mapInPandas(compute, schema=schema)


def _midnight(d: date | None) -> datetime | None:
    return datetime(d.year, d.month, d.day, tzinfo=UTC) if d else None


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Spark feature backfill")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backfill", help="compute offline tables for [start, end) (UTC dates)")
    b.add_argument("--start", type=date.fromisoformat)
    b.add_argument("--end", type=date.fromisoformat)
    a = p.parse_args(argv)
    settings = load_settings()
    builder = SparkFeatureBuilder(settings)
    report = builder.backfill(_midnight(a.start), _midnight(a.end))
    print(f"built {report.views} in {report.seconds:.1f}s; not counted: {report.dropped}")


if __name__ == "__main__":
    main()
