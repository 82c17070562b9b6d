"""The Spark engine's trigger history: every firing of every trigger over the event log, for training and backtests.

The same admitted events as the feature backfill (:class:`pipelines.spark.backfill.SparkBackfill`'s ``read``,
``validate`` and ``admit``: one rule for consent, lateness and duplicates), then, per trigger key field (``user_id``,
``session_id``), the key's admitted events in arrival order through :func:`features.triggers.sweep_triggers`, the
shared batch sweep over the shared per-key state machine (the stream drives the same machine batch by batch). An
absence trigger gets the events of the types it reads, a condition trigger those its view reads, as the view's own
backfill does (so its owner rule sees the same events), and no trigger rule is written a second time here.

The offline table of firings (``settings.trigger_table_path``, parquet with microsecond UTC timestamps,
partitioned by ``event_date``, the day of ``fire_time``, as every offline table) has one row per firing: ``key``,
``trigger``, ``fire_time``, ``fire_id`` (the idempotency key the stream writes too), ``user_id`` and ``cause``
(the arming event of an absence firing). ``user_id`` is the arming start's user (absence), the key (a condition
keyed by the user), or for a condition of another entity the user of the key's latest event arriving by the fire
time (the stream writes the key's owner: the same user unless a shared session collided).

Intervals: ``build(start, end)`` computes the firings ``start <= fire_time < end`` from every admitted event
arriving before ``end`` (a firing depends on arbitrarily old events: a lifetime count, an armed deadline), with the
clock run to ``end`` minus one microsecond, and replaces exactly those days of the table (reruns are idempotent).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.dataset as ds
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf.settings import Settings
from features.registry import REGISTRY, Registry
from features.trigger_catalog import TRIGGERS
from features.triggers import AbsenceTrigger, Fire, Trigger, sweep_triggers
from pipelines.engine import BuildReport
from pipelines.spark.backfill import SparkBackfill, _midnight_check
from pipelines.spark.schema import arrow_records
from pipelines.store.offline import PARTITION

FIRE_ARROW: Final = pa.schema([
    pa.field("key", pa.string()), pa.field("trigger", pa.string()), pa.field("fire_time", pa.timestamp("us", "UTC")),
    pa.field("fire_id", pa.string()), pa.field("user_id", pa.string()), pa.field("cause", pa.string())])
FIRE_SPARK: Final = T.StructType([
    T.StructField("key", T.StringType()), T.StructField("trigger", T.StringType()),
    T.StructField("fire_time", T.TimestampType()), T.StructField("fire_id", T.StringType()),
    T.StructField("user_id", T.StringType()), T.StructField("cause", T.StringType())])
_OUT_BATCH_ROWS = 10_000


def _types(trigger: Trigger) -> frozenset[str]:
    """The event types a trigger's sweep is given: an absence trigger's own, a condition's view's."""
    return trigger.event_types() if isinstance(trigger, AbsenceTrigger) else frozenset(trigger.view.event_types())


def trigger_fields(triggers: Iterable[Trigger]) -> set[str]:
    """The event fields the triggers' sweeps read."""
    out = {"event_id", "event_type", "event_time", "ingest_time", "user_id"}
    for t in triggers:
        out.add(t.key_field)
        if isinstance(t, AbsenceTrigger):
            for where in (t.start_where, t.cancel_where):
                if where is not None:
                    out |= where.columns()
        else:
            out |= set(t.view.event_fields())
            if t.view.entity.owner is not None:
                out.add(t.view.entity.owner.join_key)
    return out


