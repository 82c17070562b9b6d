"""Thompson sampling: posterior updates, buckets, the floor, and probabilities against exact integrals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from serving.decision import EMPTY_STATE, BanditState, PolicyConfig, context_bucket, update
from serving.decision.bandit import choice_probabilities, thompson_probabilities, with_floor


def test_an_update_is_pure_and_adds_one_outcome() -> None:
    s1 = update(EMPTY_STATE, "b", "a", 1.0)
    s2 = s1.update("b", "a", 0.0).update("b", "c", 0.25)
    assert EMPTY_STATE.counts == {} and s1.get("b", "a") == (1.0, 0.0)
    assert s2.get("b", "a") == (1.0, 1.0) and s2.get("b", "c") == (0.25, 0.75) and s2.total == 3.0
    assert BanditState.from_dict(s2.to_dict()) == s2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        update(EMPTY_STATE, "b", "a", 2.0)


def test_buckets_are_trigger_and_score_bands(policy: PolicyConfig) -> None:
    assert context_bucket(policy, "cart_abandoned", {"purchase_propensity": 0.1, "churn": 0.9}) == \
        "trigger=cart_abandoned|purchase_propensity=0|churn=2"
    assert context_bucket(policy, None, {"purchase_propensity": 0.6, "churn": 0.5}) == \
        "trigger=-|purchase_propensity=2|churn=1"  # an edge belongs to the band above
    assert context_bucket(policy, "churn_risk", {"purchase_propensity": 0.0, "churn": 0.79}).endswith("churn=1")


def test_the_floor() -> None:
    p = with_floor(np.array([1.0, 0.0, 0.0, 0.0]), 0.02)
    assert np.allclose(p, [0.94, 0.02, 0.02, 0.02]) and p.sum() == pytest.approx(1.0)
    assert np.allclose(with_floor(np.array([1.0, 0.0]), 0.6), [0.5, 0.5])


def _p_first_wins(a1: float, b1: float, a2: float, b2: float) -> float:
    """P(θ1 > θ2) for independent Betas, by numerical integration."""
    value, _ = integrate.quad(lambda x: stats.beta.pdf(x, a1, b1) * stats.beta.cdf(x, a2, b2), 0, 1)
    return float(value)


@pytest.mark.parametrize(("a1", "b1", "a2", "b2"), [(3, 7, 2, 8), (10, 10, 12, 9), (1, 1, 1, 1), (30, 70, 25, 75)])
def test_thompson_probabilities_match_the_exact_integral(a1: float, b1: float, a2: float, b2: float) -> None:
    draws = 20_000
    p = thompson_probabilities(np.ones(2), np.zeros(2), np.zeros(2), np.array([a1, a2], dtype=float),
                               np.array([b1, b2], dtype=float), draws, np.random.default_rng(1))
    exact = _p_first_wins(a1, b1, a2, b2)
    assert abs(p[0] - exact) < 4 * np.sqrt(exact * (1 - exact) / draws) + 1e-9
    assert p.sum() == pytest.approx(1.0)


def test_values_and_costs_enter_the_sampled_value() -> None:
    # the same posteriors; the second action is worth twice as much per success
    p = thompson_probabilities(np.array([1.0, 2.0]), np.zeros(2), np.zeros(2), np.array([50.0, 50.0]),
                               np.array([50.0, 50.0]), 5000, np.random.default_rng(0))
    assert p[1] == 1.0
    p = thompson_probabilities(np.array([1.0, 2.0]), np.array([0.0, 1.5]), np.zeros(2), np.array([50.0, 50.0]),
                               np.array([50.0, 50.0]), 5000, np.random.default_rng(0))
    assert p[0] == 1.0  # 0.5 against 2 · 0.5 − 1.5 = −0.5


def test_choice_probabilities_keep_the_floor_and_learn(policy: PolicyConfig) -> None:
    acts = ("discount_offer", "push_reminder", "no_action")
    prior = dict.fromkeys(acts, 0.1)
    rng = np.random.default_rng(0)
    p0, _ = choice_probabilities(policy, EMPTY_STATE, "b", acts, prior, {}, True, rng)
    state = EMPTY_STATE
    for _ in range(200):
        state = state.update("b", "push_reminder", 1.0).update("b", "discount_offer", 0.0)
    p1, best = choice_probabilities(policy, state, "b", acts, prior, {}, True, rng)
    assert p1.sum() == pytest.approx(1.0) and p1.min() >= policy.exploration.floor - 1e-12
    assert acts[best] == "push_reminder" and p1[1] > 0.9 > p0[1]
    greedy, _ = choice_probabilities(policy, state, "b", acts, prior, {}, False, rng)
    assert list(greedy) == [0.0, 1.0, 0.0]
