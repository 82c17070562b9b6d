"""Long (90d, 180d, 365d on day tiles) and lifetime windows: reference, Spark, Bytewax and Feast agree.

A sparse log of customers who buy every few weeks to months over ~19 months, with duplicates, out-of-order
and late deliveries and unconsented events, goes through the three implementations (the user_value view and
its on-demand features); parity compares every stream row, including the rows written when the 90-, 180- and
365-day tiles expire with no new event, and Feast online against Feast offline at the end.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import SparkSession

from conf.settings import Settings
from features import catalog
from features.events import EventType
from features.reference import Reference
from features.registry import Registry
from features.semantics import EventRules, floor_time, tile_expiry
from features.spec import W365D
from features.state import ViewState, sweep
from pipelines.ingest.eventlog import records_to_table, write_parquet
from tests.builders import make_event
from validation.parity import ParityReport, run_parity

START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
VALUE_ONLY = Registry(entities=(catalog.USER,), sources=(catalog.EVENTS,), views=(catalog.USER_VALUE,),
                      on_demand_views=(catalog.CUSTOMER_VALUE,), services=(catalog.CUSTOMER_VALUE_V1,))


def sparse_log(seed: int, users: int = 12) -> list[dict[str, Any]]:
    """Purchases every 5-120 days over ~580 days (some customers stop), with the delivery faults of a real feed."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for u in range(users):
        t = START + timedelta(days=rng.uniform(0, 120), seconds=rng.uniform(0, 86400))
        stop = START + timedelta(days=rng.uniform(150, 580))
        while t < stop:
            r = rng.random()
            delay = (timedelta(hours=2) if r < 0.05 else  # late: never counts
                     timedelta(minutes=rng.uniform(5, 50)) if r < 0.2 else timedelta(seconds=rng.uniform(1, 30)))
            e = make_event(EventType.PURCHASE, user_id=f"c{u}", session_id=f"c{u}-{t:%Y%m%d}", event_time=t,
                           ingest_delay=delay, consent=rng.random() > 0.03, amount=round(rng.uniform(5, 300), 2),
                           quantity=1 + int(rng.random() * 3))
            out.append(e)
            if rng.random() < 0.08:  # a retry of the same order
                out.append({**e, "ingest_time": e["ingest_time"] + timedelta(seconds=rng.uniform(1, 600))})
            if rng.random() < 0.3:  # a second order the same day, out of order with the first
                t2 = t - timedelta(minutes=rng.uniform(1, 30))
                out.append(make_event(EventType.PURCHASE, user_id=f"c{u}", session_id=f"c{u}-{t:%Y%m%d}",
                                      event_time=t2, ingest_delay=(e["ingest_time"] - t2) + timedelta(seconds=5),
                                      amount=12.5, quantity=1))
            t += timedelta(days=rng.choice([5, 20, 45, 90, 120]) * rng.uniform(0.7, 1.3))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, spark: SparkSession) -> ParityReport:
    from tests.conftest import settings_in

    settings: Settings = settings_in(tmp_path_factory.mktemp("long-windows"))
    write_parquet(records_to_table(sparse_log(5)), settings.events_path)
    return run_parity(settings, spark=spark, workers=1, reference_keys=None, feast_keys=None, registry=VALUE_ONLY,
                      progress=lambda _: None)


def test_long_and_lifetime_windows_agree_in_every_engine_with_zero_mismatches(report: ParityReport) -> None:
    names = {f.feature for f in report.features}
    assert names == set(catalog.USER_VALUE.feature_names)
    for f in report.features:
        assert f.compared > 0 and f.reference_compared == f.compared, f
        assert f.ok, f
    assert report.mismatches == 0, "\n".join(report.lines())
    assert report.feast["compared"] > 0 and report.feast["mismatched"] == 0
    assert report.drops["spark"] == report.drops["bytewax"] == report.drops["reference"]
    assert report.drops["reference"]["late"] > 0 and report.drops["reference"]["duplicate"] > 0


def test_the_log_reaches_past_every_long_expiry_and_lifetime_values_never_expire() -> None:
    """The parity log really exercises expiry: some 365-day tile leaves before the end, and after the last
    expiry the 90/180/365-day values are back at their defaults while the lifetime ones stay."""
    events = sparse_log(5)
    rules = EventRules(allowed_lateness=timedelta(hours=1))
    ref = Reference(events, rules=rules, views=[catalog.USER_VALUE])
    end = max(e["ingest_time"] for e in events)
    expired_365 = 0
    for key in ref.keys(catalog.USER_VALUE):
        timeline = list(sweep(catalog.USER_VALUE, ref.entity_events(catalog.USER_VALUE, key)))
        t_last, last = timeline[-1]
        assert last["user_orders_365d"] == 0 and last["user_spend_90d"] == 0.0  # every window tile has left
        assert last["user_orders_lifetime"] > 0 and last["user_first_purchase_at_lifetime"] is not None
        assert ref.features(catalog.USER_VALUE, key, t_last) == last
        expired_365 += t_last <= end
    assert expired_365 > 0  # some customer's 365-day tiles all left inside the log: parity compares that row


def test_a_lifetime_state_is_one_running_tile_and_keeps_no_timer() -> None:
    state = ViewState(catalog.USER_VALUE)
    for i, days in enumerate((0, 100, 400)):
        t = START + timedelta(days=days)
        state.advance(t)
        state.add(make_event(EventType.PURCHASE, user_id="c1", event_time=t, ingest_delay=timedelta(0),
                             event_id=f"o{i}", amount=10.0))
    values = state.values()
    assert values["user_orders_lifetime"] == 3 and values["user_orders_365d"] == 2
    assert values["user_repeat_purchase_days_lifetime"] == 2
    assert values["user_purchase_span_days_lifetime"] == 400.0
    assert values["user_mean_interpurchase_days_lifetime"] == 200.0
    # at day 400 the earliest live tile is day 100's in the 365-day window (its 90- and 180-day tiles have left):
    # it is the next timer; the lifetime state is none
    day100 = floor_time(START + timedelta(days=100), timedelta(days=1))
    assert state.next_expiry() == tile_expiry(day100, W365D) == datetime(2026, 6, 12, tzinfo=UTC)
    state.advance(START + timedelta(days=2000))
    assert state.next_expiry() is None and not state.is_empty()  # only the lifetime state is left: it never expires
    left = state.values()
    assert left["user_orders_365d"] == 0 and left["user_orders_lifetime"] == 3
