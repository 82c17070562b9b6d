"""The expected value of each action, from the champions' scores and the action's value and cost.

An action's success probability is its response model, ``base + Σ weights[score] · score`` clipped to
[0, 1] (a discount weighs purchase propensity, a retention email weighs churn); its expected value is
``value · p − cost``. The bandit (:mod:`serving.decision.bandit`) starts from this probability as the prior
mean of its Beta posteriors and learns per context bucket from the outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from serving.decision.config import ActionSpec, PolicyConfig


def success_probability(action: ActionSpec, scores: Mapping[str, float]) -> float:
    """The response model's probability that the action succeeds (missing scores count as 0)."""
    p = action.base + sum(w * float(scores.get(s, 0.0)) for s, w in action.weights.items())
    return min(max(p, 0.0), 1.0)


def expected_value(action: ActionSpec, scores: Mapping[str, float]) -> float:
    return action.value * success_probability(action, scores) - action.cost


def expected_values(config: PolicyConfig, scores: Mapping[str, float], actions: Iterable[str]) -> dict[str, float]:
    """``action -> expected value`` for ``actions``."""
    return {a: expected_value(config.actions[a], scores) for a in actions}


def missing_scores(config: PolicyConfig, scores: Mapping[str, float]) -> tuple[str, ...]:
    """The scores the policy reads and the context does not have (or has out of [0, 1] or NaN)."""
    out = []
    for s in config.scores:
        v = scores.get(s)
        if v is None or not (0.0 <= float(v) <= 1.0):  # NaN fails both comparisons
            out.append(s)
    return tuple(out)
