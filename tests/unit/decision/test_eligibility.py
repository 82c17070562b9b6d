"""Eligibility: consent, frequency caps, quiet hours in the user's zone, trigger cool-downs, candidates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta

import pytest

from serving.decision import DecisionContext, History, PastDecision, PolicyConfig, eligibility
from serving.decision.eligibility import in_window

Make = Callable[..., DecisionContext]
NOON = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def test_with_every_consent_the_trigger_candidates_are_eligible(policy: PolicyConfig, make_ctx: Make) -> None:
    e = eligibility(policy, make_ctx(), History())
    assert e.eligible == ("discount_offer", "recommendation_slot", "retention_email", "push_reminder", "no_action")
    assert e.ineligible == {"onboarding_tooltip": ("not a candidate of trigger 'cart_abandoned'",),
                            "help_chat": ("not a candidate of trigger 'cart_abandoned'",)}
    assert not e.caps_hit and not e.quiet_hours and not e.cooldown


def test_no_consent_leaves_only_no_action(policy: PolicyConfig, make_ctx: Make) -> None:
    e = eligibility(policy, make_ctx(consents=frozenset()), History())
    assert e.eligible == ("no_action",)
    assert "no personalization consent" in e.ineligible["discount_offer"]
    assert "no marketing consent" in e.ineligible["retention_email"]
    assert "no marketing consent" in e.ineligible["push_reminder"]


def test_marketing_consent_alone_allows_email_and_push_but_nothing_on_site(policy: PolicyConfig,
                                                                             make_ctx: Make) -> None:
    e = eligibility(policy, make_ctx(consents=frozenset({"marketing"})), History())
    assert e.eligible == ("retention_email", "push_reminder", "no_action")


def test_personalization_consent_alone_allows_on_site_actions_only(policy: PolicyConfig, make_ctx: Make) -> None:
    e = eligibility(policy, make_ctx(consents=frozenset({"personalization"})), History())
    assert e.eligible == ("discount_offer", "recommendation_slot", "no_action")


def _past(action: str, channel: str, ago: timedelta, trigger: str | None = None, holdout: bool = False
          ) -> PastDecision:
    return PastDecision(at=NOON - ago, action=action, channel=channel, trigger=trigger,  # type: ignore[arg-type]
                        holdout=holdout)


def test_the_per_action_cap_counts_the_window(policy: PolicyConfig, make_ctx: Make) -> None:
    twice = History((_past("recommendation_slot", "onsite", timedelta(hours=1)),
                     _past("recommendation_slot", "onsite", timedelta(hours=23))))
    e = eligibility(policy, make_ctx(), twice)
    assert "recommendation_slot" not in e.eligible
    assert e.caps_hit == ("action:*:2/86400s",)
    assert e.ineligible["recommendation_slot"] == ("cap action:*:2/86400s",)
    once_in_window = History((_past("recommendation_slot", "onsite", timedelta(hours=1)),
                              _past("recommendation_slot", "onsite", timedelta(hours=25))))
    assert "recommendation_slot" in eligibility(policy, make_ctx(), once_in_window).eligible


def test_the_window_includes_its_start(policy: PolicyConfig, make_ctx: Make) -> None:
    edge = History((_past("recommendation_slot", "onsite", timedelta(hours=1)),
                    _past("recommendation_slot", "onsite", timedelta(hours=24))))
    assert "recommendation_slot" not in eligibility(policy, make_ctx(), edge).eligible


def test_a_targeted_cap_applies_to_its_action_only(policy: PolicyConfig, make_ctx: Make) -> None:
    h = History((_past("discount_offer", "onsite", timedelta(days=6)),))
    e = eligibility(policy, make_ctx(), h)
    assert "discount_offer" not in e.eligible and e.caps_hit == ("action:discount_offer:1/604800s",)
    assert "recommendation_slot" in e.eligible


def test_the_per_channel_cap_counts_every_action_on_the_channel(policy: PolicyConfig, make_ctx: Make) -> None:
    h = History((_past("another_email", "email", timedelta(hours=2)),))
    e = eligibility(policy, make_ctx(), h)
    assert "retention_email" not in e.eligible and e.caps_hit == ("channel:email:1/86400s",)
    pushes = History(tuple(_past(f"push_{i}", "push", timedelta(hours=i + 1)) for i in range(3)))
    assert "push_reminder" not in eligibility(policy, make_ctx(), pushes).eligible
    two_pushes = History(pushes.decisions[:2])
    assert "push_reminder" in eligibility(policy, make_ctx(), two_pushes).eligible


def test_the_onsite_channel_cap(policy: PolicyConfig, make_ctx: Make) -> None:
    six = History(tuple(_past(f"slot_{i}", "onsite", timedelta(hours=i + 1)) for i in range(6)))
    e = eligibility(policy, make_ctx(), six)
    assert e.caps_hit == ("channel:onsite:6/86400s",)
    assert e.eligible == ("retention_email", "push_reminder", "no_action")
    assert "discount_offer" in eligibility(policy, make_ctx(), History(six.decisions[:5])).eligible


def test_holdout_and_no_action_decisions_deliver_nothing_and_are_not_counted(policy: PolicyConfig,
                                                                             make_ctx: Make) -> None:
    h = History((_past("retention_email", "email", timedelta(hours=1), holdout=True),
                 _past("no_action", "none", timedelta(hours=1)), _past("no_action", "none", timedelta(hours=2))))
    e = eligibility(policy, make_ctx(), h)
    assert "retention_email" in e.eligible and "no_action" in e.eligible and not e.caps_hit


@pytest.mark.parametrize(("utc", "zone", "quiet"), [
    (datetime(2026, 10, 1, 20, 30, tzinfo=UTC), "Europe/Berlin", True),  # 22:30 CEST
    (datetime(2026, 10, 1, 20, 30, tzinfo=UTC), "UTC", False),
    (datetime(2026, 10, 1, 20, 30, tzinfo=UTC), "America/New_York", False),  # 16:30 EDT
    (datetime(2026, 10, 2, 2, 0, tzinfo=UTC), "America/New_York", True),  # 22:00 EDT
    (datetime(2026, 10, 1, 6, 0, tzinfo=UTC), "Europe/Berlin", False),  # 08:00 CEST: the end
    (datetime(2026, 10, 1, 21, 0, tzinfo=UTC), "UTC", True),  # the start is quiet
    (datetime(2026, 10, 1, 8, 0, tzinfo=UTC), "UTC", False),  # the end is not
    (datetime(2026, 12, 1, 7, 30, tzinfo=UTC), "Europe/Berlin", False),  # 08:30 CET in winter
    (datetime(2026, 12, 1, 6, 30, tzinfo=UTC), "Europe/Berlin", True),  # 07:30 CET in winter
])
def test_quiet_hours_are_in_the_users_time_zone(policy: PolicyConfig, make_ctx: Make, utc: datetime, zone: str,
                                                quiet: bool) -> None:
    e = eligibility(policy, make_ctx(now=utc, timezone=zone), History())
    assert e.quiet_hours is quiet
    assert ("retention_email" in e.eligible) is not quiet and ("push_reminder" in e.eligible) is not quiet
    assert "discount_offer" in e.eligible  # on-site actions have no quiet hours


def test_berlin_at_0759_local_is_quiet(policy: PolicyConfig, make_ctx: Make) -> None:
    e = eligibility(policy, make_ctx(now=datetime(2026, 10, 1, 5, 59, tzinfo=UTC), timezone="Europe/Berlin"), History())
    assert e.quiet_hours is True  # 07:59 CEST, before the 08:00 end


def test_an_unknown_zone_falls_back_to_the_default_and_says_so(policy: PolicyConfig, make_ctx: Make) -> None:
    e = eligibility(policy, make_ctx(now=datetime(2026, 10, 1, 22, tzinfo=UTC), timezone="Nowhere/Land"), History())
    assert e.quiet_hours is True  # 22:00 in the default zone, UTC
    assert e.notes == ("unknown time zone 'Nowhere/Land': used UTC",)


def test_the_quiet_window_wraps_midnight() -> None:
    assert in_window(time(23, 0), time(21, 0), time(8, 0))
    assert in_window(time(3, 0), time(21, 0), time(8, 0))
    assert not in_window(time(12, 0), time(21, 0), time(8, 0))
    assert in_window(time(13, 0), time(12, 0), time(14, 0)) and not in_window(time(14, 0), time(12, 0), time(14, 0))
    assert not in_window(time(3, 0), time(5, 0), time(5, 0))  # an empty window


def test_a_trigger_in_its_cool_down_leads_to_no_action(policy: PolicyConfig, make_ctx: Make) -> None:
    fired = History((_past("discount_offer", "onsite", timedelta(hours=5), trigger="cart_abandoned"),))
    e = eligibility(policy, make_ctx(), fired)
    assert e.cooldown and e.eligible == ("no_action",)
    assert "trigger 'cart_abandoned' in cool-down" in e.ineligible["push_reminder"]
    later = History((_past("discount_offer", "onsite", timedelta(hours=7), trigger="cart_abandoned"),))
    assert not eligibility(policy, make_ctx(), later).cooldown  # the cool-down of cart_abandoned is 6h


def test_a_holdout_firing_starts_the_cool_down_too(policy: PolicyConfig, make_ctx: Make) -> None:
    fired = History((_past("no_action", "none", timedelta(hours=1), trigger="cart_abandoned", holdout=True),))
    assert eligibility(policy, make_ctx(), fired).cooldown


def test_another_trigger_and_the_default_cool_down(policy: PolicyConfig, make_ctx: Make) -> None:
    other = History((_past("retention_email", "email", timedelta(minutes=5), trigger="churn_risk"),))
    assert not eligibility(policy, make_ctx(), other).cooldown
    undeclared = History((_past("push_reminder", "push", timedelta(minutes=59), trigger="price_drop"),))
    assert eligibility(policy, make_ctx(trigger="price_drop"), undeclared).cooldown  # default_cooldown 1h
    old = History((_past("push_reminder", "push", timedelta(minutes=61), trigger="price_drop"),))
    assert not eligibility(policy, make_ctx(trigger="price_drop"), old).cooldown


def test_without_a_trigger_every_action_is_a_candidate(policy: PolicyConfig, make_ctx: Make) -> None:
    e = eligibility(policy, make_ctx(trigger=None), History())
    assert e.eligible == policy.action_names


def test_contexts_and_history_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DecisionContext(user_id="u", now=datetime(2026, 10, 1, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        PastDecision(at=datetime(2026, 10, 1, 12), action="a", channel="push")
