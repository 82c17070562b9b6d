"""Thompson sampling per context bucket, with Beta posteriors per action and bucket, and a probability floor.

The bandit's state is a value: the outcome counts (successes, failures) per (bucket, action).
:func:`update` returns a new state with one outcome added; persisting it is the caller's business
(:meth:`BanditState.to_dict` / :meth:`BanditState.from_dict` give a JSON form).

For one decision, action ``a``'s success probability is drawn from
``Beta(k·m_a + successes, k·(1 − m_a) + failures)``: the prior is centred on the scoring model's
probability ``m_a`` for the context and worth ``k = prior_strength`` outcomes. The sampled value of ``a``
is ``value_a · θ_a − cost_a + boost_a``; Thompson sampling takes the action of highest sampled value.

:func:`choice_probabilities` gives the whole vector: the Thompson probabilities estimated from
``mc_draws`` joint posterior draws (a seeded generator, so the same decision gives the same vector),
mixed with the uniform distribution so that each of the ``n`` candidates has at least ``floor``:
``p = floor + (1 − n·floor) · p_thompson``. The action is then drawn from that very vector, so the
logged propensity is the exact probability of the logged action.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.decision.config import PolicyConfig

_MIN_PSEUDO = 1e-3  # keeps a Beta parameter positive when the prior mean is 0 or 1


@dataclass(frozen=True)
class BanditState:
    """Outcome counts per (bucket, action): ``(successes, failures)``; fractional rewards add fractions."""

    counts: Mapping[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def get(self, bucket: str, action: str) -> tuple[float, float]:
        return self.counts.get((bucket, action), (0.0, 0.0))

    def update(self, bucket: str, action: str, reward: float) -> BanditState:
        return update(self, bucket, action, reward)

    @property
    def total(self) -> float:
        return float(sum(s + f for s, f in self.counts.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"counts": [[b, a, s, f] for (b, a), (s, f) in sorted(self.counts.items())]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BanditState:
        return cls({(str(b), str(a)): (float(s), float(f)) for b, a, s, f in data.get("counts", [])})


EMPTY_STATE = BanditState()


def update(state: BanditState, bucket: str, action: str, reward: float) -> BanditState:
    """The state after one outcome: ``reward`` in [0, 1] (1: success) adds to successes, ``1 - reward`` to
    failures. The old state is unchanged."""
    if not (0.0 <= reward <= 1.0) or math.isnan(reward):
        raise ValueError(f"a Beta-Bernoulli reward is in [0, 1], got {reward}")
    s, f = state.get(bucket, action)
    counts = dict(state.counts)
    counts[(bucket, action)] = (s + reward, f + 1.0 - reward)
    return BanditState(counts)


def context_bucket(config: PolicyConfig, trigger: str | None, scores: Mapping[str, float]) -> str:
    """The bucket of a context: the trigger (if the policy buckets by trigger) and each score's band."""
    parts: list[str] = []
    if config.exploration.bucket_by_trigger:
        parts.append(f"trigger={trigger or '-'}")
    for band in config.exploration.bands:
        v = float(scores.get(band.score, 0.0))
        parts.append(f"{band.score}={int(np.searchsorted(band.edges, v, side='right'))}")
    return "|".join(parts) or "all"


def beta_parameters(config: PolicyConfig, state: BanditState, bucket: str, actions: Sequence[str],
                    prior_means: Mapping[str, float]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The posterior Beta parameters ``(alpha, beta)`` of each action in the bucket."""
    k = config.exploration.prior_strength
    alpha = np.empty(len(actions))
    beta = np.empty(len(actions))
    for i, a in enumerate(actions):
        s, f = state.get(bucket, a)
        m = prior_means[a]
        alpha[i] = max(k * m, _MIN_PSEUDO) + s
        beta[i] = max(k * (1.0 - m), _MIN_PSEUDO) + f
    return alpha, beta


def thompson_probabilities(values: npt.NDArray[np.float64], costs: npt.NDArray[np.float64],
                           boosts: npt.NDArray[np.float64], alpha: npt.NDArray[np.float64],
                           beta: npt.NDArray[np.float64], draws: int,
                           rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Monte Carlo estimate of P(action i has the highest sampled value) under the posteriors."""
    theta = rng.beta(alpha, beta, size=(draws, len(alpha)))
    sampled = theta * values - costs + boosts
    wins = np.bincount(np.argmax(sampled, axis=1), minlength=len(alpha))
    out: npt.NDArray[np.float64] = wins / float(draws)
    return out


def with_floor(p: npt.NDArray[np.float64], floor: float) -> npt.NDArray[np.float64]:
    """``p`` mixed with the uniform distribution so that every entry is at least ``floor`` (uniform when the
    floor cannot be met)."""
    n = len(p)
    if n == 0:
        return p
    if n * floor >= 1.0:
        return np.full(n, 1.0 / n)
    out: npt.NDArray[np.float64] = floor + (1.0 - n * floor) * p
    return out


def greedy_index(values: npt.NDArray[np.float64], costs: npt.NDArray[np.float64], boosts: npt.NDArray[np.float64],
                 alpha: npt.NDArray[np.float64], beta: npt.NDArray[np.float64]) -> int:
    """The action of highest posterior-mean value (the first on ties)."""
    return int(np.argmax(alpha / (alpha + beta) * values - costs + boosts))


def choice_probabilities(config: PolicyConfig, state: BanditState, bucket: str, actions: Sequence[str],
                         prior_means: Mapping[str, float], boosts: Mapping[str, float], explore: bool,
                         rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], int]:
    """The probability of each of ``actions`` (the final candidates) and the index of the greedy one."""
    specs = [config.actions[a] for a in actions]
    values = np.array([s.value for s in specs], dtype=np.float64)
    costs = np.array([s.cost for s in specs], dtype=np.float64)
    boost = np.array([boosts.get(a, 0.0) for a in actions], dtype=np.float64)
    alpha, beta = beta_parameters(config, state, bucket, actions, prior_means)
    best = greedy_index(values, costs, boost, alpha, beta)
    if len(actions) == 1 or not explore:
        p = np.zeros(len(actions))
        p[best] = 1.0
        return p, best
    p_ts = thompson_probabilities(values, costs, boost, alpha, beta, config.exploration.mc_draws, rng)
    return with_floor(p_ts, config.exploration.floor), best
