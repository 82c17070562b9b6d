"""Spark's validation is the event model's: a client clock ahead of ours by up to ``MAX_CLOCK_SKEW`` is clamped to
the arrival, beyond it the row is dead-lettered with ``validate_event``'s words; intervals agree with one full run.

The Spark session is the session-scoped ``spark`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from conf.settings import Settings, load_settings
from features.events import MAX_CLOCK_SKEW, EventType, validate_event
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from features.spec import FeatureView
from pipelines.ingest.eventlog import records_to_table, write_parquet
from pipelines.spark.backfill import DEAD_LETTER_TABLE, SparkBackfill
from pipelines.spark.schema import to_pandas
from pipelines.store.offline import EVENT_TIMESTAMP
from tests.builders import raw_event
from tests.compare import same

RULES = EventRules(allowed_lateness=timedelta(hours=1))
DAY1 = datetime(2026, 10, 31, tzinfo=UTC)
DAY2, DAY3 = DAY1 + timedelta(days=1), DAY1 + timedelta(days=2)
SKEW_TEXT = f"s after ingest_time (max clock skew {MAX_CLOCK_SKEW.total_seconds():.0f}s)"


def settings_for(path: Path) -> Settings:
    return load_settings(data_dir=path, online_store={"type": "sqlite", "path": str(path / "online.db")},
                         spark={"master": "local[2]", "shuffle_partitions": 2})


def ahead(event_type: EventType, ingest: datetime, by: timedelta, **kw: Any) -> dict[str, Any]:
    """A raw event stamped ``by`` after its arrival at ``ingest`` (a client clock ahead of ours)."""
    return raw_event(event_type, event_time=ingest + by, ingest_delay=-by, **kw)


def normalised(raws: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``validate_event`` over the raws: the records it accepts, and the problem text of each it rejects."""
    good, bad = [], {}
    for r in raws:
        record, errors = validate_event(r)
        if record is None:
            bad[r["event_id"]] = "; ".join(f"{e.field} {e.problem}" for e in errors)
        else:
            good.append(record)
    return good, bad


def rows(builder: SparkBackfill, view: FeatureView) -> list[dict[str, Any]]:
    pdf = to_pandas(builder.offline_table(view))
    out = []
    for r in pdf.to_dict("records"):
        row = {}
        for f in view.features:
            v = r[f.name]
            if f.dtype == "array<string>":
                v = list(v)
            elif isinstance(v, pd.Timestamp):
                v = v.to_pydatetime()
            elif v is not None and not isinstance(v, list) and pd.isna(v):
                v = None
            elif hasattr(v, "item"):
                v = v.item()
            row[f.name] = v
        row["_key"], row["_t"] = r[view.entity.join_key], r[EVENT_TIMESTAMP].to_pydatetime()
        out.append(row)
    return out


def assert_equals_reference(builder: SparkBackfill, ref: Reference) -> None:
    for view in REGISTRY.views:
        got = rows(builder, view)
        assert sorted((r["_key"], r["_t"]) for r in got) == sorted(
            (k, t) for k in ref.keys(view) for t in ref.change_points(view, k)), view.name
        for r in got:
            want = ref.features(view, r["_key"], r["_t"])
            bad = {n: (r[n], want[n]) for n in want if not same(r[n], want[n])}
            assert not bad, (view.name, r["_key"], r["_t"], bad)


def table_rows(builder: SparkBackfill, view: FeatureView) -> list[tuple[str, ...]]:
    return sorted(tuple(str(x) for x in r) for r in to_pandas(builder.offline_table(view)).itertuples(index=False))


