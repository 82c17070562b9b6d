"""The Spark engine: backfills, incremental runs and point-in-time training sets.

A thin adapter of the shared semantics. Admission (consent, lateness, first
arrival) is the rule of :class:`features.semantics.EventRules` written as Spark
expressions; aggregation runs the shared state machine
(:func:`features.state.sweep`, over the shared monoids) once per entity key, so
no window or aggregation rule is written a second time. Output names and types
come from the specs.

Each view's offline table (the Feast batch source, ``settings.offline_path/<view>/``,
parquet, microsecond UTC timestamps, partitioned by ``event_date`` of
``event_timestamp``) holds one row per key and change point: every value the
online store could have held, stamped with the moment it became true. A
point-in-time lookup is then an as-of join on that table, which
:meth:`SparkFeatureBuilder.training_set` does in Spark (Feast's own
``get_historical_features`` over the same tables is :func:`feast_training_set`).

Data intervals
--------------
``backfill(start, end)`` computes the change points ``start <= t < end`` of every
view (UTC midnights) and replaces exactly the days ``[start, end)`` of each
offline table: dynamic partition overwrite, plus removal of days of the interval
that no longer have rows. Running the same interval again gives the same tables,
and consecutive intervals give the same tables as one run over their union.

A change point at ``t >= start`` depends on events with
``event_time >= start - (longest window + hop) - allowed lateness``: the window
reaches back ``length + hop`` from ``t``, and an event arriving at ``t`` after its
tile expired is still a (value-preserving) change point, which an event can do up
to the allowed lateness after its event time. So an interval reads the event-log
days from ``start - context()`` up to ``end`` (and the first ``MAX_CLOCK_SKEW`` of
the day of ``end``: an event stamped after ``end`` by a clock ahead of ours, that
arrived before it, is clamped into this interval), sweeps each key over that context,
drops events arriving at or after ``end``, runs tile-expiry timers up to ``end``
minus one microsecond and keeps only the rows in ``[start, end)``. Events are
counted (drop reasons, dead letters) by the interval that owns their
``event_time`` (their event-log partition), so per-interval counts add up to the
counts of one full run. Without bounds the whole log is built and timers run
until every window is empty.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyspark import StorageLevel
from pyspark.accumulators import Accumulator, AccumulatorParam
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.settings import Settings, load_settings
from features import spec
from features.events import ALL_FIELDS, MAX_CLOCK_SKEW, REQUIRED_COMMON, EventType
from features.registry import REGISTRY, Registry
from features.semantics import EPOCH, Collision, Drop, IdCollisions
from features.state import sweep
from pipelines.builder import BuildReport, FeatureBuilder
from pipelines.spark_session import spark_session

if TYPE_CHECKING:
    from feast import FeatureStore

EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
PARTITION = "event_date"
DEAD_LETTER_TABLE = "spark_events"
INVALID = "invalid"

SPARK_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "int64": T.LongType(),
    "float64": T.DoubleType(),
    "bool": T.BooleanType(),
    "timestamp": T.TimestampType(),
    "array<string>": T.ArrayType(T.StringType()),
}
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "array<string>": pa.list_(pa.string()),
}
EVENT_SPARK_SCHEMA = T.StructType([T.StructField(f.name, SPARK_TYPES[f.dtype], True) for f in ALL_FIELDS])
_OUT_BATCH_ROWS = 10_000


def offline_schema(view: spec.FeatureView) -> T.StructType:
    """The offline table's Spark schema, from the spec."""
    return T.StructType([
        T.StructField(view.entity.join_key, T.StringType(), False),
        T.StructField(EVENT_TIMESTAMP, T.TimestampType(), False),
        T.StructField(CREATED_TIMESTAMP, T.TimestampType(), False),
        *(T.StructField(f.name, SPARK_TYPES[f.dtype], f.nullable) for f in view.features),
    ])


