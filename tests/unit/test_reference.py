"""The reference oracle against hand-computed answers.

Each case states the expected value from the rules in features/SEMANTICS.md, so a
change to the semantics shows up here first.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from features.catalog import SESSION_ACTIVITY, SESSION_CONTEXT, USER_ACCOUNT, USER_COMMERCE, USER_RECENCY
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import Collision, Drop, EventRules, floor_time, tile_expiry, window_start
from features.spec import W5M, W24H, W30D
from tests.builders import T0, make_event, minutes

RULES = EventRules(allowed_lateness=timedelta(hours=1))


def ref(*events: dict) -> Reference:
    return Reference(events, rules=RULES)


def spend(r: Reference, at: datetime, user: str = "u1") -> float:
    return r.features(USER_COMMERCE, user, at)["user_total_spend_30d"]


def test_cold_start_entity_gets_every_default() -> None:
    r = ref()
    row = r.features(USER_COMMERCE, "nobody", T0)
    assert row == {f.name: f.default for f in USER_COMMERCE.features}
    assert row["user_top3_categories_24h"] == [] and row["user_last_purchase_at_30d"] is None
    odf = r.on_demand(USER_RECENCY, {"user_id": "nobody"}, {"request_time": T0})
    assert odf["user_seconds_since_last_purchase"] == 30 * 86400.0


def test_event_counts_only_after_it_arrived() -> None:
    r = ref(make_event("purchase", amount=20.0, event_time=T0, ingest_delay=timedelta(seconds=30)))
    assert spend(r, T0) == 0.0
    assert spend(r, T0 + timedelta(seconds=29)) == 0.0
    assert spend(r, T0 + timedelta(seconds=30)) == 20.0  # exactly at arrival: included


def test_training_timestamp_exactly_on_an_event() -> None:
    e = make_event("product_view", event_time=T0, ingest_delay=timedelta(0))
    assert ref(e).features(USER_COMMERCE, "u1", T0)["user_product_views_1h"] == 1


def test_window_edges_follow_hop_floor() -> None:
    # 5m window, 1m hop: as of 12:07:30 the window starts at floor(12:07:30, 1m) - 5m = 12:02:00
    at = T0 + minutes(7.5)
    assert window_start(at, W5M) == T0 + minutes(2)
    inside = make_event("page_view", session_id="s1", event_time=T0 + minutes(2), ingest_delay=timedelta(0))
    outside = make_event("page_view", session_id="s1", event_time=T0 + minutes(2) - timedelta(microseconds=1),
                         ingest_delay=timedelta(0))
    r = ref(inside, outside)
    assert r.features(SESSION_ACTIVITY, "s1", at)["session_page_views_5m"] == 1
    # the older event's tile (12:01) expires at 12:01 + 5m + 1m = 12:07
    assert tile_expiry(floor_time(outside["event_time"], W5M.hop), W5M) == T0 + minutes(7)
    assert r.features(SESSION_ACTIVITY, "s1", T0 + minutes(7) - timedelta(microseconds=1))[
        "session_page_views_5m"] == 2


def test_30d_window_spans_month_boundary_with_daily_hop() -> None:
    oct1 = datetime(2026, 10, 1, 23, 59, tzinfo=UTC)
    r = ref(make_event("purchase", amount=10.0, event_time=oct1))
    # tile 2026-10-01 leaves the 30d window at 10-01 + 30d + 1d = 2026-11-01T00:00
    assert tile_expiry(floor_time(oct1, W30D.hop), W30D) == datetime(2026, 11, 1, tzinfo=UTC)
    assert spend(r, datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)) == 10.0
    assert spend(r, datetime(2026, 11, 1, tzinfo=UTC)) == 0.0


def test_midnight_tiles_for_24h_window() -> None:
    e = make_event("product_view", event_time=datetime(2026, 10, 1, 23, 30, tzinfo=UTC))
    r = ref(e)
    at_next_midnight = datetime(2026, 10, 2, 0, 0, tzinfo=UTC)
    assert window_start(at_next_midnight, W24H) == datetime(2026, 10, 1, tzinfo=UTC)
    assert r.features(USER_COMMERCE, "u1", at_next_midnight)["user_product_views_24h"] == 1
    assert r.features(USER_COMMERCE, "u1", datetime(2026, 10, 3, 0, 0, tzinfo=UTC))["user_product_views_24h"] == 0


def test_late_event_beyond_allowed_lateness_never_counts() -> None:
    late = make_event("purchase", amount=99.0, event_time=T0, ingest_delay=timedelta(hours=1, seconds=1))
    on_time = make_event("purchase", amount=1.0, event_time=T0, ingest_delay=timedelta(hours=1))
    r = ref(late, on_time)
    assert r.drops == {Drop.LATE: 1}
    assert spend(r, T0 + timedelta(hours=2)) == 1.0


def test_out_of_order_event_counts_from_its_arrival_in_its_own_tile() -> None:
    first = make_event("page_view", event_time=T0 + minutes(3), ingest_delay=timedelta(seconds=1))
    straggler = make_event("page_view", event_time=T0 + minutes(1), ingest_delay=minutes(3))  # arrives 12:04
    r = ref(first, straggler)
    view = SESSION_ACTIVITY
    assert r.features(view, "s1", T0 + minutes(3.5))["session_page_views_5m"] == 1
    assert r.features(view, "s1", T0 + minutes(4))["session_page_views_5m"] == 2
    # the straggler's tile (12:01) expires at 12:07, the other's (12:03) at 12:09
    assert r.features(view, "s1", T0 + minutes(7))["session_page_views_5m"] == 1
    assert r.features(view, "s1", T0 + minutes(9))["session_page_views_5m"] == 0
    assert T0 + minutes(7) in r.change_points(view, "s1")


def test_out_of_order_event_whose_tile_already_left_the_window_never_counts() -> None:
    e = make_event("page_view", event_time=T0, ingest_delay=minutes(8))  # tile 12:00 expired at 12:06
    r = ref(e)
    assert all(r.features(SESSION_ACTIVITY, "s1", T0 + minutes(m))["session_page_views_5m"] == 0
               for m in (0, 5, 8, 9))
    assert r.features(SESSION_ACTIVITY, "s1", T0 + minutes(9))["session_events_1h"] == 1


def test_duplicates_count_once_first_arrival_wins() -> None:
    a = make_event("purchase", amount=5.0, event_id="dup", ingest_delay=timedelta(seconds=1))
    b = make_event("purchase", amount=5.0, event_id="dup", ingest_delay=timedelta(seconds=40))
    r = ref(b, a)
    assert r.drops == {Drop.DUPLICATE: 1}
    assert spend(r, T0 + timedelta(seconds=2)) == 5.0
    assert spend(r, T0 + minutes(5)) == 5.0


def test_no_consent_events_are_not_profiled() -> None:
    r = ref(make_event("purchase", amount=5.0, consent=False))
    assert r.drops == {Drop.NO_CONSENT: 1}
    assert spend(r, T0 + minutes(1)) == 0.0


def test_seed_features_by_name() -> None:
    t = T0
    events = [
        make_event("login", event_time=t - timedelta(days=20)),
        make_event("login", event_time=t - timedelta(days=15)),
        make_event("login", event_time=t - timedelta(days=10)),
        make_event("login", event_time=t - timedelta(days=2)),
        *[make_event("help_search", event_time=t - timedelta(days=d)) for d in (1, 2, 3, 8)],
        make_event("login", device_id="d2", event_time=t - minutes(30)),
        make_event("product_view", category="shoes", event_time=t - minutes(4)),
        make_event("product_view", category="bags", event_time=t - minutes(3)),
        make_event("product_view", category="bags", event_time=t - minutes(2)),
        make_event("product_view", category="hats", event_time=t - minutes(2)),
        make_event("add_to_cart", quantity=3, event_time=t - minutes(2)),
        make_event("remove_from_cart", quantity=1, event_time=t - minutes(1)),
        make_event("page_view", dwell_seconds=60.0, event_time=t - minutes(1)),
        make_event("purchase", amount=40.0, quantity=1, event_time=t - timedelta(days=29)),
        make_event("purchase", amount=60.0, quantity=1, event_time=t - minutes(1)),
    ]
    r = ref(*events)
    at = t + timedelta(seconds=5)
    u = r.service_row(REGISTRY.service("purchase_propensity_v1"), {"user_id": "u1", "session_id": "s1"}, at)
    assert u["user_total_spend_30d"] == 100.0
    assert u["session_top3_categories_24h"] == ["bags", "hats", "shoes"]
    assert u["user_items_in_cart_not_purchased_24h"] == 1  # 3 added - 1 removed - 1 bought
    assert u["user_help_searches_7d"] == 3
    assert u["user_distinct_devices_24h"] == 2
    # logins: 2 in 7 days; 3 in the 23 days before -> weekly rate 3 * 7/23
    prior = 3 * 7 / 23
    assert u["user_login_freq_change_7d"] == pytest.approx((2 - prior) / prior, rel=1e-12)
    # as of 12:00:05 the 5m window starts at 11:55, so all four product views count:
    # engagement = 4 product views*3 + 1 cart add*10 + 1 page view*2 + 60s dwell/30
    assert u["session_product_views_5m"] == 4
    assert u["session_engagement_score_5m"] == pytest.approx(4 * 3 + 10 + 2 + 2)
    assert u["user_seconds_since_last_purchase"] == pytest.approx(65.0)


def test_cart_idle_seconds_for_abandonment_trigger() -> None:
    r = ref(make_event("add_to_cart", quantity=2, event_time=T0))
    keys = {"session_id": "s1"}
    at = T0 + minutes(15)
    assert r.on_demand(SESSION_CONTEXT, keys, {"request_time": at})["session_cart_idle_seconds"] == 900.0
    r2 = ref(make_event("add_to_cart", quantity=2, event_time=T0),
             make_event("purchase", quantity=2, event_time=T0 + minutes(1)))
    assert r2.on_demand(SESSION_CONTEXT, keys, {"request_time": at})["session_cart_idle_seconds"] == 0.0


def test_failed_feature_use_filter_and_onboarding_max_step() -> None:
    r = ref(
        make_event("feature_use", success=False),
        make_event("feature_use", success=True),
        make_event("onboarding_step", step_index=2, completed=True),
        make_event("onboarding_step", step_index=3, completed=False),
    )
    row = r.features(USER_ACCOUNT, "u1", T0 + minutes(1))
    assert row["user_failed_feature_uses_7d"] == 1 and row["user_feature_uses_7d"] == 2
    assert row["user_onboarding_max_step_30d"] == 2


def test_change_points_cover_every_value_change() -> None:
    events = [
        make_event("page_view", event_time=T0 + minutes(m), ingest_delay=timedelta(seconds=s))
        for m, s in ((0, 1), (2, 200), (3, 5), (40, 2))
    ]
    r = ref(*events)
    points = r.change_points(SESSION_ACTIVITY, "s1")
    # between consecutive change points, values are constant
    for a, b in itertools.pairwise(points):
        mid = a + (b - a) / 2
        assert r.features(SESSION_ACTIVITY, "s1", a) == r.features(SESSION_ACTIVITY, "s1", mid)
        assert r.features(SESSION_ACTIVITY, "s1", b - timedelta(microseconds=1)) == r.features(
            SESSION_ACTIVITY, "s1", a)


def test_naive_as_of_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ref().features(USER_COMMERCE, "u1", datetime(2026, 1, 1))


# ------------------------------------------------------------------------------------------- issue 14: ids
def test_a_retry_of_a_clamped_event_is_a_duplicate_until_the_id_retention() -> None:
    """Login stamped 12:03 arrives at 12:00 (clamped); its retry, stamped 12:03, at 13:02 is not late: a duplicate."""
    noon = T0.replace(hour=12, minute=0, second=0, microsecond=0)
    first = make_event("login", event_id="R", event_time=noon + minutes(3), ingest_delay=-minutes(3))
    assert first["event_time"] == noon == first["ingest_time"]  # validation clamped it
    retry = make_event("login", event_id="R", event_time=noon + minutes(3), ingest_delay=minutes(59))
    r = ref(first, retry)
    assert r.drops == {Drop.DUPLICATE: 1}
    at = noon + minutes(62)
    assert r.features(USER_ACCOUNT, "u1", at)["user_logins_7d"] == 1
    assert r.features(USER_ACCOUNT, "u1", at)["user_last_login_at_30d"] == noon
    assert RULES.id_retention == timedelta(hours=1, minutes=5)
    assert RULES.forget_after(first) == noon + timedelta(hours=1, minutes=5)
    assert retry["ingest_time"] <= RULES.forget_after(first)  # the stream must still remember R then


def test_an_id_under_two_users_counts_for_both_and_is_a_collision_within_the_retention() -> None:
    a = make_event("login", user_id="a", session_id="sa", event_id="X", event_time=T0)
    b = make_event("login", user_id="b", session_id="sb", event_id="X", event_time=T0 + minutes(5))
    r = ref(a, b)
    assert r.drops == {} and r.collisions == {Collision.EVENT_ID: 1}
    assert r.features(USER_ACCOUNT, "b", T0 + minutes(10))["user_logins_7d"] == 1
    later = make_event("login", user_id="c", session_id="sc", event_id="X", event_time=T0 + timedelta(hours=2))
    assert ref(a, later).collisions == {}, "past the first copy's retention the id is free again"
    same_user = make_event("login", user_id="a", session_id="sa", event_id="X", event_time=T0,
                           ingest_delay=minutes(2))
    assert ref(a, same_user, b).collisions == {Collision.EVENT_ID: 1}
    assert ref(a, same_user, b).drops == {Drop.DUPLICATE: 1}


def test_a_non_consented_first_copy_does_not_stand_in_for_a_consented_retry() -> None:
    refused = make_event("purchase", event_id="P", event_time=T0, consent=False)
    retry = make_event("purchase", event_id="P", event_time=T0, ingest_delay=minutes(3))
    r = ref(refused, retry)
    assert r.drops == {Drop.NO_CONSENT: 1}
    assert spend(r, T0 + minutes(5)) == retry["amount"]


def test_a_session_id_of_two_users_belongs_to_the_first_while_its_state_lives() -> None:
    """b's events under a's live session are collisions: not in the session's features, still in b's own."""
    a1 = make_event("add_to_cart", user_id="a", session_id="s1", event_time=T0)
    b1 = make_event("add_to_cart", user_id="b", session_id="s1", event_time=T0 + minutes(3))
    a2 = make_event("page_view", user_id="a", session_id="s1", event_time=T0 + minutes(4))
    r = ref(a1, b1, a2)
    assert r.collisions == {Collision.SESSION_ID: 1}
    assert r.entity_events(SESSION_ACTIVITY, "s1") == [a1, a2]
    assert r.features(USER_COMMERCE, "b", T0 + minutes(5))["user_cart_adds_30d"] == 1
    # once every tile of a's session has expired, the id is free: b owns it, no collision
    expiry = max(tile_expiry(floor_time(a1["event_time"], a.window.hop), a.window)
                 for a in SESSION_ACTIVITY.aggregations if a.accepts(a1))
    free = make_event("add_to_cart", user_id="b", session_id="s1", event_time=expiry + minutes(1))
    r = ref(a1, free)
    assert r.collisions == {} and r.entity_events(SESSION_ACTIVITY, "s1") == [a1, free]
