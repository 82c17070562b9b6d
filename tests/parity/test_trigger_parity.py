"""Trigger parity: the trigger reference, Spark's trigger history and the Bytewax stream's trigger log fire the same
``(key, trigger, fire_time)`` on adversarial logs (late, out-of-order, duplicate, non-consented events across a
midnight and a month boundary) and on the seeds' scenarios, whatever the batching and the workers; the stream fires
an absence trigger on the wall clock with no event after it, and its trigger state survives a snapshot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSource, cluster_main, run_main
from pyspark.sql import SparkSession

from conf.settings import Settings
from features.events import EventType as E
from features.registry import REGISTRY
from features.semantics import Admission
from features.trigger_catalog import TRIGGERS
from features.trigger_reference import TriggerReference
from features.triggers import Fire
from pipelines.ingest.eventlog import records_to_table, write_parquet
from pipelines.spark.triggers import SparkTriggers, read_fire_table
from pipelines.stream.engine import BytewaxEngine
from pipelines.stream.logic import StepPlan, UserLogic
from pipelines.stream.triggers import (
    TriggerLogic,
    fire_set,
    read_trigger_lines,
    read_triggers,
    routed_triggers,
    trigger_router,
    user_triggers,
)
from pipelines.stream.types import StreamClock, StreamOutputs
from tests.adversarial import adversarial_log
from tests.builders import T0, make_event, minutes
from tests.conftest import settings_in
from tests.parity.test_stream_reference import RULES, in_arrival_order, replay_items
from validation.parity import compare_triggers

FireKey = tuple[str, str, datetime]
ONE_US = timedelta(microseconds=1)


def scenarios() -> list[dict[str, Any]]:
    """The seeds' moments, each once: a cart abandoned; a burst of activity (engagement above 70); a churner
    (logins every day for three weeks, then none for a week and four help searches); an onboarding step left
    half done; a product viewed three times without a purchase; a first purchase."""
    out: list[dict[str, Any]] = []
    t = T0 + timedelta(days=27)
    out += [make_event(E.ADD_TO_CART, user_id="cart", session_id="cart-s1", event_time=t + minutes(i), quantity=1)
            for i in range(3)]
    out += [make_event(E.ADD_TO_CART, user_id="busy", session_id="busy-s1", event_time=t + timedelta(seconds=20 * i),
                       quantity=1) for i in range(9)]
    out += [make_event(E.LOGIN, user_id="churner", session_id=f"churner-d{d}", event_time=T0 + timedelta(days=d))
            for d in range(21)]
    out += [make_event(E.HELP_SEARCH, user_id="churner", session_id="churner-late",
                       event_time=t + timedelta(hours=12 + h)) for h in range(4)]
    out += [make_event(E.PRODUCT_VIEW, user_id="looker", session_id="looker-s1", event_time=t + minutes(2 * i),
                       product_id="p1") for i in range(3)]
    out += [make_event(E.ONBOARDING_STEP, user_id="new", session_id="new-s1", event_time=t, completed=False),
            make_event(E.PURCHASE, user_id="new", session_id="new-s1", event_time=t + minutes(3))]
    return out


LOGS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "adversarial-1": lambda: adversarial_log(1, users=3, events=400),
    "adversarial-2": lambda: adversarial_log(2, users=4, events=400),
    "adversarial-3": lambda: adversarial_log(3, users=3, events=400),
    "scenarios": scenarios,
}


def parity_end(events: list[dict[str, Any]]) -> datetime:
    last = max(e["ingest_time"] for e in events)
    return datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)


def stream_fires(settings: Settings, events: list[dict[str, Any]], *, until: datetime | None, workers: int = 1,
                 batch_size: int = 50, clock: StreamClock | None = None,
                 extra: list[Any] | None = None) -> list[Fire]:
    """The stream's trigger log after replaying ``events`` (every line is one firing: none is written twice)."""
    builder = BytewaxEngine(settings, clock=clock or StreamClock(until=until),
                            outputs=StreamOutputs.from_settings(settings, memory=[]))
    flow = builder.dataflow(TestingSource([*replay_items(events), *(extra or [])], batch_size=batch_size))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    fires = read_triggers(settings.trigger_log_path)
    assert len(read_trigger_lines(settings.trigger_log_path)) == len(fires), "a firing was written twice"
    return fires


