from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from features.events import (
    ALL_FIELDS,
    EVENT_PROPERTIES,
    EventType,
    EventValidationError,
    parse_event,
    validate_event,
)
from tests.builders import T0, raw_event


def errors_of(raw: dict) -> dict[str, str]:
    record, errors = validate_event(raw)
    assert record is None
    return {e.field: e.problem for e in errors}


@pytest.mark.parametrize("event_type", list(EventType))
def test_every_event_type_has_a_valid_example(event_type: EventType) -> None:
    record = parse_event(raw_event(event_type))
    assert record["event_type"] == event_type.value
    assert set(record) == {f.name for f in ALL_FIELDS}
    assert record["event_time"].tzinfo is UTC


def test_required_property_missing_names_field_and_event_type() -> None:
    raw = raw_event("purchase")
    del raw["amount"]
    assert errors_of(raw) == {"amount": "is required for purchase events"}


def test_negative_price_is_rejected_with_bound() -> None:
    assert errors_of(raw_event("product_view", price=-3.0)) == {"price": "must be >= 0, got -3"}


def test_property_not_allowed_for_type() -> None:
    assert errors_of(raw_event("login", price=10.0)) == {"price": "is not a property of login events"}


def test_unknown_field_and_unknown_type() -> None:
    raw = raw_event("login")
    raw["colour"] = "red"
    assert errors_of(raw)["colour"] == "is not a field of the event schema"
    raw = raw_event("login")
    raw["event_type"] = "teleport"
    assert "'teleport' is not one of" in errors_of(raw)["event_type"]


def test_naive_timestamp_and_wrong_types() -> None:
    raw = raw_event("add_to_cart", quantity=1.5)
    raw["event_time"] = "2026-10-01T12:00:00"
    errs = errors_of(raw)
    assert errs["event_time"].startswith("has no timezone")
    assert errs["quantity"] == "must be an integer, got 1.5"
    assert errors_of(raw_event("login", success="yes"))["success"] == "must be true or false, got 'yes'"
    assert errors_of(raw_event("page_view", dwell_seconds=float("inf")))["dwell_seconds"].startswith("must be finite")


def test_all_errors_are_reported_at_once() -> None:
    raw = raw_event("purchase", amount=-1.0, quantity="two")
    del raw["user_id"]
    with pytest.raises(EventValidationError) as exc:
        parse_event(raw)
    fields = {e.field for e in exc.value.errors}
    assert fields == {"user_id", "amount", "quantity"}
    assert "user_id: is required" in str(exc.value)


def test_iso_strings_are_parsed_to_utc() -> None:
    raw = raw_event("login")
    raw["event_time"] = "2026-10-01T14:00:00+02:00"
    raw["ingest_time"] = "2026-10-01T12:00:01Z"
    rec = parse_event(raw)
    assert rec["event_time"] == datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def test_clock_skew_beyond_limit_is_rejected_within_limit_clamped() -> None:
    raw = raw_event("login", ingest_delay=-timedelta(minutes=10))
    assert "after ingest_time" in errors_of(raw)["event_time"]
    rec = parse_event(raw_event("login", ingest_delay=-timedelta(minutes=1)))
    assert rec["event_time"] == rec["ingest_time"] == T0 - timedelta(minutes=1)


def test_session_may_be_null_but_ids_may_not_be_empty() -> None:
    assert parse_event(raw_event("login", session_id=None))["session_id"] is None
    raw = raw_event("login")
    raw["event_id"] = ""
    assert errors_of(raw) == {"event_id": "must not be empty"}


def test_every_event_type_declares_its_properties() -> None:
    assert set(EVENT_PROPERTIES) == set(EventType)
