"""Business-rule overrides by priority, and guardrails, as decide() applies them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serving.decision import DecisionContext, History, PolicyConfig, apply_overrides, decide, eligibility, parse_policy

Make = Callable[..., DecisionContext]


def _with_rules(policy: PolicyConfig, *rules: dict[str, Any]) -> PolicyConfig:
    data = policy.model_dump(mode="json")
    data["rules"] = [*data["rules"], *rules]
    return parse_policy(data)


def _over(policy: PolicyConfig, ctx: DecisionContext) -> Any:
    return apply_overrides(policy, ctx, eligibility(policy, ctx, History()).eligible)


def test_never_discount_a_likely_buyer(policy: PolicyConfig, make_ctx: Make) -> None:
    buyer = make_ctx(scores={"purchase_propensity": 0.85, "churn": 0.1})
    d = decide(buyer, policy)
    assert d.probabilities["discount_offer"] == 0.0
    assert d.reasons.rules_applied == ("no_discount_for_likely_buyers",)
    assert d.reasons.ineligible["discount_offer"] == ("suppressed by rule 'no_discount_for_likely_buyers'",)
    other = decide(make_ctx(scores={"purchase_propensity": 0.8, "churn": 0.1}), policy)
    assert other.probabilities["discount_offer"] > 0 and other.reasons.rules_applied == ()


def test_breaking_news_is_forced(policy: PolicyConfig, make_ctx: Make) -> None:
    d = decide(make_ctx(request={"breaking_news": True}), policy)
    assert d.action == "recommendation_slot" and d.propensity == 1.0
    assert sum(d.probabilities.values()) == 1.0
    assert d.reasons.rules_applied == ("promote_breaking_news",)
    assert not decide(make_ctx(request={"breaking_news": False}), policy).reasons.rules_applied


def test_a_promoted_action_still_needs_consent_and_caps(policy: PolicyConfig, make_ctx: Make) -> None:
    d = decide(make_ctx(request={"breaking_news": True}, consents=frozenset({"marketing"})), policy)
    assert d.probabilities["recommendation_slot"] == 0.0 and d.reasons.rules_applied == ()


def test_the_higher_priority_rule_decides_an_action(policy: PolicyConfig, make_ctx: Make) -> None:
    promote = {"name": "discount_abandoned_carts", "effect": "promote", "actions": ["discount_offer"],
               "when": "trigger == 'cart_abandoned'", "priority": 5, "force": True}
    buyer = make_ctx(scores={"purchase_propensity": 0.9, "churn": 0.1})
    low = _with_rules(policy, promote)
    assert decide(buyer, low).probabilities["discount_offer"] == 0.0  # the suppression (100) wins
    assert decide(make_ctx(), low).action == "discount_offer"  # only the promotion applies
    high = _with_rules(policy, {**promote, "priority": 200})
    d = decide(buyer, high)
    assert d.action == "discount_offer" and d.propensity == 1.0
    assert d.reasons.rules_applied == ("discount_abandoned_carts",)


def test_a_boost_raises_the_probability_of_its_action(policy: PolicyConfig, make_ctx: Make) -> None:
    churner = dict(trigger="churn_risk", scores={"purchase_propensity": 0.1, "churn": 0.7})
    boosted = _over(policy, make_ctx(**churner, features={"help_search": 5}))
    assert boosted.boosts == {"help_chat": 0.1} and boosted.rules_applied == ("chat_for_struggling_churners",)
    assert _over(policy, make_ctx(**churner, features={"help_search": 2})).boosts == {}
    p_boost = decide(make_ctx(**churner, features={"help_search": 5}, decision_id="d"), policy).probabilities
    p_plain = decide(make_ctx(**churner, features={"help_search": 2}, decision_id="d"), policy).probabilities
    assert p_boost["help_chat"] > p_plain["help_chat"] + 0.1


def test_a_segment_rule_applies_to_its_segment_only(policy: PolicyConfig, make_ctx: Make) -> None:
    cfg = _with_rules(policy, {"name": "no_push_for_staff", "effect": "suppress", "actions": ["push_reminder"],
                               "segments": ["staff"], "priority": 1})
    assert decide(make_ctx(segments=frozenset({"staff"})), cfg).probabilities["push_reminder"] == 0.0
    assert decide(make_ctx(segments=frozenset({"vip"})), cfg).probabilities["push_reminder"] > 0.0


def test_the_default_action_cannot_be_suppressed(policy: PolicyConfig, make_ctx: Make) -> None:
    cfg = _with_rules(policy, {"name": "always_act", "effect": "suppress", "actions": ["no_action"]})
    assert decide(make_ctx(), cfg).probabilities["no_action"] > 0


def test_the_high_value_guardrail_allows_safe_actions_without_exploration(policy: PolicyConfig,
                                                                          make_ctx: Make) -> None:
    ctx = make_ctx(segments=frozenset({"high_value"}))
    over = _over(policy, ctx)
    assert over.candidates == ("recommendation_slot", "retention_email", "no_action")
    assert over.guardrails == ("high_value_no_experiments",) and over.explore is False
    d = decide(ctx, policy)
    assert d.propensity == 1.0 and sorted(d.probabilities.values())[-1] == 1.0 and not d.explored
    assert d.reasons.guardrails == ("high_value_no_experiments",)
    assert d.reasons.ineligible["discount_offer"] == ("guardrail 'high_value_no_experiments': not allowed",)


def test_guardrails_come_after_forcing_rules(policy: PolicyConfig, make_ctx: Make) -> None:
    cfg = _with_rules(policy, {"name": "force_push", "effect": "promote", "actions": ["push_reminder"],
                               "priority": 1000, "force": True})
    d = decide(make_ctx(segments=frozenset({"high_value"})), cfg)
    assert d.action != "push_reminder" and d.probabilities["push_reminder"] == 0.0


def test_a_cost_guardrail_removes_paid_actions(policy: PolicyConfig, make_ctx: Make) -> None:
    over = _over(policy, make_ctx(features={"marketing_fatigue": True}))
    assert over.candidates == ("discount_offer", "recommendation_slot", "no_action")
    assert over.explore is True