class Built:
    """One log through the reference and Spark (up to the midnight after its last arrival)."""

    def __init__(self, root: Path, spark: SparkSession, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.end = parity_end(events)
        self.until = self.end - ONE_US
        self.reference = TriggerReference(events, rules=RULES, until=self.until)
        self.settings = settings_in(root)
        write_parquet(records_to_table(events), self.settings.events_path)
        self.build = SparkTriggers(self.settings, spark=spark).build(None, self.end)
        self.spark = {f.identity for f in read_fire_table(self.settings)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, spark: SparkSession) -> Callable[[str], Built]:
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            cache[name] = Built(tmp_path_factory.mktemp(f"triggers-{name}"), spark, LOGS[name]())
        return cache[name]

    return get


def assert_same(name: str, want: set[FireKey], engines: dict[str, set[FireKey]]) -> None:
    report = compare_triggers(want, engines, [t.name for t in TRIGGERS])
    bad = [t for t in report if not t.ok]
    assert not bad, f"{name}: " + "; ".join(f"{t.trigger} missing {t.missing} extra {t.extra} {t.examples}"
                                            for t in bad)


@pytest.mark.parametrize("name", sorted(LOGS))
def test_reference_spark_and_bytewax_fire_the_same_triggers(built: Callable[[str], Built], tmp_path: Path,
                                                            name: str) -> None:
    b = built(name)
    want = b.reference.fire_set()
    assert want, "the log fires nothing: the comparison would be vacuous"
    assert b.build.fires == b.reference.counts()
    streamed = fire_set(stream_fires(settings_in(tmp_path / "one"), b.events, until=b.until))
    two = fire_set(stream_fires(settings_in(tmp_path / "two"), b.events, until=b.until, workers=2, batch_size=7))
    assert_same(name, want, {"spark": b.spark, "bytewax": streamed, "bytewax-2-workers": two})


def test_the_logs_fire_every_trigger(built: Callable[[str], Built]) -> None:
    fired = Counter(f.trigger for name in LOGS for f in built(name).reference.fires)
    assert set(fired) == {t.name for t in TRIGGERS}, f"never fired: {sorted({t.name for t in TRIGGERS} - set(fired))}"


def test_tiny_batches_and_no_until_fire_the_same(tmp_path: Path) -> None:
    """One event a batch, timers run on until nothing is due at the end of input (``until=None``)."""
    events = adversarial_log(4, users=3, events=300)
    want = TriggerReference(events, rules=RULES).fire_set()
    got = fire_set(stream_fires(settings_in(tmp_path), events, until=None, batch_size=1))
    assert_same("adversarial-4", want, {"bytewax": got})


def test_spark_intervals_add_up_to_one_full_run(built: Callable[[str], Built], spark: SparkSession) -> None:
    b = built("scenarios")
    mid = b.end - timedelta(days=1)
    builder = SparkTriggers(b.settings, spark=spark)
    first = builder.build(None, mid)
    second = builder.build(mid, b.end)
    assert first.fires and second.fires
    assert {f.identity for f in read_fire_table(b.settings)} == b.spark
    rerun = builder.build(mid, b.end)
    assert rerun.fires == second.fires and {f.identity for f in read_fire_table(b.settings)} == b.spark


def test_an_abandoned_cart_fires_on_the_wall_clock_without_another_event(tmp_settings: Settings) -> None:
    """Live: one add-to-cart and nothing after it, no end-of-input flush: the 15-minute deadline fires by itself,
    within the grace of its wall time, stamped with its data time."""
    event = make_event(E.ADD_TO_CART, user_id="u1", session_id="s1", event_time=T0, ingest_delay=timedelta(0))
    deadline = T0 + minutes(15)
    grace = timedelta(milliseconds=200)
    offset = datetime.now(UTC) + timedelta(seconds=1.5) - deadline - grace  # due in 1.5 s of wall time
    clock = StreamClock(offset=offset, grace=grace, flush_at_eof=False)
    fires = stream_fires(tmp_settings, [event], until=None, clock=clock,
                         extra=[TestingSource.PAUSE(timedelta(seconds=4))])
    cart = [f for f in fires if f.trigger == "cart_abandoned_15m"]
    assert [(f.key, f.fire_time, f.user_id, f.cause) for f in cart] == [("s1", deadline, "u1", event["event_id"])]
    assert {f.trigger for f in fires} == {"cart_abandoned_15m", "session_inactive_5m"}


def _split(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events = in_arrival_order(events)
    return events[: len(events) // 2], events[len(events) // 2:]


def test_user_trigger_state_survives_a_snapshot_and_continues_identically() -> None:
    views = tuple(v for v in REGISTRY.views if v.entity.join_key == "user_id")
    plan = StepPlan(own=tuple((v, v.event_types()) for v in views), forward=False,
                    views={v.name: v for v in views}, rules=RULES, clock=StreamClock(), triggers=user_triggers(views))
    events = [e for e in scenarios() if e["user_id"] in ("churner", "new")]
    users = sorted({e["user_id"] for e in events})
    want = TriggerReference(events, rules=RULES, triggers=plan.triggers).fire_set()

    def fires_of(out: list[Any]) -> set[FireKey]:
        return {f.identity for x in out if hasattr(x, "fires") for f in x.fires}

    got: set[FireKey] = set()
    for user in users:
        head, tail = _split([e for e in events if e["user_id"] == user])
        logic = UserLogic(plan, None)
        got |= fires_of(logic.on_batch([(f"log:{i}", e) for i, e in enumerate(head)])[0])
        resumed = UserLogic(plan, logic.snapshot().freeze())
        got |= fires_of(resumed.on_batch([(f"log:{i}", e) for i, e in enumerate(tail)])[0])
        got |= fires_of(resumed.on_eof()[0])
    assert want and got == want


def test_session_trigger_state_survives_a_snapshot_and_continues_identically() -> None:
    absence = routed_triggers()
    events = adversarial_log(5, users=3, events=300)
    want = TriggerReference(events, rules=RULES, triggers=absence).fire_set()
    admissions: dict[str, Admission] = {}  # admission is per user, as the users step keeps it
    admitted = [e for e in in_arrival_order(events)
                if admissions.setdefault(e["user_id"], Admission(RULES)).admit(e) is None]
    route = trigger_router(absence)
    by_key: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for e in admitted:
        for key, item in route(e):
            by_key.setdefault(key, []).append(item)
    got: set[FireKey] = set()
    clock = StreamClock()
    for items in by_key.values():
        head, tail = items[: len(items) // 2], items[len(items) // 2:]
        logic = TriggerLogic(absence, clock, RULES.allowed_lateness, None)
        out = logic.on_batch(head)[0] if head else []
        resumed = TriggerLogic(absence, clock, RULES.allowed_lateness, logic.snapshot().freeze() if head else None)
        out += resumed.on_batch(tail)[0] + resumed.on_eof()[0]
        got |= {f.identity for x in out for f in x.fires}
    assert want and got == want


def test_the_comparison_sees_a_missing_and_an_extra_firing() -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    want = {("s1", "cart_abandoned_15m", t), ("s2", "cart_abandoned_15m", t)}
    got = {("s1", "cart_abandoned_15m", t), ("s1", "cart_abandoned_15m", t + ONE_US)}
    (report,) = compare_triggers(want, {"bytewax": got}, ["cart_abandoned_15m"])
    assert (report.compared, report.fired, report.missing, report.extra) == (
        2, {"bytewax": 2}, {"bytewax": 1}, {"bytewax": 1})
    assert not report.ok and report.mismatched == 2
