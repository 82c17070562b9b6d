from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.events import EventType, validate_event
from pipelines.ingest.eventlog import (
    EVENT_SCHEMA,
    DeadLetterStore,
    decode_json,
    encode_json,
    read_parquet,
    records_to_table,
    validate_records,
    write_parquet,
)
from tests.builders import T0, make_event, raw_event


def sample_events() -> list[dict]:
    return [make_event(t, event_time=T0 + timedelta(hours=6 * i)) for i, t in enumerate(EventType)]


def test_parquet_round_trip_is_day_partitioned_and_microsecond(tmp_path: Path) -> None:
    events = sample_events()
    write_parquet(records_to_table(events), tmp_path / "events")
    days = sorted(p.name for p in (tmp_path / "events").iterdir())
    assert days[0] == "event_date=2026-10-01" and len(days) == 5  # 15 events, 6 hours apart, from noon
    part = next((tmp_path / "events" / days[0]).glob("*.parquet"))
    ts_type = pq.read_schema(part).field("event_time").type
    assert ts_type == pa.timestamp("us", tz="UTC")  # Spark 4 rejects nanoseconds
    back = read_parquet(tmp_path / "events").to_pylist()
    assert sorted(back, key=lambda r: r["event_id"]) == sorted(events, key=lambda r: r["event_id"])
    only_day_two = read_parquet(tmp_path / "events", start=T0.date() + timedelta(days=1),
                                end=T0.date() + timedelta(days=1))
    assert {r["event_time"].date() for r in only_day_two.to_pylist()} == {T0.date() + timedelta(days=1)}


def test_naive_timestamps_are_refused_by_the_writer(tmp_path: Path) -> None:
    table = pa.table({"event_time": pa.array([datetime(2026, 1, 1)], type=pa.timestamp("us"))})
    with pytest.raises(ValueError, match="'event_time' holds timestamps without a timezone"):
        write_parquet(table, tmp_path)


def test_json_lines_round_trip() -> None:
    for e in sample_events():
        line = encode_json(e)
        assert "null" not in line
        rec, errors = validate_event(decode_json(line))
        assert errors == [] and rec == e
    assert json.loads(encode_json(make_event("login")))["event_time"].endswith("Z")
    with pytest.raises(ValueError, match="must be an object"):
        decode_json("[1, 2]")


def test_bad_events_go_to_dead_letters_with_counts(tmp_path: Path) -> None:
    store = DeadLetterStore(path=tmp_path / "dlq" / "events.jsonl", source="unit")
    raws = [raw_event("login"), raw_event("purchase", amount=-2.0), raw_event("product_view", price=None),
            raw_event("search")]
    good, report = validate_records(raws, store)
    assert [g["event_type"] for g in good] == ["login", "search"]
    assert (report.accepted, report.rejected) == (2, 2)
    assert report.by_field == {"amount": 1, "price": 1}
    lines = [json.loads(x) for x in (tmp_path / "dlq" / "events.jsonl").read_text().splitlines()]
    assert [e["errors"] for e in lines] == [
        [{"field": "amount", "problem": "must be >= 0, got -2"}],
        [{"field": "price", "problem": "is required for product_view events"}],
    ]
    assert lines[0]["payload"]["event_type"] == "purchase" and lines[0]["source"] == "unit"
    assert store.summary()["dead_lettered"] == 2


def test_schema_is_derived_from_the_field_table() -> None:
    assert EVENT_SCHEMA.field("price").type == pa.float64()
    assert EVENT_SCHEMA.field("ingest_time").type == pa.timestamp("us", tz="UTC")
    assert EVENT_SCHEMA.metadata[b"kairos.schema_version"] == b"1"
    assert datetime.now(UTC).tzinfo is UTC
