"""The trigger semantics (features/SEMANTICS.md, "Triggers"), rule by rule, on small hand-built logs.

Every expectation is checked twice: against the per-key state machine (:func:`features.triggers.sweep_triggers`
over the admitted events) and against the independent reference (:class:`features.trigger_reference.
TriggerReference`), so a rule holds in both or the test fails.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest

from features.catalog import SESSION, SESSION_ACTIVITY, USER, USER_ACCOUNT
from features.events import EventType as E
from features.expr import col, lit
from features.semantics import EventRules, admitted
from features.trigger_catalog import (
    CART_3_ITEMS,
    CART_ABANDONED_15M,
    CHURN_RISK,
    ENGAGEMENT_ABOVE_70,
    ONBOARDING_STEP_STALLED_1H,
    SESSION_INACTIVE_5M,
    TRIGGERS,
    trigger,
)
from features.trigger_reference import TriggerReference
from features.triggers import (
    AbsenceTrigger,
    ConditionTrigger,
    Fire,
    KeyTriggers,
    Trigger,
    TriggerStepper,
    all_of,
    any_of,
    check_triggers,
    ge,
    gt,
    le,
    lt,
    sweep_triggers,
    truthy,
)
from tests.builders import T0, make_event, minutes

RULES = EventRules(allowed_lateness=timedelta(hours=1))
S = timedelta(seconds=1)


def ev(etype: E, at: timedelta, *, arrive: timedelta | None = None, **kw: Any) -> dict[str, Any]:
    """An event at ``T0 + at``, arriving at ``T0 + arrive`` (default: one second later)."""
    delay = S if arrive is None else arrive - at
    return make_event(etype, event_time=T0 + at, ingest_delay=delay, **kw)


def fires(trig: Trigger, events: Iterable[dict[str, Any]], until: datetime | None = None) -> list[datetime]:
    """The fire times (all keys), after checking the state machine and the reference agree on every firing."""
    events = list(events)
    by_key: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for e in admitted(events, RULES):
        k = e.get(trig.key_field)
        if k is not None:
            by_key[k].append(e)
    machine = {f.identity for k, es in by_key.items() for f in sweep_triggers(trig, k, es, until=until)}
    oracle = TriggerReference(events, rules=RULES, triggers=[trig], until=until).fire_set()
    assert machine == oracle
    return sorted(t for _, _, t in machine)


def cart(at: float, **kw: Any) -> dict[str, Any]:
    return ev(E.ADD_TO_CART, minutes(at), **kw)


# ------------------------------------------------------------------------------------- absence
def test_an_add_to_cart_without_checkout_fires_at_its_deadline_in_data_time() -> None:
    assert fires(CART_ABANDONED_15M, [cart(0)]) == [T0 + minutes(15)]


def test_a_new_start_restarts_the_clock() -> None:
    assert fires(CART_ABANDONED_15M, [cart(0), cart(10)]) == [T0 + minutes(25)]


@pytest.mark.parametrize("cancel", [E.CHECKOUT_START, E.PURCHASE])
def test_a_cancel_disarms_and_a_later_start_rearms(cancel: E) -> None:
    assert fires(CART_ABANDONED_15M, [cart(0), ev(cancel, minutes(5))]) == []
    assert fires(CART_ABANDONED_15M, [cart(0), ev(cancel, minutes(5)), cart(6)]) == [T0 + minutes(21)]


def test_an_older_cancel_arriving_late_does_not_disarm_a_newer_start() -> None:
    newer_start = cart(10)
    older_checkout = ev(E.CHECKOUT_START, minutes(5), arrive=minutes(12))
    assert fires(CART_ABANDONED_15M, [newer_start, older_checkout]) == [T0 + minutes(25)]


def test_an_older_start_arriving_late_does_not_pull_the_deadline_earlier() -> None:
    assert fires(CART_ABANDONED_15M, [cart(10), cart(0, arrive=minutes(11))]) == [T0 + minutes(25)]


def test_an_older_start_arriving_after_a_newer_cancel_stays_cancelled() -> None:
    log = [cart(0), ev(E.PURCHASE, minutes(5)), cart(3, arrive=minutes(8))]
    assert fires(CART_ABANDONED_15M, log) == []


def test_a_cancel_arriving_by_the_fire_time_counts_and_one_after_it_does_not() -> None:
    at_deadline = ev(E.CHECKOUT_START, minutes(14), arrive=minutes(15))
    assert fires(CART_ABANDONED_15M, [cart(0, arrive=S), at_deadline]) == []
    after = ev(E.CHECKOUT_START, minutes(14), arrive=minutes(15) + S)
    assert fires(CART_ABANDONED_15M, [cart(0, arrive=S), after]) == [T0 + minutes(15)]


def test_a_restart_arriving_exactly_at_the_deadline_supersedes_it() -> None:
    restart = ev(E.ADD_TO_CART, minutes(14), arrive=minutes(15))
    assert fires(CART_ABANDONED_15M, [cart(0), restart]) == [T0 + minutes(29)]


def test_a_start_arriving_after_its_own_deadline_fires_at_its_arrival() -> None:
    assert fires(CART_ABANDONED_15M, [cart(0, arrive=minutes(20))]) == [T0 + minutes(20)]
    # unless a later cancel arrived first: by then the cart was checked out
    checkout = ev(E.CHECKOUT_START, minutes(5), arrive=minutes(6))
    assert fires(CART_ABANDONED_15M, [cart(0, arrive=minutes(20)), checkout]) == []


def test_late_events_never_arm_or_cancel() -> None:
    assert fires(CART_ABANDONED_15M, [cart(0, arrive=minutes(61))]) == []
    two_hours = AbsenceTrigger(name="cart_2h", entity=SESSION, start_types=frozenset({E.ADD_TO_CART}),
                               cancel_types=frozenset({E.PURCHASE}), within=timedelta(hours=2), description="x")
    late_purchase = ev(E.PURCHASE, minutes(10), arrive=minutes(71))  # 61 minutes late
    assert fires(two_hours, [cart(0), late_purchase]) == [T0 + timedelta(hours=2)]
    in_time = ev(E.PURCHASE, minutes(10), arrive=minutes(70))  # exactly the allowed lateness: counts
    assert fires(two_hours, [cart(0), in_time]) == []


def test_duplicates_never_rearm() -> None:
    first = cart(0)
    retry = dict(first, ingest_time=T0 + minutes(20))  # the same event id, resent after the deadline
    assert fires(CART_ABANDONED_15M, [first, retry]) == [T0 + minutes(15)]


def test_events_without_analytics_consent_never_arm_or_cancel() -> None:
    assert fires(CART_ABANDONED_15M, [cart(0, consent=False)]) == []
    silent_checkout = ev(E.CHECKOUT_START, minutes(5), consent=False)
    assert fires(CART_ABANDONED_15M, [cart(0), silent_checkout]) == [T0 + minutes(15)]


def test_ties_in_event_time_are_ordered_by_arrival_then_event_id() -> None:
    start_first = [cart(0, arrive=S), ev(E.CHECKOUT_START, minutes(0), arrive=2 * S)]
    assert fires(CART_ABANDONED_15M, start_first) == []
    cancel_first = [ev(E.CHECKOUT_START, minutes(0), arrive=S), cart(0, arrive=2 * S)]
    assert fires(CART_ABANDONED_15M, cancel_first) == [T0 + minutes(15)]
    start_id_last = [cart(0, event_id="b"), ev(E.CHECKOUT_START, minutes(0), event_id="a")]
    assert fires(CART_ABANDONED_15M, start_id_last) == [T0 + minutes(15)]
    start_id_first = [cart(0, event_id="a"), ev(E.CHECKOUT_START, minutes(0), event_id="b")]
    assert fires(CART_ABANDONED_15M, start_id_first) == []


def test_absence_is_per_key() -> None:
    log = [cart(0, session_id="s1"), cart(1, session_id="s2"), ev(E.PURCHASE, minutes(2), session_id="s2")]
    got = TriggerReference(log, rules=RULES, triggers=[CART_ABANDONED_15M]).fire_set()
    assert got == {("s1", "cart_abandoned_15m", T0 + minutes(15))}
    assert fires(CART_ABANDONED_15M, [*log, cart(0, session_id=None)]) == [T0 + minutes(15)]  # no session: no key


def test_each_arming_fires_at_most_once_and_the_cooldown_spends_armings() -> None:
    log = [cart(0), cart(20, arrive=minutes(20)), cart(40), cart(80)]
    assert fires(CART_ABANDONED_15M, log) == [T0 + minutes(m) for m in (15, 35, 55, 95)]
    cooled = AbsenceTrigger(name="cart_cooled", entity=SESSION, start_types=frozenset({E.ADD_TO_CART}),
                            within=minutes(15), cooldown=minutes(30), description="x")
    assert fires(cooled, log) == [T0 + minutes(15), T0 + minutes(55), T0 + minutes(95)]


def test_inactivity_fires_after_five_quiet_minutes() -> None:
    log = [ev(E.PAGE_VIEW, minutes(0)), ev(E.SCROLL, minutes(3)), ev(E.SEARCH, minutes(10))]
    assert fires(SESSION_INACTIVE_5M, log) == [T0 + minutes(8), T0 + minutes(15)]


def test_an_onboarding_step_not_completed_within_an_hour() -> None:
    left = ev(E.ONBOARDING_STEP, minutes(0), step_index=2, completed=False)
    done = ev(E.ONBOARDING_STEP, minutes(30), step_index=2, completed=True)
    assert fires(ONBOARDING_STEP_STALLED_1H, [left]) == [T0 + timedelta(hours=1)]
    assert fires(ONBOARDING_STEP_STALLED_1H, [left, done]) == []
    assert fires(ONBOARDING_STEP_STALLED_1H, [done]) == []  # a completed step arms nothing


def test_until_bounds_the_history() -> None:
    assert fires(CART_ABANDONED_15M, [cart(0)], until=T0 + minutes(15) - S) == []
    assert fires(CART_ABANDONED_15M, [cart(0)], until=T0 + minutes(15)) == [T0 + minutes(15)]


# ------------------------------------------------------------------------------------- the stepper's hooks
def test_next_deadline_and_advance_to_are_the_live_timer() -> None:
    s = TriggerStepper(CART_ABANDONED_15M, "s1")
    assert s.apply(cart(0)) == [] and s.next_deadline() == T0 + minutes(15)
    assert s.advance_to(T0 + minutes(15) - timedelta(microseconds=1)) == []
    [f] = s.advance_to(T0 + minutes(15))
    assert (f.trigger, f.key, f.fire_time, f.user_id) == ("cart_abandoned_15m", "s1", T0 + minutes(15), "u1")
    assert s.next_deadline() is None and s.advance_to(T0 + minutes(99)) == []
    s.apply(ev(E.ADD_TO_CART, minutes(30)))
    s.apply(ev(E.PURCHASE, minutes(31)))
    assert s.next_deadline() is None


def test_an_event_behind_the_clock_counts_from_the_clock() -> None:
    s = TriggerStepper(CART_ABANDONED_15M, "s1")
    s.apply(cart(0))
    assert len(s.advance_to(T0 + minutes(15))) == 1  # a live timer ran ahead of an event in flight
    s.apply(ev(E.ADD_TO_CART, minutes(14), arrive=minutes(14) + S))
    assert s.state.regressions == 1
    assert s.next_deadline() == T0 + minutes(29)


def test_snapshots_are_plain_data_and_restore_mid_stream() -> None:
    log = sorted([cart(0), ev(E.PURCHASE, minutes(2)), cart(5), cart(7, arrive=minutes(30)), cart(40)],
                 key=lambda e: (e["ingest_time"], e["event_id"]))
    whole = TriggerStepper(CART_ABANDONED_15M, "s1")
    want = [f for e in log for f in whole.apply(e)] + whole.advance_to(T0 + timedelta(hours=2))
    for cut in range(len(log) + 1):
        first = TriggerStepper(CART_ABANDONED_15M, "s1")
        got = [f for e in log[:cut] for f in first.apply(e)]
        saved = json.loads(json.dumps(first.snapshot()))
        second = TriggerStepper.restore(CART_ABANDONED_15M, "s1", saved)
        got += [f for e in log[cut:] for f in second.apply(e)] + second.advance_to(T0 + timedelta(hours=2))
        assert got == want
    # cart(5) fires at 20; cart(7), newer, arrives after that and re-arms: at its arrival, 30
    assert [f.fire_time for f in want] == [T0 + minutes(20), T0 + minutes(30), T0 + minutes(55)]


def test_key_triggers_route_events_and_rows_and_snapshot() -> None:
    kt = KeyTriggers([CART_ABANDONED_15M, SESSION_INACTIVE_5M, CART_3_ITEMS], "s1")
    assert kt.apply(cart(0)) == []
    assert kt.next_deadline() == T0 + minutes(5)
    row = dict(SESSION_ACTIVITY.finalize_row({}), session_items_in_cart_not_purchased_24h=3)
    assert kt.observe(SESSION_ACTIVITY.name, T0 + S, row) == []  # decided once the time has passed
    assert kt.next_deadline() == T0 + S
    restored = KeyTriggers([CART_ABANDONED_15M, SESSION_INACTIVE_5M, CART_3_ITEMS], "s1",
                           json.loads(json.dumps(kt.snapshot())))
    names = [(f.trigger, f.fire_time) for f in restored.advance_to(T0 + minutes(20))]
    assert names == [("cart_3_items", T0 + S), ("session_inactive_5m", T0 + minutes(5)),
                     ("cart_abandoned_15m", T0 + minutes(15))]
    restored.forget(T0 + minutes(20), RULES.allowed_lateness)  # the start is remembered for late older ones
    assert set(restored.steppers) == {"cart_3_items", "cart_abandoned_15m", "session_inactive_5m"}
    restored.forget(T0 + minutes(62), RULES.allowed_lateness)  # any older start would now be late
    assert set(restored.steppers) == {"cart_3_items"}  # the condition still holds
    restored.observe(SESSION_ACTIVITY.name, T0 + minutes(62), SESSION_ACTIVITY.finalize_row({}))
    restored.advance_to(T0 + minutes(62))
    restored.forget(T0 + minutes(62), RULES.allowed_lateness)
    assert restored.is_empty()


def test_fire_ids_are_deterministic_per_identity() -> None:
    a = Fire(trigger="t", key="k", fire_time=T0)
    assert a.fire_id == Fire(trigger="t", key="k", fire_time=T0, user_id="u9").fire_id
    assert a.fire_id != Fire(trigger="t", key="k", fire_time=T0 + S).fire_id
    assert a.identity == ("k", "t", T0)


# ------------------------------------------------------------------------------------- conditions
def test_a_condition_fires_on_each_false_to_true_edge_only() -> None:
    log = [cart(0), cart(1), cart(2), cart(3),  # true from the third unit on: one firing
           ev(E.REMOVE_FROM_CART, minutes(4), quantity=2), cart(5)]  # false, then true again
    assert fires(CART_3_ITEMS, log) == [T0 + minutes(2) + S, T0 + minutes(5) + S]


def test_a_condition_goes_false_at_a_tile_expiry_and_can_fire_again() -> None:
    three = [cart(0, quantity=3)]
    again = [cart(26 * 60, quantity=3)]  # after the 24h window emptied (an expiry change point)
    assert fires(CART_3_ITEMS, three + again) == [T0 + S, T0 + timedelta(hours=26) + S]
    assert fires(CART_3_ITEMS, [cart(0, quantity=3), cart(60, quantity=3)]) == [T0 + S]


def _burst(at: float) -> list[dict[str, Any]]:
    """Engagement of about 78 in the 5-minute window: 4 carts, 6 product views, a full scroll and a full video."""
    return ([cart(at + i * 0.1) for i in range(4)] + [ev(E.PRODUCT_VIEW, minutes(at + 0.5 + i * 0.1))
                                                        for i in range(6)]
            + [ev(E.SCROLL, minutes(at + 1.2), scroll_pct=100.0), ev(E.VIDEO_PROGRESS, minutes(at + 1.3),
                                                                       progress_pct=100.0)])


def test_an_activity_score_above_70_and_its_cooldown() -> None:
    assert fires(ENGAGEMENT_ABOVE_70, _burst(0)) == [T0 + minutes(1.3) + S]
    # the score falls when the 5-minute tiles expire; a second edge within 30 minutes is suppressed, a third
    # after it fires
    log = _burst(0) + _burst(10) + _burst(40)
    assert fires(ENGAGEMENT_ABOVE_70, log) == [T0 + minutes(1.3) + S, T0 + minutes(41.3) + S]


def _logins(days_ago: Iterable[float]) -> list[dict[str, Any]]:
    return [ev(E.LOGIN, timedelta(days=-d), session_id=None) for d in days_ago]


def _help(n: int) -> list[dict[str, Any]]:
    return [ev(E.HELP_SEARCH, minutes(i), session_id=None) for i in range(n)]


def test_the_churn_risk_rule() -> None:
    thinning = _logins(range(10, 30)) + _logins([2])  # 20 logins in the 23 days before the week, 1 in it
    # change = (1 - 20 x 7/23) / (20 x 7/23) = -0.84 < -0.5, and the fourth help search makes it > 3
    assert fires(CHURN_RISK, thinning + _help(4)) == [T0 + minutes(3) + S]
    assert fires(CHURN_RISK, thinning + _help(3)) == []  # help_search > 3, not >= 3
    steady = _logins(range(1, 30))  # a login a day: no decrease
    assert fires(CHURN_RISK, steady + _help(6), until=T0 + timedelta(days=1)) == []
    # with no login after T0, the 7-day count thins as its tiles expire: the rule turns true at an expiry, in
    # data time, with no event (the help searches are still in their 7 days)
    [at] = fires(CHURN_RISK, steady + _help(6))
    assert T0 + timedelta(days=2) < at < T0 + timedelta(days=7) and at.minute == 0 and at.second == 0


def test_condition_rows_at_one_time_are_decided_once_the_time_has_passed() -> None:
    s = TriggerStepper(CART_3_ITEMS, "s1")
    empty = SESSION_ACTIVITY.finalize_row({})
    full = dict(empty, session_items_in_cart_not_purchased_24h=3)
    assert s.observe(T0, full) == []  # a tie split across two batches writes two rows at one time:
    assert s.observe(T0, empty) == []  # the second replaces the first
    assert s.advance_to(T0) == [] and s.next_deadline() is None
    s.observe(T0 + S, full)
    [f] = s.observe(T0 + 2 * S, full)
    assert f.fire_time == T0 + S
    assert s.advance_to(T0 + 2 * S) == []  # still true: no edge


# ------------------------------------------------------------------------------------- specs
def test_condition_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="not a feature of view"):
        ConditionTrigger(name="x", view=USER_ACCOUNT, when=gt(col("session_cart_adds_5m"), 1), description="x")
    with pytest.raises(ValueError, match="not numeric or boolean"):
        ConditionTrigger(name="x", view=SESSION_ACTIVITY, when=gt(col("session_last_page_24h"), 1), description="x")
    with pytest.raises(ValueError, match="cold-start"):
        ConditionTrigger(name="x", view=USER_ACCOUNT, when=ge(col("user_logins_7d"), 0), description="x")
    with pytest.raises(ValueError, match="not a boolean"):
        ConditionTrigger(name="x", view=USER_ACCOUNT, when=col("user_logins_7d") - 1, description="x")
    with pytest.raises(ValueError, match="reads no feature"):
        ConditionTrigger(name="x", view=USER_ACCOUNT, when=lit(False), description="x")


def test_absence_specs_are_validated() -> None:
    base: dict[str, Any] = {"name": "x", "entity": USER, "start_types": frozenset({E.LOGIN}), "description": "x"}
    with pytest.raises(ValueError, match="within must be positive"):
        AbsenceTrigger(**base, within=timedelta(0))
    with pytest.raises(ValueError, match="not event fields"):
        AbsenceTrigger(**base, within=minutes(1), start_where=gt(col("user_logins_7d"), 1))
    with pytest.raises(ValueError, match="at least one start"):
        AbsenceTrigger(**{**base, "start_types": frozenset()}, within=minutes(1))
    with pytest.raises(ValueError, match="cooldown"):
        AbsenceTrigger(**base, within=minutes(1), cooldown=-minutes(1))
    with pytest.raises(TypeError):
        TriggerStepper(CART_3_ITEMS, "s1").apply(cart(0))
    with pytest.raises(TypeError):
        TriggerStepper(CART_ABANDONED_15M, "s1").observe(T0, {})


def test_the_catalogue_registers_the_seeds_triggers_by_name() -> None:
    assert trigger("churn_risk") is CHURN_RISK
    with pytest.raises(KeyError, match="no trigger named"):
        trigger("nope")
    with pytest.raises(ValueError, match="declared twice"):
        check_triggers([CHURN_RISK, CHURN_RISK])
    names = {t.name for t in TRIGGERS}
    assert {"cart_abandoned_15m", "session_inactive_5m", "page_dwell_2m", "onboarding_step_stalled_1h",
            "cart_3_items", "churn_risk", "engagement_above_70", "repeat_views_no_purchase",
            "feature_used_3x", "first_purchase"} == names


def test_comparison_helpers_follow_null_semantics() -> None:
    row = {"a": 2, "b": None}
    assert [truthy(x.evaluate(row)) for x in (gt(col("a"), 1), lt(col("a"), 3), ge(col("a"), 2), le(col("a"), 2))] \
        == [True, True, True, True]
    assert gt(col("b"), 1).evaluate(row) is None and not truthy(None) and not truthy(float("nan"))
    assert all_of(gt(col("a"), 1), gt(col("b"), 1)).evaluate(row) is False
    assert any_of(gt(col("b"), 1), gt(col("a"), 1)).evaluate(row) is True
    assert any_of(gt(col("b"), 1)).fn(row) is False
    with pytest.raises(ValueError):
        all_of()
