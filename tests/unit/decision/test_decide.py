"""decide(): one pure function; every answer carries the action, the vector it was drawn from and the reasons."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import numpy as np

from serving.decision import (
    EMPTY_STATE,
    DecisionContext,
    History,
    PolicyConfig,
    decide,
    probability_vector,
    record_outcome,
)
from serving.decision.config import Degraded

Make = Callable[..., DecisionContext]


def test_an_answer_carries_everything(policy: PolicyConfig, make_ctx: Make) -> None:
    d = decide(make_ctx(), policy)
    assert len(d.decision_id) == 32 and d.user_id == "user-a" and d.at == make_ctx().now
    assert d.action in policy.actions and d.channel == policy.actions[d.action].channel
    assert d.scores == {"purchase_propensity": 0.5, "churn": 0.2}
    assert set(d.expected_values) == {"discount_offer", "recommendation_slot", "retention_email", "push_reminder",
                                      "no_action"}
    assert d.expected_values["discount_offer"] == 0.8 * (0.05 + 0.45 * 0.5)  # value · (base + w · score) − cost
    assert d.policy_version == policy.version
    assert d.model_versions == {"purchase_propensity": "3", "churn": "5"}
    assert d.feature_ages == {"user_commerce": 12.0, "session_activity": None}
    assert d.reasons.trigger == "cart_abandoned" and d.reasons.consent == ("marketing", "personalization")
    assert d.bucket == "trigger=cart_abandoned|purchase_propensity=1|churn=0"
    assert not d.holdout and not d.degraded
    assert set(d.probabilities) == set(policy.actions) and abs(sum(d.probabilities.values()) - 1) < 1e-12
    assert d.propensity == d.probabilities[d.action] > 0
    json.dumps(d.log_row())  # the decision log's row is plain JSON


def test_the_same_inputs_give_the_same_decision(policy: PolicyConfig, make_ctx: Make) -> None:
    assert decide(make_ctx(), policy) == decide(make_ctx(), policy)
    ids = {decide(make_ctx(decision_id=f"d{i}"), policy).decision_id for i in range(3)}
    assert ids == {"d0", "d1", "d2"}


def test_ineligible_actions_have_probability_zero_and_the_rest_the_floor(policy: PolicyConfig,
                                                                        make_ctx: Make) -> None:
    p = decide(make_ctx(), policy).probabilities
    assert p["onboarding_tooltip"] == p["help_chat"] == 0.0
    assert min(v for a, v in p.items() if a not in ("onboarding_tooltip", "help_chat")) >= policy.exploration.floor


def test_the_action_is_drawn_from_the_logged_vector(policy: PolicyConfig, make_ctx: Make) -> None:
    cfg = policy.model_copy(update={"exploration": policy.exploration.model_copy(update={"mc_draws": 200})})
    n = 3000
    decisions = [decide(make_ctx(decision_id=f"d{i}"), cfg) for i in range(n)]
    counts = Counter(d.action for d in decisions)
    mean = {a: float(np.mean([d.probabilities[a] for d in decisions])) for a in cfg.actions}
    for a, p in mean.items():
        assert abs(counts[a] / n - p) < 4 * np.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9, (a, counts[a] / n, p)


def test_the_propensity_is_the_final_policys_after_caps(policy: PolicyConfig, make_ctx: Make) -> None:
    ctx = make_ctx(decision_id="x")
    first = decide(ctx, policy)
    h = History((first.past(),) * 2)  # the same action twice in the last 24 hours: capped
    later = make_ctx(decision_id="y", now=ctx.now + timedelta(hours=7))
    second = decide(later, policy, history=h)
    assert second.probabilities[first.action] == 0.0
    assert second.reasons.caps_hit and abs(sum(second.probabilities.values()) - 1) < 1e-12


def test_a_user_without_consent_gets_nothing_personalized(policy: PolicyConfig, make_ctx: Make) -> None:
    d = decide(make_ctx(consents=frozenset()), policy)
    assert d.action == "no_action" and d.propensity == 1.0 and d.reasons.consent == ()
    assert all("consent" in " ".join(v) for a, v in d.reasons.ineligible.items()
               if a not in ("onboarding_tooltip", "help_chat"))


def test_degraded_features_get_the_default_action(policy: PolicyConfig, make_ctx: Make) -> None:
    d = decide(make_ctx(degraded=True), policy)
    assert d.degraded and d.action == "no_action" and d.propensity == 1.0
    assert "degraded: the default action" in d.reasons.notes


def test_a_missing_score_is_degraded(policy: PolicyConfig, make_ctx: Make) -> None:
    d = decide(make_ctx(scores={"purchase_propensity": 0.5}), policy)
    assert d.degraded and d.action == "no_action" and "missing scores ['churn']" in d.reasons.notes
    nan = decide(make_ctx(scores={"purchase_propensity": float("nan"), "churn": 0.2}), policy)
    assert nan.degraded


def test_degraded_with_defaults_carries_on(policy: PolicyConfig, make_ctx: Make) -> None:
    cfg = policy.model_copy(update={"degraded": Degraded(mode="defaults", score_defaults={"churn": 0.9})})
    d = decide(make_ctx(scores={"purchase_propensity": 0.5}), cfg)
    assert d.degraded and d.bucket.endswith("churn=2") and d.probabilities["discount_offer"] > 0
    assert d.expected_values["retention_email"] == 1.0 * (0.03 + 0.25 * 0.9) - 0.02


def test_a_cooling_trigger_answers_no_action_with_the_reason(policy: PolicyConfig, make_ctx: Make) -> None:
    first = decide(make_ctx(decision_id="a"), policy)
    d = decide(make_ctx(decision_id="b", now=first.at + timedelta(hours=1)), policy, history=History((first.past(),)))
    assert d.action == "no_action" and d.propensity == 1.0 and d.reasons.cooldown


def test_probability_vector_is_decides(policy: PolicyConfig, make_ctx: Make) -> None:
    assert probability_vector(make_ctx(), policy) == decide(make_ctx(), policy).probabilities


def test_an_outcome_updates_the_decisions_bucket_and_action(policy: PolicyConfig, make_ctx: Make) -> None:
    d = decide(make_ctx(), policy)
    state = record_outcome(EMPTY_STATE, d, 1.0)
    assert state.counts == {(d.bucket, d.action): (1.0, 0.0)} and EMPTY_STATE.counts == {}
    after = decide(make_ctx(), policy, state)
    assert after.decision_id == d.decision_id and after.probabilities != d.probabilities  # the state is an input
