"""The shared tiled state machine against the independent reference."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from features.state import ViewState, sweep
from tests.adversarial import adversarial_log
from tests.builders import T0, make_event, minutes
from tests.compare import same

RULES = EventRules(allowed_lateness=timedelta(hours=1))



@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("view", REGISTRY.views, ids=lambda v: v.name)
def test_sweep_equals_reference_at_every_change_point(seed: int, view: Any) -> None:
    ref = Reference(adversarial_log(seed), rules=RULES)
    keys = ref.keys(view)
    assert keys
    for key in keys:
        rows = list(sweep(view, ref.entity_events(view, key)))
        assert [t for t, _ in rows] == ref.change_points(view, key)
        for t, values in rows:
            expected = ref.features(view, key, t)
            bad = {n: (values[n], expected[n]) for n in expected if not same(values[n], expected[n])}
            assert not bad, f"{view.name} {key} at {t}: {bad}"


def test_expiry_with_no_new_events_is_emitted_and_ends_empty() -> None:
    view = REGISTRY.view("session_activity")
    rows = list(sweep(view, [make_event("page_view", event_time=T0, ingest_delay=timedelta(0))]))
    times = [t for t, _ in rows]
    assert times[0] == T0 and T0 + minutes(6) in times
    assert rows[-1][1] == {f.name: f.default for f in view.features}


def test_sweep_until_bounds_the_timers() -> None:
    view = REGISTRY.view("user_commerce")
    rows = list(sweep(view, [make_event("purchase", event_time=T0)], until=T0 + timedelta(days=2)))
    assert rows[-1][0] <= T0 + timedelta(days=2)
    assert rows[-1][1]["user_total_spend_30d"] == 50.0


def test_state_drops_tiles_and_reports_next_timer() -> None:
    view = REGISTRY.view("session_activity")
    st = ViewState(view)
    assert st.add(make_event("page_view", event_time=T0, ingest_delay=timedelta(0)))
    assert st.next_expiry() == T0 + minutes(6)
    assert st.values()["session_page_views_5m"] == 1
    assert st.advance(T0 + minutes(6))
    assert st.values()["session_page_views_5m"] == 0
    assert not st.is_empty()  # the 1h and 24h tiles are still live


def test_adversarial_log_really_is_adversarial() -> None:
    ref = Reference(adversarial_log(1), rules=RULES)
    assert set(ref.drops) == {"late", "duplicate", "no_consent"}
    assert all(n > 0 for n in ref.drops.values())
    events = ref.events
    out_of_order = sum(1 for a, b in itertools.pairwise(events) if b["event_time"] < a["event_time"])
    assert out_of_order > 20
    assert len({e["event_time"].date() for e in events}) == 2  # 31 Oct and 1 Nov


@pytest.mark.parametrize("view", REGISTRY.views, ids=lambda v: v.name)
def test_restored_snapshot_continues_like_the_original(view: Any) -> None:
    """A checkpoint (the stream's recovery snapshot) taken mid-stream resumes with the same values."""
    import pickle

    ref = Reference(adversarial_log(4), rules=RULES)
    key = ref.keys(view)[0]
    events = list(ref.entity_events(view, key))
    half = len(events) // 2
    original = ViewState(view)
    for e in events[:half]:
        original.advance(e["ingest_time"])
        original.add(e)
    original.values()  # the cached row must not leak into the snapshot's meaning
    restored = ViewState.restore(view, pickle.loads(pickle.dumps(original.snapshot())))
    assert restored.values() == original.values()
    for e in events[half:]:
        for st in (original, restored):
            st.advance(e["ingest_time"])
            st.add(e)
        assert restored.values() == original.values()
    assert restored.next_expiry() == original.next_expiry()