def fires_of_key(triggers: Sequence[Trigger], key: str, events: Sequence[Mapping[str, Any]], *,
                 until: datetime | None, start: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The offline rows of one key's firings (``events``: the key's admitted events in arrival order)."""
    for t in triggers:
        types = _types(t)
        mine = [e for e in events if e["event_type"] in types]
        if not mine:
            continue
        arrivals = [e["ingest_time"] for e in mine]
        for f in sweep_triggers(t, key, mine, until=until):
            if start is not None and f.fire_time < start:
                continue
            user = f.user_id
            if user is None:
                user = key if t.key_field == "user_id" else mine[bisect.bisect_right(arrivals, f.fire_time) - 1].get(
                    "user_id")
            yield {"key": key, "trigger": f.trigger, "fire_time": f.fire_time, "fire_id": f.fire_id,
                   "user_id": user, "cause": f.cause}


@dataclass
class TriggerBuild:
    """What a trigger build did: firings per trigger (every trigger named), the interval, the seconds."""

    fires: dict[str, int]
    start: datetime | None
    end: datetime | None
    report: BuildReport = field(default_factory=BuildReport)
    seconds: float = 0.0


class SparkTriggers:
    """The trigger history over the event log (see the module docstring); :meth:`build` is the job."""

    def __init__(self, settings: Settings, registry: Registry = REGISTRY, spark: SparkSession | None = None,
                 triggers: Sequence[Trigger] = TRIGGERS) -> None:
        self.settings = settings
        self.triggers = tuple(triggers)
        self.events = SparkBackfill(settings, registry, spark=spark)
        self.events.write_dead_letters = False  # the feature backfill owns the dead-letter table
        self.events.extra_fields = trigger_fields(self.triggers)
        self.spark = self.events.spark

    def admitted(self, events_path: Path | str | None, end: datetime | None, report: BuildReport) -> DataFrame:
        """The admitted events arriving before ``end``: the backfill's own read, validation and admission."""
        eng = self.events
        eng.start, eng.end = None, end
        eng.prepare([])  # no view: context() reads every day before `end`
        admitted = eng.admit(eng.validate(eng.read(events_path), report), report)
        return admitted if end is None else admitted.where(F.col("ingest_time") < F.lit(end))

    def fires(self, admitted: DataFrame, start: datetime | None, end: datetime | None) -> DataFrame:
        """One row per firing in ``[start, end)``, one Spark job per trigger key field."""
        until = end - timedelta(microseconds=1) if end is not None else None
        out: DataFrame | None = None
        for key_field in sorted({t.key_field for t in self.triggers}):
            mine = tuple(t for t in self.triggers if t.key_field == key_field)
            types = sorted(set().union(*(_types(t) for t in mine)))
            fields = sorted(trigger_fields(mine))
            keyed = (admitted.where(F.col(key_field).isNotNull() & F.col("event_type").isin(types))
                     .select(*fields).repartition(key_field)
                     .sortWithinPartitions(key_field, "ingest_time", "event_id"))

            def run(batches: Iterable[pa.RecordBatch], mine: tuple[Trigger, ...] = mine,
                    key_field: str = key_field) -> Iterator[pa.RecordBatch]:
                current: list[dict[str, Any]] = []
                rows: list[dict[str, Any]] = []
                for batch in batches:
                    for e in arrow_records(batch):
                        if current and e[key_field] != current[0][key_field]:
                            rows.extend(fires_of_key(mine, str(current[0][key_field]), current, until=until,
                                                     start=start))
                            current = []
                        current.append(e)
                    if len(rows) >= _OUT_BATCH_ROWS:
                        yield pa.RecordBatch.from_pylist(rows, schema=FIRE_ARROW)
                        rows = []
                if current:
                    rows.extend(fires_of_key(mine, str(current[0][key_field]), current, until=until, start=start))
                if rows:
                    yield pa.RecordBatch.from_pylist(rows, schema=FIRE_ARROW)

            part = keyed.mapInArrow(run, FIRE_SPARK)
            out = part if out is None else out.unionByName(part)
        assert out is not None, "no trigger to build"
        return out

    def build(self, start: datetime | None = None, end: datetime | None = None,
              events_path: Path | str | None = None) -> TriggerBuild:
        """Compute the firings in ``[start, end)`` (UTC midnights; either may be omitted) and replace those days of
        the offline table of firings."""
        _midnight_check(start)
        _midnight_check(end)
        if start is not None and end is not None and start >= end:
            raise ValueError(f"empty interval [{start}, {end})")
        t0 = time.perf_counter()
        report = BuildReport()
        try:
            fires = self.fires(self.admitted(events_path, end, report), start, end).persist(
                StorageLevel.MEMORY_AND_DISK)
            counts = {t.name: 0 for t in self.triggers}
            counts.update({r["trigger"]: int(r["count"]) for r in fires.groupBy("trigger").count().collect()})
            eng = self.events
            eng.start, eng.end = start, end  # the days the write replaces
            eng._replace_partitions(fires.withColumn(PARTITION, F.date_format("fire_time", "yyyy-MM-dd")),
                                    str(self.settings.trigger_table_path))
            fires.unpersist()
        finally:
            for df in self.events._persisted:
                df.unpersist()
            self.events._persisted.clear()
        return TriggerBuild(fires=counts, start=start, end=end, report=report, seconds=time.perf_counter() - t0)


def read_fire_table(settings: Settings) -> list[Fire]:
    """The offline table of firings (empty if it was never built), in time order."""
    path = settings.trigger_table_path
    if not path.exists():
        return []
    table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table(
        columns=["key", "trigger", "fire_time", "user_id", "cause"])
    out = [Fire(trigger=r["trigger"], key=r["key"], fire_time=r["fire_time"].astimezone(UTC), user_id=r["user_id"],
                cause=r["cause"]) for r in table.to_pylist()]
    return sorted(out, key=lambda f: (f.fire_time, f.trigger, f.key))