def test_a_clock_up_to_the_skew_ahead_is_clamped_and_beyond_it_dead_lettered(tmp_path: Path,
                                                                             spark: SparkSession) -> None:
    """2 minutes ahead counts, at its arrival, as the reference over ``validate_event``'s records counts it;
    6 minutes ahead is dead-lettered with ``validate_event``'s problem; the boundary is exact to the microsecond."""
    noon = DAY1 + timedelta(hours=12)
    raws = [raw_event(EventType.LOGIN, user_id="u1", session_id="s1", event_time=noon - timedelta(hours=2)),
            ahead(EventType.LOGIN, noon, timedelta(minutes=2), user_id="u1", session_id="s1", success=False),
            ahead(EventType.PURCHASE, noon + timedelta(minutes=1), MAX_CLOCK_SKEW, user_id="u1", session_id="s1",
                  amount=20.0),
            raw_event(EventType.PAGE_VIEW, user_id="u1", session_id="s1", event_time=noon + timedelta(minutes=3)),
            ahead(EventType.LOGIN, noon + timedelta(minutes=4), timedelta(minutes=6), user_id="u1", session_id="s1"),
            ahead(EventType.PURCHASE, noon + timedelta(minutes=5), MAX_CLOCK_SKEW + timedelta(microseconds=1),
                  user_id="u1", session_id="s1"),
            ahead(EventType.LOGIN, noon + timedelta(minutes=6), timedelta(seconds=361.5), user_id="u2",
                  session_id="s2"),  # 361.5s: Python's :.0f rounds half to even, so "362s"
            ahead(EventType.LOGIN, noon + timedelta(minutes=7), timedelta(seconds=360.5), user_id="u2",
                  session_id="s2")]  # "360s"
    good, bad = normalised(raws)
    assert len(good) == 4 and len(bad) == 4
    assert good[1]["event_time"] == good[1]["ingest_time"] == noon  # validate_event clamped it
    settings = settings_for(tmp_path)
    write_parquet(records_to_table(raws), settings.events_path)
    builder = SparkBackfill(settings, spark=spark)
    report = builder.backfill()
    assert report.dropped == {"invalid": 4, "late": 0, "duplicate": 0, "no_consent": 0}
    assert builder.dead_letters == {"event_time is more than 300s after ingest_time (max clock skew)": 4}
    letters = spark.read.parquet(str(settings.dead_letter_path / DEAD_LETTER_TABLE)).toPandas()
    assert dict(zip(letters["event_id"], letters["_problem"], strict=True)) == bad
    assert sorted(bad.values()) == sorted(f"event_time is {s}{SKEW_TEXT}" for s in (300, 360, 360, 362))
    ref = Reference(good, rules=RULES)
    assert_equals_reference(builder, ref)
    account = {r["_t"]: r for r in rows(builder, REGISTRY.view("user_account")) if r["_key"] == "u1"}
    assert account[noon]["user_logins_7d"] == 2 and account[noon]["user_failed_logins_7d"] == 1


def test_a_clamped_event_stamped_after_midnight_belongs_to_the_day_it_arrived(tmp_path: Path,
                                                                              spark: SparkSession) -> None:
    """Arriving at 23:59 stamped 00:01 the next day, the login lives in the next day's log partition but counts at
    23:59: the interval of its arrival must read it, so daily intervals give the tables of one full run."""
    raws = [raw_event(EventType.LOGIN, user_id="u1", session_id="s1", event_time=DAY2 - timedelta(hours=3)),
            ahead(EventType.LOGIN, DAY2 - timedelta(minutes=1), timedelta(minutes=2), user_id="u1",
                  session_id="s1"),
            ahead(EventType.PURCHASE, DAY2 - timedelta(seconds=30), timedelta(minutes=4), user_id="u1",
                  session_id="s1", amount=12.5),
            raw_event(EventType.LOGIN, user_id="u1", session_id="s2", event_time=DAY2 + timedelta(hours=5))]
    good, bad = normalised(raws)
    assert not bad
    settings = settings_for(tmp_path / "full")
    write_parquet(records_to_table(raws), settings.events_path)
    assert (settings.events_path / f"event_date={DAY2.date().isoformat()}").exists()
    full = SparkBackfill(settings, spark=spark)
    full_report = full.backfill()
    assert_equals_reference(full, Reference(good, rules=RULES))

    inc_settings = settings_for(tmp_path / "inc")
    write_parquet(records_to_table(raws), inc_settings.events_path)
    inc = SparkBackfill(inc_settings, spark=spark)
    # the last interval runs past every tile's expiry (the longest window's span: 365 days and a day tile)
    span = max(a.window.span for v in REGISTRY.views for a in v.aggregations if a.window.span is not None)
    bounds = (DAY1, DAY2, DAY3, DAY3 + span + timedelta(days=2))
    reports = [inc.backfill(start=a, end=z) for a, z in itertools.pairwise(bounds)]
    for view in REGISTRY.views:
        assert table_rows(inc, view) == table_rows(full, view), view.name
        assert sum(r.views[view.name] for r in reports) == full_report.views[view.name], view.name
    for reason, n in full_report.dropped.items():
        assert sum(r.dropped[reason] for r in reports) == n, reason
