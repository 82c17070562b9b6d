"""A Spark backfill of an interval in which a view has no change point succeeds, writes nothing, clears the
interval's partitions and reports 0: the hourly DAG meets such intervals every quiet hour.

PySpark used to fail these with a ``Py4JJavaError`` (an assertion in ``PythonSQLUtils.toPyRow``) from
``Observation.get``, because an empty plan reports no metrics (``pipelines.spark.backfill._observed``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from conf.settings import Settings, load_settings
from features.events import EventType
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from pipelines.ingest.eventlog import records_to_table, write_parquet
from pipelines.spark.backfill import DEAD_LETTER_TABLE, SparkBackfill
from pipelines.store.offline import PARTITION
from tests.builders import make_event

RULES = EventRules(allowed_lateness=timedelta(hours=1))
DAY1 = datetime(2026, 10, 31, tzinfo=UTC)
QUIET = DAY1 + timedelta(days=45)  # past every timer: the longest window (31 days) and the lateness are over


def settings_for(path: Path) -> Settings:
    return load_settings(data_dir=path, online_store={"type": "sqlite", "path": str(path / "online.db")},
                         spark={"master": "local[2]", "shuffle_partitions": 2})


def days_in(root: Path) -> set[str]:
    return {p.name.removeprefix(f"{PARTITION}=") for p in root.glob(f"{PARTITION}=*")} if root.exists() else set()


def test_quiet_days_succeed_write_nothing_and_leave_no_partition(tmp_path: Path, spark: SparkSession) -> None:
    """A day before any event and a day after every window emptied: 0 for every view, no partition of that day
    (a stale one is removed), and the tables of the other days untouched."""
    noon = DAY1 + timedelta(hours=12)
    events = [make_event(EventType.LOGIN, user_id="u1", session_id="s1", event_time=noon),
              make_event(EventType.ADD_TO_CART, user_id="u1", session_id="s1", event_time=noon + timedelta(minutes=1)),
              make_event(EventType.PURCHASE, user_id="u1", session_id="s1", event_time=noon + timedelta(minutes=2))]
    settings = settings_for(tmp_path)
    write_parquet(records_to_table(events), settings.events_path)
    builder = SparkBackfill(settings, spark=spark)
    full = builder.backfill()
    assert all(full.views[v.name] > 0 for v in REGISTRY.views)
    before = {v.name: days_in(settings.offline_path / v.name) for v in REGISTRY.views}
    quiet_day = QUIET.date().isoformat()
    stale = settings.offline_path / "user_commerce" / f"{PARTITION}={quiet_day}"
    stale.mkdir()
    pq.write_table(pq.read_table(next((settings.offline_path / "user_commerce").glob(f"{PARTITION}=*/*.parquet"))),
                   stale / "part-stale.parquet", coerce_timestamps="us")
    for start in (DAY1 - timedelta(days=60), QUIET):
        report = builder.backfill(start=start, end=start + timedelta(days=1))
        assert report.views == {v.name: 0 for v in REGISTRY.views}
        assert sum(report.dropped.values()) == 0 and builder.dead_letters == {}
        for v in REGISTRY.views:
            assert start.date().isoformat() not in days_in(settings.offline_path / v.name), v.name
        assert start.date().isoformat() not in days_in(settings.dead_letter_path / DEAD_LETTER_TABLE)
    after = {v.name: days_in(settings.offline_path / v.name) for v in REGISTRY.views}
    assert after == before, "only the quiet days changed"


def test_a_log_without_commerce_events(tmp_path: Path, spark: SparkSession) -> None:
    """Only logins: the commerce view has no change point in any run, full or by interval; the others are built."""
    events = [make_event(EventType.LOGIN, user_id=u, session_id=f"s-{u}-{i}",
                         event_time=DAY1 + timedelta(hours=9 + 5 * i), success=i % 2 == 0)
              for u in ("u1", "u2") for i in range(3)]
    settings = settings_for(tmp_path)
    write_parquet(records_to_table(events), settings.events_path)
    builder = SparkBackfill(settings, spark=spark)
    ref = Reference(events, rules=RULES)
    full = builder.backfill()
    for view in REGISTRY.views:
        assert full.views[view.name] == sum(len(ref.change_points(view, k)) for k in ref.keys(view)), view.name
    assert full.views["user_commerce"] == 0 and full.views["user_account"] > 0
    assert builder.offline_table(REGISTRY.view("user_commerce")).count() == 0
    day = builder.backfill(start=DAY1, end=DAY1 + timedelta(days=1))
    assert day.views["user_commerce"] == 0 and day.views["user_account"] > 0
    assert days_in(settings.offline_path / "user_commerce") == set()
