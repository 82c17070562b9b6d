"""The trigger reference on a simulated log, and the state machines driven as an engine drives them: any
arrival-respecting batching (with data-time wake-ups between batches) gives the reference's fire set."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import pytest

from features.catalog import SESSION_ACTIVITY, USER_ACCOUNT
from features.expr import col
from features.semantics import EventRules, admitted
from features.spec import FeatureView
from features.state import Stepper, ViewState, owner_of
from features.trigger_catalog import TRIGGERS
from features.trigger_reference import TriggerReference, narrowed, trigger_history
from features.triggers import ConditionTrigger, Fire, KeyTriggers, Trigger, sweep_triggers
from pipelines.ingest.simulator import SimulationConfig, simulate
from tests.adversarial import adversarial_log

RULES = EventRules(allowed_lateness=timedelta(hours=1))
US = timedelta(microseconds=1)


@cache
def simulated() -> list[dict[str, Any]]:
    cfg = SimulationConfig(seed=5, users=80, days=10, block_users=80, allowed_lateness=RULES.allowed_lateness)
    events: list[dict[str, Any]] = simulate(cfg).events.to_pylist()
    return events


@cache
def simulated_reference() -> TriggerReference:
    return TriggerReference(simulated(), rules=RULES)


def per_key_sweeps(events: Sequence[dict[str, Any]], triggers: Sequence[Trigger]) -> set[tuple[str, str, datetime]]:
    """Each trigger swept per key over the key's admitted events in arrival order (the Spark engine's way)."""
    adm = list(admitted(events, RULES))
    out: set[tuple[str, str, datetime]] = set()
    for trig in triggers:
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in adm:
            if e.get(trig.key_field) is not None:
                by_key[e[trig.key_field]].append(dict(e))
        for key, evs in by_key.items():
            out |= {f.identity for f in sweep_triggers(trig, key, evs)}
    return out


def _timed(t: datetime, row: tuple[Any, ...]) -> tuple[datetime, tuple[Any, ...]]:
    return t, row


def drive_in_batches(events: Sequence[dict[str, Any]], triggers: Sequence[Trigger],
                     rng: random.Random) -> set[tuple[str, str, datetime]]:
    """As a stream drives the steppers: admitted events in arrival order cut into random batches (ties may be
    split); per key one :class:`KeyTriggers` and one view :class:`Stepper` per condition view; between batches
    a data-time wake-up at a random time before the next arrival (expiries, then ``advance_to``)."""
    adm = [dict(e) for e in admitted(events, RULES)]
    fields = sorted({t.key_field for t in triggers})
    views: dict[str, list[FeatureView]] = defaultdict(list)
    for t in triggers:
        if isinstance(t, ConditionTrigger) and t.view not in views[t.key_field]:
            views[t.key_field].append(t.view)
    keyed: dict[tuple[str, str], KeyTriggers] = {}
    steppers: dict[tuple[str, str, str], Stepper] = {}
    fired: list[Fire] = []

    def key_triggers(f: str, k: str) -> KeyTriggers:
        kt = keyed.get((f, k))
        if kt is None:
            kt = keyed[(f, k)] = KeyTriggers([t for t in triggers if t.key_field == f], k)
        return kt

    def rows_to(kt: KeyTriggers, view: FeatureView, rows: list[tuple[datetime, tuple[Any, ...]]]) -> None:
        for t, row in rows:
            fired.extend(kt.observe(view.name, t, row))

    i = 0
    while i < len(adm):
        n = rng.choice([1, 1, 2, 3, 7, 20, 100])
        batch, i = adm[i:i + n], i + n
        pending: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for e in batch:
            for f in fields:
                k = e.get(f)
                if k is None:
                    continue
                fired.extend(key_triggers(f, k).apply(e))
                for v in views[f]:
                    if e["event_type"] in v.event_types():
                        pending[(f, k, v.name)].append(e)
        for (f, k, vname), evs in pending.items():
            view = next(v for v in views[f] if v.name == vname)
            st = steppers.get((f, k, vname))
            if st is None:
                st = steppers[(f, k, vname)] = Stepper(ViewState(view), _timed, owner_of(view))
            rows: list[tuple[datetime, tuple[Any, ...]]] = []
            st.fold(evs, rows)
            rows_to(key_triggers(f, k), view, rows)
        if i < len(adm) and rng.random() < 0.7:  # a wake-up strictly before the next arrival
            last, nxt = batch[-1]["ingest_time"], adm[i]["ingest_time"]
            if nxt > last:
                wake = last + (nxt - last - US) * rng.random() if rng.random() < 0.5 else nxt - US
                for (f, k, vname), st in steppers.items():
                    rows = []
                    st.expire(wake, rows)
                    rows_to(key_triggers(f, k), next(v for v in views[f] if v.name == vname), rows)
                for kt in keyed.values():
                    fired.extend(kt.advance_to(wake))
    for (f, k, vname), st in steppers.items():  # the end of input: data time runs on until every window empties
        rows = []
        st.expire(None, rows)
        rows_to(key_triggers(f, k), next(v for v in views[f] if v.name == vname), rows)
    end = datetime.max.replace(tzinfo=adm[0]["ingest_time"].tzinfo) if adm else None
    if end is not None:
        for kt in keyed.values():
            fired.extend(kt.advance_to(end))
    identities = [f.identity for f in fired]
    assert len(identities) == len(set(identities)), "a firing was emitted twice"
    return set(identities)


# ------------------------------------------------------------------------------------- simulated log
def test_the_seeds_triggers_fire_plausibly_on_a_simulated_log() -> None:
    ref = simulated_reference()
    counts = ref.counts()
    adm = list(admitted(simulated(), RULES))
    sessions = {e["session_id"] for e in adm if e.get("session_id") is not None}
    carts = sum(e["event_type"] == "add_to_cart" for e in adm)
    users = {e["user_id"] for e in adm}
    stalled = {e["user_id"] for e in adm if e["event_type"] == "onboarding_step" and e["completed"] is False}
    buyers = {e["user_id"] for e in adm if e["event_type"] == "purchase"}
    # every session's last event is followed by five quiet minutes; more gaps inside sessions
    assert len(sessions) <= counts["session_inactive_5m"] < len(adm) / 3
    assert 0 < counts["cart_abandoned_15m"] < carts
    assert 0 < counts["page_dwell_2m"] < sum(e["event_type"] == "page_view" for e in adm)
    assert 0 < counts["onboarding_step_stalled_1h"] <= len(stalled)
    assert counts["first_purchase"] == len(buyers)  # a lifetime count: one firing per buyer, ever
    assert 0 < counts["churn_risk"] < len(users) / 10
    assert 0 < counts["cart_3_items"] < counts["cart_abandoned_15m"]
    assert counts["repeat_views_no_purchase"] > 0
    assert 0 < counts["feature_used_3x"] < len(users) * 3
    # the simulator's 5-minute engagement scores peak just under the seed's 70: it never fires on this log
    assert counts["engagement_above_70"] == 0
    for f in ref.fires:
        assert f.fire_time.tzinfo is not None
    assert sum(counts.values()) == len(ref.fire_set()) == len(ref.fires)


def test_the_state_machines_swept_per_key_match_the_reference_on_the_simulated_log() -> None:
    assert per_key_sweeps(simulated(), TRIGGERS) == simulated_reference().fire_set()


def test_any_batching_of_the_simulated_log_gives_the_reference_fire_set() -> None:
    assert drive_in_batches(simulated(), TRIGGERS, random.Random(1)) == simulated_reference().fire_set()


@pytest.mark.parametrize("seed", range(6))
def test_any_batching_of_an_adversarial_log_gives_the_reference_fire_set(seed: int) -> None:
    log = adversarial_log(seed, users=3, events=300)
    want = trigger_history(log, rules=RULES)
    assert want, "the adversarial log fires some trigger"
    assert per_key_sweeps(log, TRIGGERS) == want
    for batching in range(3):
        assert drive_in_batches(log, TRIGGERS, random.Random(seed * 10 + batching)) == want


def test_until_keeps_the_firings_up_to_it() -> None:
    ref = simulated_reference()
    cut = min(f.fire_time for f in ref.fires) + timedelta(days=2)
    bounded = TriggerReference(simulated(), rules=RULES, until=cut)
    assert bounded.fire_set() == {f for f in ref.fire_set() if f[2] <= cut}
    assert bounded.drops == ref.drops


def test_narrowing_a_view_keeps_what_the_condition_reads() -> None:
    v = narrowed(USER_ACCOUNT, col("user_login_freq_change_7d").columns())
    assert v.name == USER_ACCOUNT.name
    assert [a.name for a in v.aggregations] == ["user_logins_7d", "user_logins_30d_hourly"]
    assert [d.name for d in v.derived] == ["user_login_freq_change_7d"]
    assert narrowed(SESSION_ACTIVITY, ["session_cart_adds_5m"]).feature_names == ("session_cart_adds_5m",)