def offline_arrow_schema(view: spec.FeatureView) -> pa.Schema:
    """The same schema in Arrow, for the batches the aggregation hands back to Spark."""
    return pa.schema([
        pa.field(view.entity.join_key, pa.string(), nullable=False),
        pa.field(EVENT_TIMESTAMP, ARROW_TYPES["timestamp"], nullable=False),
        pa.field(CREATED_TIMESTAMP, ARROW_TYPES["timestamp"], nullable=False),
        *(pa.field(f.name, ARROW_TYPES[f.dtype], nullable=f.nullable) for f in view.features),
    ])


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

    The session time zone is UTC (:func:`pipelines.spark_session.spark_session`), so
    naive values are UTC instants.
    """
    pdf = df.toPandas()
    for f in df.schema.fields:
        if isinstance(f.dataType, T.TimestampType):
            col = pd.to_datetime(pdf[f.name])
            col = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
            pdf[f.name] = col.astype("datetime64[us, UTC]")
    return pdf


def resolve_features(registry: Registry, features: spec.FeatureService | Sequence[str]
                     ) -> tuple[list[spec.FeatureView], list[spec.OnDemandView], list[str]]:
    """Views to join, on-demand views to compute and output feature names, from a service or refs.

    Refs are Feast-style ``"view:feature"``; an on-demand feature brings its
    source views along (their features are inputs, not output).
    """
    if isinstance(features, spec.FeatureService):
        chosen: list[spec.FeatureView | spec.OnDemandView] = list(features.views)
        names = [n for v in features.views for n in v.feature_names]
    else:
        chosen, names = [], []
        for ref in features:
            view_name, _, feature = ref.partition(":")
            v: spec.FeatureView | spec.OnDemandView
            try:
                v = registry.view(view_name)
            except KeyError:
                v = registry.on_demand_view(view_name)
            if feature not in v.feature_names:
                raise KeyError(f"{ref!r}: view {view_name!r} has no feature {feature!r}")
            if v not in chosen:
                chosen.append(v)
            names.append(feature)
    odvs = [v for v in chosen if isinstance(v, spec.OnDemandView)]
    fvs = [v for v in chosen if isinstance(v, spec.FeatureView)]
    for o in odvs:
        fvs += [s for s in o.sources if s not in fvs]
    return fvs, odvs, names


class _SetParam(AccumulatorParam[set[str]]):  # type: ignore[misc]
    """A Spark accumulator of a set: executors add the ids they saw, the driver reads their union."""

    def zero(self, value: set[str]) -> set[str]:
        return set()

    def addInPlace(self, value1: set[str], value2: set[str]) -> set[str]:
        value1 |= value2
        return value1


def _observed(observation: Observation) -> dict[str, Any]:
    """The observation's metrics; ``{}`` when the plan ran no task at all, so nothing was written.

    When no task reported the metrics, the JVM's metrics row is the empty ``Row`` (no fields, no schema), and
    PySpark (4.0 to 4.3) fails ``Observation.get`` on it with an assertion in ``PythonSQLUtils.toPyRow``: an
    interval in which a view has no change point (a quiet hour, a day after every window emptied, a log without
    commerce events) plans an empty scan of zero partitions. No task means no rows either, so no metrics is
    exactly 0 rows and no days. The row is read first (it waits for the action, as ``get`` does) and only an
    empty one is taken as "nothing": any other failure still raises. ``tests/parity/test_spark_reference.py``
    and ``tests/integration/test_spark_empty_intervals.py`` pin the cases.
    """
    jrow = observation._jo.getRow() if observation._jo is not None else None
    if jrow is not None and jrow.length() == 0:
        return {}
    return dict(observation.get)


def _midnight_check(bound: datetime | None) -> None:
    if bound is not None and (bound.tzinfo is None or bound.utcoffset() != timedelta(0)
                              or bound != bound.replace(hour=0, minute=0, second=0, microsecond=0)):
        raise ValueError(f"interval bounds must be UTC midnights, got {bound!r}")


def _days(start: datetime, end: datetime) -> list[str]:
    out, d = [], start.date()
    while d < end.date():
        out.append(d.isoformat())
        d += timedelta(days=1)
    return out


class SparkFeatureBuilder(FeatureBuilder[DataFrame, DataFrame]):
    """Compile every feature view into Spark jobs over the event log.

    ``backfill(start, end)`` is the job (see the module docstring for intervals);
    the hooks are the steps of :meth:`FeatureBuilder.build`. After a build,
    :attr:`dead_letters` holds the dead-lettered rows per problem column.
    """

    def __init__(self, settings: Settings, registry: Registry = REGISTRY, spark: SparkSession | None = None) -> None:
        super().__init__(settings, registry)
        self.spark = spark or spark_session(settings)
        self.start: datetime | None = None
        self.end: datetime | None = None
        self.dead_letters: dict[str, int] = {}
        self._persisted: list[DataFrame] = []
        # the events the owner rule left out of a view (features.state.Owner), gathered from the executors
        self._session_collisions: Accumulator[set[str]] = self.spark.sparkContext.accumulator(set(), _SetParam())

    # -- inputs --------------------------------------------------------------------------------
    def context(self) -> timedelta:
        """How much event time before an interval its change points depend on."""
        return max(v.ttl for v in self.registry.views) + self.rules.allowed_lateness

    def read_events(self, path: Path | str | None = None, start: datetime | None = None,
                    end: datetime | None = None) -> DataFrame:
        """The event log (day-partitioned parquet) with its ``event_date``, pruned to what [start, end) needs."""
        schema = T.StructType([*EVENT_SPARK_SCHEMA.fields, T.StructField(PARTITION, T.StringType())])
        df = self.spark.read.schema(schema).parquet(str(path or self.settings.events_path))
        if start is not None:
            df = df.where(F.col(PARTITION) >= (start - self.context()).date().isoformat())
        if end is not None:
            # a partition is the day of the raw event_time, which validation clamps to ingest_time < end when at
            # most MAX_CLOCK_SKEW ahead: the day of `end` holds such rows in its first MAX_CLOCK_SKEW, none later
            last = end.date().isoformat()
            df = df.where((F.col(PARTITION) < last) | ((F.col(PARTITION) == last)
                                                       & (F.col("event_time") < F.lit(end + MAX_CLOCK_SKEW))))
        return df

    def _owned_time(self, t: Column) -> Column:
        """Events this interval counts: ``start <= event_time < end``."""
        cond = F.lit(True)
        if self.start is not None:
            cond = cond & (t >= F.lit(self.start))
        if self.end is not None:
            cond = cond & (t < F.lit(self.end))
        return cond

    def _owned_day(self, day: Column) -> Column:
        """Event-log partitions (``YYYY-MM-DD``) this interval owns."""
        cond = F.lit(True)
        if self.start is not None:
            cond = cond & (day >= F.lit(self.start.date().isoformat()))
        if self.end is not None:
            cond = cond & (day < F.lit(self.end.date().isoformat()))
        return cond

    # -- hooks ---------------------------------------------------------------------------------
    def check_schema(self, source: DataFrame) -> None:
        """Every event field present with its spec type; the error names the column."""
        have = {f.name: f.dataType for f in source.schema.fields}
        for f in ALL_FIELDS:
            if f.name not in have:
                raise ValueError(f"event log has no column {f.name!r} (expected {SPARK_TYPES[f.dtype].simpleString()})")
            if have[f.name] != SPARK_TYPES[f.dtype]:
                raise ValueError(f"event log column {f.name!r} is {have[f.name].simpleString()}, "
                                 f"expected {SPARK_TYPES[f.dtype].simpleString()}")

    def validate(self, source: DataFrame, report: BuildReport) -> DataFrame:
        """Schema check, then rows missing a required id or time go to the dead-letter table.

        So does a row of an unknown ``event_type``, and one whose ``event_time`` is more than
        :data:`features.events.MAX_CLOCK_SKEW` after its ``ingest_time``; within the skew, ``event_time`` is
        clamped to ``ingest_time``: the rule of :func:`features.events.validate_event`, in integer microseconds.
        The property checks of ``validate_event`` (per-type required and foreign properties, ranges, lengths)
        are not repeated here. The dead-letter table (``dead_letter_path/spark_events``, parquet with a
        ``_problem`` column) is partitioned like the event log and replaced per
        interval, so reruns do not repeat its rows.
        """
        self.check_schema(source)
        # (field, condition, problem as counted in dead_letters, the row's own _problem text)
        checks: list[tuple[str, Column, str, Column]] = [(n, F.col(n).isNull(), "is null", F.lit(f"{n} is null"))
                                                         for n in REQUIRED_COMMON]
        checks.append(("event_type", ~F.col("event_type").isin(sorted(t.value for t in EventType)),
                       "is not an event type",
                       F.concat(F.lit("event_type '"), F.col("event_type"), F.lit("' is not an event type"))))
        skew_us = MAX_CLOCK_SKEW // timedelta(microseconds=1)  # the event model's rule: beyond it, rejected
        skew_s = skew_us // 1_000_000
        ahead_us = F.unix_micros(F.col("event_time")) - F.unix_micros(F.col("ingest_time"))
        # a row reads as validate_event's error: its seconds ahead, rounded half-even as Python's :.0f rounds
        ahead_s = F.bround(ahead_us.cast(T.DecimalType(20, 0)) / F.lit(1_000_000), 0).cast(T.LongType())
        checks.append(("event_time", ahead_us > F.lit(skew_us),
                       f"is more than {skew_s}s after ingest_time (max clock skew)",
                       F.concat(F.lit("event_time is "), ahead_s.cast(T.StringType()),
                                F.lit(f"s after ingest_time (max clock skew {skew_s}s)"))))
        problem = F.concat_ws("; ", *(F.when(c, text) for _, c, _, text in checks))
        from_time = F.date_format("event_time", "yyyy-MM-dd")
        day = F.coalesce(F.col(PARTITION), from_time) if PARTITION in source.columns else from_time
        owned = self._owned_day(F.col(PARTITION))  # a row without any day is "unknown": kept by full runs only
        if self.start is None and self.end is None:
            owned = F.lit(True)
        day = F.coalesce(day, F.lit("unknown"))
        flagged = source.withColumn("_problem", F.when(problem != "", problem)).withColumn(PARTITION, day)
        counts = flagged.where(owned).agg(
            F.count(F.col("_problem")).alias(INVALID),
            *(F.sum(F.when(c, 1).otherwise(0)).alias(f"{n} {msg}") for n, c, msg, _ in checks)).first()
        assert counts is not None
        self.dead_letters = {k: int(v or 0) for k, v in counts.asDict().items() if k != INVALID and v}
        report.dropped[INVALID] = int(counts[INVALID] or 0)
        path = str(self.settings.dead_letter_path / DEAD_LETTER_TABLE)
        if report.dropped[INVALID]:
            self._replace_partitions(flagged.where(owned & F.col("_problem").isNotNull()), path)
        elif self.start is not None and self.end is not None:
            self._delete_partitions(path, _days(self.start, self.end))
        # within the skew, a client clock ahead of ours is clamped to the arrival, as validate_event does
        valid = flagged.where(F.col("_problem").isNull()).drop("_problem", PARTITION)
        return valid.withColumn("event_time", F.least(F.col("event_time"), F.col("ingest_time")))

    def admit(self, events: DataFrame, report: BuildReport) -> DataFrame:
        """Consent, then lateness, then the first arrival of each id; one pass, counted per reason.

        Lateness is compared in integer microseconds (exact at the boundary). Copies
        of an id that also share its arrival time are interchangeable (copies carry
        the same content), so which of them is kept does not matter. The admitted
        events (only the columns the views read) are persisted, because every view
        reads them.
        """
        lateness_us = self.rules.allowed_lateness // timedelta(microseconds=1)
        delay_us = F.unix_micros(F.col("ingest_time")) - F.unix_micros(F.col("event_time"))
        consented = F.coalesce(F.col(self.rules.consent_field), F.lit(False))
        reason = (F.when(~consented, F.lit(Drop.NO_CONSENT.value))
                  .when(delay_us > F.lit(lateness_us), F.lit(Drop.LATE.value)))
        needed = sorted(set().union(*(v.event_fields() for v in self.registry.views)))
        staged = events.select(*needed).withColumn("_reason", reason)
        ok = F.col("_reason").isNull()
        # how many users share an id among the copies that survive rules 2 and 3 (a collision needs two); the
        # dedup window below is clustered by a superset of these keys, so Spark shuffles once for both
        staged = staged.withColumn("_users", F.size(F.collect_set("user_id").over(Window.partitionBy("event_id", ok))))
        # rank a user's copies of an id among those that survive rules 2 and 3: the first arrival wins
        first = Window.partitionBy("event_id", ok, "user_id").orderBy("ingest_time")
        staged = staged.withColumn("_reason", F.coalesce(
            F.col("_reason"), F.when(F.row_number().over(first) > 1, F.lit(Drop.DUPLICATE.value))))
        staged = staged.persist(StorageLevel.MEMORY_AND_DISK)
        self._persisted.append(staged)
        counts = {r["_reason"]: int(r["count"]) for r in
                  staged.where(self._owned_time(F.col("event_time")) & F.col("_reason").isNotNull())
                  .groupBy("_reason").count().collect()}
        for d in Drop:
            report.dropped[d.value] = counts.get(d.value, 0)
        report.collisions[Collision.EVENT_ID.value] = self._id_collisions(staged)
        return staged.where(F.col("_reason").isNull()).drop("_reason", "_users")

    def _id_collisions(self, staged: DataFrame) -> int:
        """``id_collision`` among this interval's admitted events, by :class:`features.semantics.IdCollisions`.

        Only ids admitted under two or more users can collide, which a sound producer never sends: those few
        rows are collected and run through the shared rule in arrival order on the driver.
        """
        shared = (staged.where(F.col("_reason").isNull() & (F.col("_users") > 1))
                  .select("event_id", "user_id", F.unix_micros("event_time").alias("et"),
                          F.unix_micros("ingest_time").alias("it")).collect())
        ids = IdCollisions(self.rules)
        count = 0
        for r in sorted(shared, key=lambda r: (r["it"], r["event_id"])):
            e = {"event_id": r["event_id"], "user_id": r["user_id"],
                 "event_time": EPOCH + timedelta(microseconds=r["et"]),
                 "ingest_time": EPOCH + timedelta(microseconds=r["it"])}
            if ids.observe(e) and (self.start is None or e["event_time"] >= self.start) and (
                    self.end is None or e["event_time"] < self.end):
                count += 1
        return count

    def key_by_entity(self, view: spec.FeatureView, events: DataFrame) -> DataFrame:
        """The view's events with a key, hashed by key and in arrival order within each key."""
        key = view.entity.join_key
        fields = set(view.event_fields())
        if view.entity.owner is not None:  # the owner rule reads whose event it is (features.state.Owner)
            fields.add(view.entity.owner.join_key)
        keyed = events.where(F.col(key).isNotNull()).select(*sorted(fields))
        # Pruning only: an event of a type no aggregation reads changes no state and is no change point
        # (the spec's own event-type filters; the state machine still applies them, and `where`, itself).
        types = view.event_types()
        if types != {str(t) for t in spec.ALL_EVENT_TYPES}:
            keyed = keyed.where(F.col("event_type").isin(sorted(types)))
        if self.end is not None:  # what arrives at or after `end` belongs to a later interval
            keyed = keyed.where(F.col("ingest_time") < F.lit(self.end))
        return keyed.repartition(key).sortWithinPartitions(key, "ingest_time", "event_id")

    def aggregate(self, view: spec.FeatureView, keyed: DataFrame) -> DataFrame:
        """The shared state machine per key: one row per change point in [start, end).

        ``keyed`` is partitioned by key and sorted by (key, arrival), so each Arrow
        batch stream holds whole keys in arrival order; a key split across batches
        is carried over. No per-group pandas frames: rows go Arrow -> dicts ->
        :func:`features.state.sweep` -> Arrow.
        """
        key = view.entity.join_key
        start, end = self.start, self.end
        until = end - timedelta(microseconds=1) if end is not None else None
        arrow_schema = offline_arrow_schema(view)
        owned = view.entity.owner is not None
        # the owner rule's collisions (features.state.Owner) as (owner, event_id), counted by the interval their
        # arrival falls in: the owner rule decides at arrival, and only the run whose keys hold the arrival
        # (ingest_time < end) sees it, so by event_time one arriving after its interval's end would be in no count
        collisions = self._session_collisions
        owner_field = view.entity.owner.join_key if view.entity.owner is not None else ""

        def rows_of(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            k = events[0][key]
            collided: list[Any] = []
            for t, values in sweep(view, events, until=until, collided=collided if owned else None):
                if start is None or t >= start:
                    yield {key: k, EVENT_TIMESTAMP: t, CREATED_TIMESTAMP: t, **values}
            mine = {f"{e[owner_field]}|{e['event_id']}" for e in collided if start is None or e["ingest_time"] >= start}
            if mine:
                collisions.add(mine)

        def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            current: list[dict[str, Any]] = []
            out: list[dict[str, Any]] = []
            for batch in batches:
                for e in arrow_records(batch):
                    if current and e[key] != current[0][key]:
                        out.extend(rows_of(current))
                        current = []
                    current.append(e)
                if len(out) >= _OUT_BATCH_ROWS:
                    yield pa.RecordBatch.from_pylist(out, schema=arrow_schema)
                    out = []
            if current:
                out.extend(rows_of(current))
            if out:
                yield pa.RecordBatch.from_pylist(out, schema=arrow_schema)

        return keyed.mapInArrow(run, offline_schema(view))

    def write(self, view: spec.FeatureView, rows: DataFrame) -> int:
        """Replace the interval's days of the view's offline table; return the rows written."""
        out = rows.withColumn(PARTITION, F.date_format(F.col(EVENT_TIMESTAMP), "yyyy-MM-dd"))
        return self._replace_partitions(out, str(self.settings.offline_path / view.name))

    # -- partition plumbing --------------------------------------------------------------------
    def _replace_partitions(self, df: DataFrame, path: str) -> int:
        """Dynamic partition overwrite, then delete the interval's days that got no rows."""
        observation = Observation(f"write_{id(df)}")
        observed = df.observe(observation, F.count(F.lit(1)).alias("rows"), F.collect_set(PARTITION).alias("days"))
        (observed.repartition(PARTITION).write.mode("overwrite").partitionBy(PARTITION)
         .option("partitionOverwriteMode", "dynamic").parquet(path))
        metrics = _observed(observation)
        if self.start is not None and self.end is not None:
            written = set(metrics.get("days") or [])
            self._delete_partitions(path, [d for d in _days(self.start, self.end) if d not in written])
        return int(metrics.get("rows") or 0)

    def _delete_partitions(self, root: str, days: Sequence[str]) -> None:
        """Remove ``root/event_date=<day>`` through Hadoop's FileSystem (local, HDFS, s3a alike)."""
        if not days:
            return
        jvm: Any = self.spark.sparkContext._jvm
        conf: Any = self.spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
        root_path = jvm.org.apache.hadoop.fs.Path(root)
        fs = root_path.getFileSystem(conf)
        for d in days:
            p = jvm.org.apache.hadoop.fs.Path(root_path, f"{PARTITION}={d}")
            if fs.exists(p):
                fs.delete(p, True)

    # -- jobs ----------------------------------------------------------------------------------
    def backfill(self, start: datetime | None = None, end: datetime | None = None,
                 views: Sequence[spec.FeatureView] | None = None, events_path: Path | str | None = None) -> BuildReport:
        """Compute every change point in [start, end) and replace those days of each offline table.

        Bounds are UTC midnights (so an interval is a set of whole partitions);
        either may be omitted. See the module docstring for the context an
        interval reads and why reruns are idempotent.
        """
        _midnight_check(start)
        _midnight_check(end)
        if start is not None and end is not None and start >= end:
            raise ValueError(f"empty interval [{start}, {end})")
        self.start, self.end = start, end
        t0 = time.perf_counter()
        self._session_collisions = self.spark.sparkContext.accumulator(set(), _SetParam())
        try:
            report = self.build(self.read_events(events_path, start, end), views)
        finally:
            for df in self._persisted:
                df.unpersist()
            self._persisted.clear()
        # an event left out of several views of an owned entity is one collision
        report.collisions[Collision.SESSION_ID.value] = len(self._session_collisions.value)
        report.seconds = time.perf_counter() - t0
        return report

    def offline_table(self, view: spec.FeatureView) -> DataFrame:
        """A view's offline table (empty if it was never built)."""
        schema = offline_schema(view).add(PARTITION, T.StringType())
        try:
            df = self.spark.read.schema(schema).parquet(str(self.settings.offline_path / view.name))
        except AnalysisException as e:
            if "PATH_NOT_FOUND" not in str(e):
                raise
            df = self.spark.createDataFrame([], schema)
        return df.drop(PARTITION)

    # -- training sets -------------------------------------------------------------------------
    def resolve(self, features: spec.FeatureService | Sequence[str]
                ) -> tuple[list[spec.FeatureView], list[spec.OnDemandView], list[str]]:
        return resolve_features(self.registry, features)

    def training_set(self, entity_df: DataFrame | pd.DataFrame, features: spec.FeatureService | Sequence[str],
                     timestamp_col: str = EVENT_TIMESTAMP) -> DataFrame:
        """Point-in-time join: each entity row gets the requested features as of its timestamp.

        ``entity_df`` holds the join keys the features need, ``timestamp_col``
        (UTC) and any other columns (labels), which are passed through. For each
        view, the value is that of the offline row of the same key with the latest
        ``event_timestamp <= timestamp``; a key without one gets the spec's
        cold-start defaults. On-demand features are computed with
        ``request_time`` = the row's timestamp. Output: the input columns, then the
        requested features in order (one output row per input row, order not kept).

        The as-of join is a union of query and table rows, hashed by key and
        scanned in time order with ``last(..., ignorenulls)``: a sort, never a
        cross join. Views of the same entity share one scan, and table rows older
        than the earliest query minus the view's TTL are skipped (they can only
        hold defaults by then).
        """
        fvs, odvs, names = self.resolve(features)
        df = self._entity_frame(entity_df, timestamp_col)
        columns = df.columns
        clash = set(columns) & {f for v in fvs for f in v.feature_names}
        if clash:
            raise ValueError(f"entity_df columns {sorted(clash)} clash with feature names")
        by_key: dict[str, list[spec.FeatureView]] = defaultdict(list)
        for v in fvs:
            if v.entity.join_key not in columns:
                raise ValueError(f"entity_df has no column {v.entity.join_key!r}, the join key of {v.name!r}")
            by_key[v.entity.join_key].append(v)
        bounds = None
        if fvs:  # as exact UTC instants (collect() would give naive local times)
            row = df.agg(F.min(F.unix_micros(timestamp_col)), F.max(F.unix_micros(timestamp_col))).first()
            if row is not None and row[0] is not None:
                bounds = (EPOCH + timedelta(microseconds=row[0]), EPOCH + timedelta(microseconds=row[1]))
        for key, views in by_key.items():
            df = self._as_of_join(df, key, views, timestamp_col, bounds)
        if odvs:
            df = self._on_demand(df, odvs, timestamp_col)
        return df.select(*(F.col(f"`{c}`") for c in columns), *names)

    def _entity_frame(self, entity_df: DataFrame | pd.DataFrame, ts: str) -> DataFrame:
        if isinstance(entity_df, pd.DataFrame):
            if ts not in entity_df.columns:
                raise ValueError(f"entity_df has no column {ts!r}")
            stamps = entity_df[ts]
            if not isinstance(stamps.dtype, pd.DatetimeTZDtype):
                raise ValueError(f"entity_df[{ts!r}] must be timezone-aware UTC timestamps, got {stamps.dtype}")
            entity_df = entity_df.assign(**{ts: stamps.dt.tz_convert("UTC").astype("datetime64[us, UTC]")})
            return self.spark.createDataFrame(entity_df)
        if ts not in entity_df.columns:
            raise ValueError(f"entity_df has no column {ts!r}")
        if not isinstance(entity_df.schema[ts].dataType, T.TimestampType):
            raise ValueError(f"entity_df column {ts!r} is {entity_df.schema[ts].dataType.simpleString()}, "
                             "expected timestamp (an instant, UTC)")
        return entity_df

    def _as_of_join(self, df: DataFrame, key: str, views: list[spec.FeatureView], ts: str,
                    bounds: tuple[datetime, datetime] | None) -> DataFrame:
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
            if bounds is not None:
                table = table.where((F.col(EVENT_TIMESTAMP) >= F.lit(bounds[0] - v.ttl))
                                    & (F.col(EVENT_TIMESTAMP) <= F.lit(bounds[1])))
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

    def _on_demand(self, df: DataFrame, odvs: list[spec.OnDemandView], ts: str) -> DataFrame:
        """The spec's on-demand expressions, row by row in Python (as the reference and Feast run them)."""
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


# ------------------------------------------------------------------------------------------- Feast
def feast_training_set(store: FeatureStore, entity_df: pd.DataFrame, features: spec.FeatureService | Sequence[str],
                       timestamp_col: str = EVENT_TIMESTAMP, registry: Registry = REGISTRY) -> pd.DataFrame:
    """The same training set with Feast's ``get_historical_features`` doing every as-of join.

    ``store`` is the applied repo of :mod:`pipelines.feast_repo`, whose batch
    sources are the offline tables this engine writes; its configured offline
    store (by default ``file``, Feast's dask engine) runs the joins. Feast's file
    store (0.67, ``feast/infra/offline_stores/dask.py``) needs four adjustments to
    give the point-in-time answer, all applied here:

    * it drops an entity row whose key has table rows but none within
      ``(t - ttl, t]`` (``_filter_ttl``) instead of returning nulls, and with it
      the row's values from other views: so each view is queried on its own, and
      rows it drops get the spec's defaults (no row within the TTL means every
      windowed value is back at its default);
    * it keeps one entity row per (join keys, timestamp) (``_drop_duplicates``):
      so each view is queried with unique (key, timestamp) pairs, merged back;
    * keys missing from a table yield null timestamps, on which its dask sort
      can fail ("Divisions calculation failed"): so only keys present in the
      view's table are sent, the others take the defaults;
    * nulls (cold start) take the spec's defaults, and on-demand features are
      computed with the spec's expressions (what the generated python-mode
      on-demand views run), with ``request_time`` = the row's timestamp.

    Returns the input columns plus the requested features, in input order,
    timestamps ``datetime64[us, UTC]``.
    """
    fvs, odvs, names = resolve_features(registry, features)
    if not isinstance(entity_df[timestamp_col].dtype, pd.DatetimeTZDtype):
        raise ValueError(f"entity_df[{timestamp_col!r}] must be timezone-aware UTC timestamps")
    out = entity_df.reset_index(drop=True).copy()
    stamps = out[timestamp_col].dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    for view in fvs:
        key = view.entity.join_key
        source = store.get_feature_view(view.name).batch_source
        present = ds.dataset(source.path, format="parquet", partitioning="hive").to_table(columns=[key]).column(key)
        queries = pd.DataFrame({key: out[key], timestamp_col: stamps})
        queries = queries[queries[key].isin(pc.unique(present).to_pylist())].drop_duplicates()
        refs = [f"{view.name}:{f.name}" for f in view.features]
        got = (store.get_historical_features(entity_df=queries.reset_index(drop=True), features=refs).to_df()
               if len(queries) else pd.DataFrame(columns=[key, timestamp_col, *view.feature_names]))
        got[timestamp_col] = pd.to_datetime(got[timestamp_col], utc=True).astype("datetime64[us, UTC]")
        merged = pd.DataFrame({key: out[key], timestamp_col: stamps}).merge(
            got[[key, timestamp_col, *view.feature_names]], on=[key, timestamp_col], how="left")
        assert len(merged) == len(out)
        for f in view.features:
            out[f.name] = _pandas_column(merged[f.name], f)
    if odvs:
        sources = sorted({n for o in odvs for v in o.sources for n in v.feature_names})
        records = out[sources].astype(object).where(out[sources].notna(), None).to_dict("records")
        computed: dict[str, list[Any]] = {f.name: [] for o in odvs for f in o.features}
        for r, t in zip(records, stamps, strict=True):
            for c in sources:
                if isinstance(r[c], pd.Timestamp):
                    r[c] = r[c].to_pydatetime()
            r[spec.REQUEST_TIME.name] = t.to_pydatetime()
            for o in odvs:
                for n, v in o.compute(r).items():
                    computed[n].append(v)
        for o in odvs:
            for f in o.features:
                out[f.name] = _pandas_column(pd.Series(computed[f.name], dtype=object), f)
    return out[[*entity_df.columns, *names]]


def _pandas_column(col: pd.Series, f: spec.Feature) -> pd.Series:
    """Nulls to the feature's default, values to its dtype (as ``to_pandas`` gives them)."""
    if f.dtype == "timestamp":
        return pd.to_datetime(col, utc=True).astype("datetime64[us, UTC]")
    if f.dtype == "array<string>":
        return pd.Series([f.cast(None if v is None or (not hasattr(v, "__len__") and pd.isna(v)) else list(v))
                          for v in col], index=col.index, dtype=object)
    filled = col.where(col.notna(), f.default) if f.default is not None else col
    return filled.astype({"int64": "int64", "float64": "float64", "bool": "bool"}.get(f.dtype, object))


# ------------------------------------------------------------------------------------------- CLI
def _midnight(d: date | None) -> datetime | None:
    return datetime(d.year, d.month, d.day, tzinfo=UTC) if d else None


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Spark feature backfill")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backfill", help="compute offline tables for [start, end) (UTC dates)")
    b.add_argument("--start", type=date.fromisoformat)
    b.add_argument("--end", type=date.fromisoformat)
    b.add_argument("--view", action="append", help="only these views (repeatable)")
    a = p.parse_args(argv)
    settings = load_settings()
    builder = SparkFeatureBuilder(settings)
    views = [builder.registry.view(n) for n in a.view] if a.view else None
    report = builder.backfill(_midnight(a.start), _midnight(a.end), views=views)
    print(f"built {report.views} in {report.seconds:.1f}s; not counted: {report.dropped}; "
          f"dead letters by problem: {builder.dead_letters}")


if __name__ == "__main__":
    main()
