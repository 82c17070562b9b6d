"""Spark against the reference, on adversarial logs: every row, every drop count, every training value."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from conf.settings import Settings, load_settings
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules, tile_expiry, tile_start
from pipelines.eventlog import records_to_table, write_parquet
from pipelines.spark_builder import EVENT_TIMESTAMP, SparkFeatureBuilder
from tests.adversarial import START, adversarial_log

LATENESS = timedelta(hours=1)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, pd.Timestamp):
        a = a.to_pydatetime()
    return bool(a == b)


def settings_for(path: Path) -> Settings:
    return load_settings(data_dir=path, spark={"master": "local[2]", "shuffle_partitions": 2})


def offline_rows(builder: SparkFeatureBuilder, view: Any) -> list[dict[str, Any]]:
    pdf = builder.offline_table(view).toPandas()
    rows = pdf.to_dict("records")
    for r in rows:
        for f in view.features:
            v = r[f.name]
            if f.dtype == "timestamp" and v is not None and not pd.isna(v):
                r[f.name] = pd.Timestamp(v).tz_localize("UTC").to_pydatetime() if pd.Timestamp(v).tzinfo is None \
                    else pd.Timestamp(v).to_pydatetime()
            elif f.dtype == "timestamp":
                r[f.name] = None
            elif f.dtype == "array<string>":
                r[f.name] = list(v)
        t = pd.Timestamp(r[EVENT_TIMESTAMP])
        r[EVENT_TIMESTAMP] = (t.tz_localize("UTC") if t.tzinfo is None else t).to_pydatetime()
    return rows


def build(tmp_path: Path, spark: SparkSession, events: list[dict[str, Any]], **kw: Any) -> SparkFeatureBuilder:
    settings = settings_for(tmp_path)
    write_parquet(records_to_table(events), settings.events_path)
    builder = SparkFeatureBuilder(settings, spark=spark)
    builder.last_report = builder.backfill(**kw)  # type: ignore[attr-defined]
    return builder


@pytest.mark.parametrize("seed", [21, 22])
def test_every_spark_row_equals_the_reference(tmp_path: Path, spark: SparkSession, seed: int) -> None:
    events = adversarial_log(seed, users=3, events=300)
    ref = Reference(events, rules=EventRules(allowed_lateness=LATENESS))
    builder = build(tmp_path, spark, events)
    assert builder.last_report.dropped == {"invalid": 0, **{d.value: n for d, n in ref.drops.items()}}  # type: ignore[attr-defined]
    for view in REGISTRY.views:
        key = view.entity.join_key
        rows = offline_rows(builder, view)
        got_points = sorted((r[key], r[EVENT_TIMESTAMP]) for r in rows)
        want_points = sorted((k, t) for k in ref.keys(view) for t in ref.change_points(view, k))
        assert got_points == want_points, view.name
        for r in rows:
            want = ref.features(view, r[key], r[EVENT_TIMESTAMP])
            bad = {n: (r[n], want[n]) for n in want if not same(r[n], want[n])}
            assert not bad, (view.name, r[key], r[EVENT_TIMESTAMP], bad)


def test_training_set_is_point_in_time_correct(tmp_path: Path, spark: SparkSession) -> None:
    events = adversarial_log(23, users=3, events=300)
    ref = Reference(events, rules=EventRules(allowed_lateness=LATENESS))
    builder = build(tmp_path, spark, events)
    rng = random.Random(5)
    admitted = ref.events
    sessions = sorted({(e["user_id"], e["session_id"]) for e in admitted if e["session_id"]})
    queries: list[tuple[str, str, datetime]] = []
    for user, session in sessions:
        queries.append((user, session, START - timedelta(hours=2)))  # before anything: cold start
        e = rng.choice([x for x in admitted if x["session_id"] == session])
        queries.append((user, session, e["ingest_time"]))  # exactly on an arrival
        queries.append((user, session, e["ingest_time"] - timedelta(microseconds=1)))  # just before it
        for w in {a.window for v in REGISTRY.views for a in v.aggregations}:  # exactly on a tile expiry
            queries.append((user, session, tile_expiry(tile_start(e["event_time"], w), w)))
        queries.append((user, session, START + timedelta(seconds=rng.uniform(0, 8 * 3600))))
    queries.append(("nobody", "no-session", START + timedelta(hours=1)))
    entity_df = pd.DataFrame({"user_id": [q[0] for q in queries], "session_id": [q[1] for q in queries],
                              "event_timestamp": pd.to_datetime([q[2] for q in queries], utc=True),
                              "label": [i % 2 for i in range(len(queries))]})
    service = REGISTRY.service("purchase_propensity_v1")
    got = builder.training_set(entity_df, service).toPandas()
    assert len(got) == len(queries) and list(got["label"]) == list(entity_df["label"])
    for (user, session, t), (_, row) in zip(queries, got.iterrows(), strict=True):
        want = ref.service_row(service, {"user_id": user, "session_id": session}, t)
        for n, w in want.items():
            v = row[n]
            if REGISTRY.feature(n).dtype == "array<string>":
                v = list(v)
            elif v is None or (not isinstance(v, list) and pd.isna(v)):
                v = None
            elif isinstance(v, pd.Timestamp):
                v = (v.tz_localize("UTC") if v.tzinfo is None else v).to_pydatetime()
            assert same(v, w), (user, session, t, n, v, w)


def test_incremental_days_equal_one_full_run_and_reruns_are_idempotent(tmp_path: Path, spark: SparkSession) -> None:
    events = adversarial_log(24, users=2, events=200)
    day1 = datetime(2026, 10, 31, tzinfo=UTC)
    day2, day3 = day1 + timedelta(days=1), day1 + timedelta(days=2)
    full = build(tmp_path / "full", spark, events, start=day1, end=day3)
    inc = build(tmp_path / "inc", spark, events, start=day1, end=day2)
    inc.backfill(start=day2, end=day3)
    inc.backfill(start=day2, end=day3)  # the same interval again
    def rows(b: SparkFeatureBuilder, view: Any) -> list[tuple[str, ...]]:
        pdf = b.offline_table(view).toPandas().drop(columns=["created_timestamp"])
        return sorted(tuple(str(x) for x in r) for r in pdf.itertuples(index=False))

    for view in REGISTRY.views:
        assert rows(inc, view) == rows(full, view), view.name
        assert len(rows(full, view)) > 0


def test_interval_bounds_must_be_midnights(tmp_path: Path, spark: SparkSession) -> None:
    builder = SparkFeatureBuilder(settings_for(tmp_path), spark=spark)
    with pytest.raises(ValueError, match="UTC midnights"):
        builder.backfill(start=datetime(2026, 10, 31, 6, tzinfo=UTC))
