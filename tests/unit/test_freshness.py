"""Freshness on online reads: ages, the stale policy and cold starts (``features/SEMANTICS.md``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from features.catalog import SESSION_ACTIVITY, USER_COMMERCE
from features.registry import REGISTRY
from serving.online import StoredRow
from serving.vector import apply_freshness, cold_row, stored_views

NOW = datetime(2026, 10, 20, 12, 0, tzinfo=UTC)


def written(view: object, age: timedelta, **values: object) -> StoredRow:
    assert isinstance(view, type(USER_COMMERCE))
    row = {**view.finalize_row({}), **values}
    return StoredRow(values=row, feast_values=dict(row), event_ts=NOW - age)


def test_a_row_younger_than_its_limit_is_served_with_its_age() -> None:
    row = written(USER_COMMERCE, timedelta(minutes=5), user_purchases_30d=3)
    used, fresh = apply_freshness(USER_COMMERCE, row, NOW)
    assert used is row and fresh.state == "fresh" and fresh.age_seconds == 300.0
    assert fresh.max_age_seconds == USER_COMMERCE.ttl.total_seconds()  # the default limit is the TTL


def test_a_row_past_the_ttl_reads_as_the_cold_start_row() -> None:
    row = written(USER_COMMERCE, USER_COMMERCE.ttl + timedelta(seconds=1), user_purchases_30d=3)
    used, fresh = apply_freshness(USER_COMMERCE, row, NOW)
    assert fresh.state == "stale" and fresh.age_seconds == USER_COMMERCE.ttl.total_seconds() + 1
    assert used.values == USER_COMMERCE.finalize_row({}) and used.values["user_purchases_30d"] == 0
    assert set(used.feast_values.values()) == {None}  # what the on-demand udf reads as a cold start


def test_a_tighter_max_age_and_the_serve_policy() -> None:
    tight = dataclasses.replace(SESSION_ACTIVITY, max_age=timedelta(minutes=10))
    row = written(tight, timedelta(minutes=11), session_dwell_seconds_5m=40.0)
    used, fresh = apply_freshness(tight, row, NOW)
    assert fresh.state == "stale" and fresh.max_age_seconds == 600.0 and used.values["session_dwell_seconds_5m"] == 0
    served = dataclasses.replace(tight, on_stale="serve")
    used, fresh = apply_freshness(served, row, NOW)
    assert fresh.state == "stale" and used is row  # stored values, flagged


def test_no_row_is_a_cold_start_without_an_age() -> None:
    used, fresh = apply_freshness(USER_COMMERCE, None, NOW)
    assert fresh.state == "cold_start" and fresh.age_seconds is None
    assert used == cold_row(USER_COMMERCE)
    never = StoredRow(values=USER_COMMERCE.finalize_row({}), feast_values={}, event_ts=None)
    assert apply_freshness(USER_COMMERCE, never, NOW)[1].state == "cold_start"


def test_one_read_serves_every_stored_view_of_several_services() -> None:
    services = tuple(REGISTRY.services)
    names = [v.name for v in stored_views(services)]
    assert len(names) == len(set(names)) and set(names) == {v.name for s in services for v in s.stored_views}
