"""The Spark engine's materialization: backfills and incremental runs over the event log.

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
:class:`pipelines.spark.retrieval.SparkRetrieval` does in Spark (Feast's own
``get_historical_features`` over the same tables is
:class:`pipelines.store.retrieval.FeastRetrieval`).

Data intervals
--------------
``backfill(start, end)`` computes the change points ``start <= t < end`` of every
view (UTC midnights) and replaces exactly the days ``[start, end)`` of each
offline table: dynamic partition overwrite, plus removal of days of the interval
that no longer have rows. Running the same interval again gives the same tables,
and consecutive intervals give the same tables as one run over their union.

A change point at ``t >= start`` depends on events with
``event_time >= start - (longest window + hop) - allowed lateness`` of the views being
built (a view with a lifetime window depends on every earlier event: a build with one
reads the whole log before ``end``; build it apart, ``views=``, to keep the others' reads short): the window
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

import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.settings import Settings
from features import spec
from features.events import ALL_FIELDS, MAX_CLOCK_SKEW, REQUIRED_COMMON, EventType
from features.registry import REGISTRY, Registry
from features.semantics import Collision, Drop, IdCollisions, from_us
from features.state import sweep
from pipelines.engine import BuildReport, MaterializationEngine, Step
from pipelines.spark.compat import observed_metrics
from pipelines.spark.schema import EVENT_SPARK_SCHEMA, SPARK_TYPES, arrow_records, offline_schema, read_offline_table
from pipelines.spark.session import spark_session
from pipelines.store.offline import CREATED_TIMESTAMP, EVENT_TIMESTAMP, PARTITION, offline_table_path
from pipelines.store.offline import offline_schema as arrow_schema

DEAD_LETTER_TABLE = "spark_events"
COLLIDED = "_collided"  # the aggregation's column for an owner-rule collision (features.state.Owner)
INVALID = "invalid"
_OUT_BATCH_ROWS = 10_000


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


class SparkBackfill(MaterializationEngine[Path | str | None, DataFrame, DataFrame, DataFrame, int]):
    """Compile every feature view into Spark jobs over the event log: one step (and job) per view.

    ``backfill(start, end)`` is the job (see the module docstring for intervals);
    the hooks are the steps of :meth:`MaterializationEngine.materialize`. After a build,
    :attr:`dead_letters` holds the dead-lettered rows per problem column.
    """

    name = "spark"

    def __init__(self, settings: Settings, registry: Registry = REGISTRY, spark: SparkSession | None = None) -> None:
        super().__init__(settings, registry)
        self.spark = spark or spark_session(settings)
        self.start: datetime | None = None
        self.end: datetime | None = None
        self.dead_letters: dict[str, int] = {}
        self._persisted: list[DataFrame] = []
        self._views: list[spec.FeatureView] = []  # the views of the build under way (prepare)
        # the events the owner rule left out of a view (features.state.Owner), as "owner|event_id": they come
        # back from the executors as rows of the aggregation (COLLIDED), so no accumulator (Spark Connect has none)
        self._session_collisions: set[str] = set()
        # for another job over the same admitted events (pipelines.spark.triggers): more event fields to keep, and
        # whether validation replaces the dead-letter table's days (the feature backfill owns it)
        self.extra_fields: set[str] = set()
        self.write_dead_letters = True

    # -- inputs --------------------------------------------------------------------------------
    def context(self) -> timedelta | None:
        """How much event time before an interval the change points of the views being built depend on; None when
        one has a lifetime window (its running state depends on every earlier event: the whole log is read)."""
        views = self._views or list(self.registry.views)
        if any(v.lifetime for v in views):
            return None
        return max(v.ttl for v in views) + self.rules.allowed_lateness

    def prepare(self, steps: Sequence[Step]) -> None:
        """The views of this build: the days an interval reads follow from their windows (:meth:`context`)."""
        self._views = [v for s in steps for v in s.views]

    def read_events(self, path: Path | str | None = None, start: datetime | None = None,
                    end: datetime | None = None) -> DataFrame:
        """The event log (day-partitioned parquet) with its ``event_date``, pruned to what [start, end) needs."""
        schema = T.StructType([*EVENT_SPARK_SCHEMA.fields, T.StructField(PARTITION, T.StringType())])
        df = self.spark.read.schema(schema).parquet(str(path or self.settings.events_path))
        context = self.context()
        if start is not None and context is not None:
            df = df.where(F.col(PARTITION) >= (start - context).date().isoformat())
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
    def read(self, source: Path | str | None) -> DataFrame:
        """The event log under ``source`` (default: the settings' events path), pruned to the interval."""
        return self.read_events(source, self.start, self.end)

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
        if not self.write_dead_letters:
            pass
        elif report.dropped[INVALID]:
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
        needed = sorted(set().union(*(v.event_fields() for v in self.registry.views)) | self.extra_fields)
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
                 "event_time": from_us(r["et"]),
                 "ingest_time": from_us(r["it"])}
            if ids.observe(e) and (self.start is None or e["event_time"] >= self.start) and (
                    self.end is None or e["event_time"] < self.end):
                count += 1
        return count

    def key_by_entity(self, step: Step, events: DataFrame) -> DataFrame:
        """The view's events with a key, hashed by key and in arrival order within each key."""
        (view,) = step.views
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

    def aggregate(self, step: Step, keyed: DataFrame) -> DataFrame:
        """The shared state machine per key: one row per change point in [start, end).

        ``keyed`` is partitioned by key and sorted by (key, arrival), so each Arrow
        batch stream holds whole keys in arrival order; a key split across batches
        is carried over. No per-group pandas frames: rows go Arrow -> dicts ->
        :func:`features.state.sweep` -> Arrow.
        """
        (view,) = step.views
        key = view.entity.join_key
        start, end = self.start, self.end
        until = end - timedelta(microseconds=1) if end is not None else None
        # the table's columns, all nullable, plus COLLIDED: a row with it set is an owner-rule collision, not a
        # change point, and never reaches the table (write)
        batch_schema = pa.schema([*(f.with_nullable(True) for f in arrow_schema(view)),
                                  pa.field(COLLIDED, pa.string())])
        owned = view.entity.owner is not None
        # the owner rule's collisions (features.state.Owner) as (owner, event_id), counted by the interval their
        # arrival falls in: the owner rule decides at arrival, and only the run whose keys hold the arrival
        # (ingest_time < end) sees it, so by event_time one arriving after its interval's end would be in no count
        owner_field = view.entity.owner.join_key if view.entity.owner is not None else ""

        def rows_of(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            k = events[0][key]
            collided: list[Any] = []
            for t, values in sweep(view, events, until=until, collided=collided if owned else None):
                if start is None or t >= start:
                    yield {key: k, EVENT_TIMESTAMP: t, CREATED_TIMESTAMP: t, **values}
            for e in collided:
                if start is None or e["ingest_time"] >= start:
                    yield {key: k, COLLIDED: f"{e[owner_field]}|{e['event_id']}"}

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
                    yield pa.RecordBatch.from_pylist(out, schema=batch_schema)
                    out = []
            if current:
                out.extend(rows_of(current))
            if out:
                yield pa.RecordBatch.from_pylist(out, schema=batch_schema)

        schema = T.StructType([*(T.StructField(f.name, f.dataType, True) for f in offline_schema(view).fields),
                               T.StructField(COLLIDED, T.StringType(), True)])
        return keyed.mapInArrow(run, schema)

    def write(self, step: Step, rows: DataFrame) -> int:
        """Replace the interval's days of the view's offline table; return the rows written."""
        (view,) = step.views
        out = rows.withColumn(PARTITION, F.date_format(F.col(EVENT_TIMESTAMP), "yyyy-MM-dd"))
        return self._replace_partitions(out, str(offline_table_path(self.settings, view)), collided=COLLIDED)

    def finish(self, written: Sequence[tuple[Step, int]], report: BuildReport) -> BuildReport:
        """Spark wrote eagerly: the counts are the writes'; an event left out of several views of an owned
        entity is one collision."""
        for step, rows in written:
            report.views[step.name] = rows
        report.collisions[Collision.SESSION_ID.value] = len(self._session_collisions)
        return report

    # -- partition plumbing --------------------------------------------------------------------
    def _replace_partitions(self, df: DataFrame, path: str, *, collided: str | None = None) -> int:
        """Dynamic partition overwrite, then delete the interval's days that got no rows.

        With ``collided``, rows where that column is set are not written: their values are gathered into
        the session collisions, by the same observation that counts the written rows (one pass)."""
        observation = Observation(f"write_{id(df)}")
        kept = F.col(collided).isNull() if collided else F.lit(True)
        metrics_columns = [F.count(F.when(kept, 1)).alias("rows"),
                           F.collect_set(F.when(kept, F.col(PARTITION))).alias("days")]
        if collided:
            metrics_columns.append(F.collect_set(collided).alias("collided"))
        observed = df.observe(observation, *metrics_columns)
        if collided:
            observed = observed.where(kept).drop(collided)
        (observed.repartition(PARTITION).write.mode("overwrite").partitionBy(PARTITION)
         .option("partitionOverwriteMode", "dynamic").parquet(path))
        metrics = observed_metrics(observation)
        self._session_collisions.update(metrics.get("collided") or [])
        if self.start is not None and self.end is not None:
            written = set(metrics.get("days") or [])
            self._delete_partitions(path, [d for d in _days(self.start, self.end) if d not in written])
        return int(metrics.get("rows") or 0)

    def _delete_partitions(self, root: str, days: Sequence[str]) -> None:
        """Remove ``root/event_date=<day>`` through Arrow's filesystems (local, HDFS, S3 and GCS alike, by URI),
        a public API that needs no JVM handle, so it works under Spark Connect too."""
        if not days:
            return
        fs, base = pafs.FileSystem.from_uri(root)
        for d in days:
            path = f"{base.rstrip('/')}/{PARTITION}={d}"
            if fs.get_file_info(path).type == pafs.FileType.Directory:
                fs.delete_dir(path)

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
        self._session_collisions = set()
        try:
            report = self.materialize(events_path, views)
        finally:
            for df in self._persisted:
                df.unpersist()
            self._persisted.clear()
        report.seconds = time.perf_counter() - t0
        return report


    def offline_table(self, view: spec.FeatureView) -> DataFrame:
        """A view's offline table (empty if it was never built)."""
        return read_offline_table(self.spark, self.settings, view)
