"""A simulator that responds to actions: users with a latent state, a response model, and policies to run.

Each simulated user belongs to one latent **archetype** and shows only what the decision layer sees: a
trigger (usually the archetype's own, sometimes another's), noisy champion scores drawn from the
archetype's Beta distributions, a help-search count, consents and a time zone. The **response model** gives
the probability that the user succeeds (buys, stays, completes the step) after each action:

* high-intent **cart abandoners** convert far more often with a discount; the other actions help a little;
* **early churners** (early in their decline) are won back by a retention email, and somewhat by proactive
  help; a discount does little. **Late churners** (far into it, with a higher churn score and more help
  searches) barely respond to the email any more: only proactive help still does something;
* **low-intent** visitors barely respond to anything; a content slot helps most.

A run takes a list of users and a policy: the policy chooses (the decision layer's :func:`decide` through
:class:`DecisionLayerPolicy`, which holds the bandit state the way a store would), the simulator draws the
outcome, the policy learns from it. Because the simulator knows each user's response probabilities, a run
also records the *expected* reward of what was chosen, the oracle's, and the true uplift over the default
action: the truth the bandit, off-policy and holdout estimates are checked against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt

from serving.decision.bandit import EMPTY_STATE, BanditState, update
from serving.decision.config import Consent, PolicyConfig
from serving.decision.context import EMPTY_HISTORY, DecisionContext
from serving.decision.eligibility import eligibility
from serving.decision.policy import decide
from serving.decision.rules import apply_overrides

Array = npt.NDArray[np.float64]
ALL_CONSENTS: frozenset[Consent] = frozenset({"personalization", "marketing"})


@dataclass(frozen=True)
class Archetype:
    """A latent user state: how common it is, what it looks like, how it responds."""

    name: str
    share: float
    trigger: str
    purchase_propensity: tuple[float, float]  # Beta parameters of the observed score
    churn: tuple[float, float]
    help_search: float  # Poisson mean of the help-search count
    response: Mapping[str, float]  # action -> P(success); actions not listed respond like the baseline
    baseline: float  # P(success) with no action


CART_ABANDONER = Archetype(
    name="cart_abandoner", share=0.35, trigger="cart_abandoned", purchase_propensity=(6.0, 4.0), churn=(1.5, 8.0),
    help_search=0.5, baseline=0.25,
    response={"discount_offer": 0.60, "recommendation_slot": 0.30, "retention_email": 0.27, "push_reminder": 0.35,
              "onboarding_tooltip": 0.25, "help_chat": 0.28})
EARLY_CHURNER = Archetype(
    name="early_churner", share=0.20, trigger="churn_risk", purchase_propensity=(2.0, 6.0), churn=(7.0, 3.0),
    help_search=4.0, baseline=0.05,
    response={"discount_offer": 0.10, "recommendation_slot": 0.07, "retention_email": 0.30, "push_reminder": 0.08,
              "onboarding_tooltip": 0.05, "help_chat": 0.20})
LATE_CHURNER = Archetype(
    name="late_churner", share=0.10, trigger="churn_risk", purchase_propensity=(1.0, 9.0), churn=(12.0, 1.5),
    help_search=6.0, baseline=0.02,
    response={"discount_offer": 0.04, "recommendation_slot": 0.03, "retention_email": 0.06, "push_reminder": 0.03,
              "onboarding_tooltip": 0.02, "help_chat": 0.14})
LOW_INTENT = Archetype(
    name="low_intent", share=0.35, trigger="long_dwell", purchase_propensity=(1.5, 8.0), churn=(2.0, 5.0),
    help_search=0.3, baseline=0.03,
    response={"discount_offer": 0.05, "recommendation_slot": 0.08, "retention_email": 0.04, "push_reminder": 0.05,
              "onboarding_tooltip": 0.04, "help_chat": 0.03})
ARCHETYPES: tuple[Archetype, ...] = (CART_ABANDONER, EARLY_CHURNER, LATE_CHURNER, LOW_INTENT)


@dataclass(frozen=True)
class SimUser:
    user_id: str
    archetype: Archetype
    context: DecisionContext

    def success_probability(self, action: str, default_action: str = "no_action") -> float:
        if action == default_action:
            return self.archetype.baseline
        return self.archetype.response.get(action, self.archetype.baseline)


@dataclass(frozen=True)
class World:
    """Who the users are and when they arrive (one decision per user, ``step`` apart from ``start``)."""

    archetypes: tuple[Archetype, ...] = ARCHETYPES
    trigger_noise: float = 0.15  # the share of users who fire another archetype's trigger
    consent_rate: float = 1.0  # the share with personalization and marketing consent
    high_value_rate: float = 0.0  # the share in the high_value segment
    timezones: tuple[str, ...] = ("UTC", "Europe/Berlin", "America/New_York")
    start: datetime = datetime(2026, 10, 1, 12, tzinfo=UTC)
    step: timedelta = timedelta(minutes=1)
    model_versions: Mapping[str, str] = field(default_factory=lambda: {"purchase_propensity": "sim",
                                                                       "churn": "sim"})

    def users(self, n: int, seed: int) -> list[SimUser]:
        """``n`` users, reproducible from ``seed``."""
        rng = np.random.default_rng(seed)
        shares = np.array([a.share for a in self.archetypes])
        kinds = rng.choice(len(self.archetypes), size=n, p=shares / shares.sum())
        out: list[SimUser] = []
        for i, k in enumerate(kinds):
            arch = self.archetypes[int(k)]
            trigger = arch.trigger
            if rng.random() < self.trigger_noise:
                trigger = self.archetypes[int(rng.integers(len(self.archetypes)))].trigger
            consents = ALL_CONSENTS if rng.random() < self.consent_rate else frozenset()
            segments = frozenset({"high_value"}) if rng.random() < self.high_value_rate else frozenset()
            ctx = DecisionContext(
                user_id=f"sim-{seed}-{i}", now=self.start + i * self.step, trigger=trigger,
                consents=consents,
                timezone=self.timezones[int(rng.integers(len(self.timezones)))], segments=segments,
                features={"help_search": int(rng.poisson(arch.help_search))},
                scores={"purchase_propensity": float(rng.beta(*arch.purchase_propensity)),
                        "churn": float(rng.beta(*arch.churn))},
                model_versions=self.model_versions, feature_ages={"user_commerce": 60.0, "user_account": 60.0})
            out.append(SimUser(user_id=ctx.user_id, archetype=arch, context=ctx))
        return out


@dataclass(frozen=True)
class Choice:
    action: str
    propensity: float
    probabilities: Mapping[str, float]
    bucket: str = ""
    holdout: bool = False


class Policy(Protocol):
    name: str

    def choose(self, ctx: DecisionContext, rng: np.random.Generator) -> Choice: ...

    def learn(self, ctx: DecisionContext, choice: Choice, success: float) -> None: ...


class DecisionLayerPolicy:
    """The decision layer: :func:`decide` with a bandit state updated from every outcome (``learn=False``
    freezes it)."""

    def __init__(self, config: PolicyConfig, state: BanditState = EMPTY_STATE, *, learn: bool = True,
                 name: str = "decision_layer") -> None:
        self.config, self.state, self.learning, self.name = config, state, learn, name

    def choose(self, ctx: DecisionContext, rng: np.random.Generator) -> Choice:
        d = decide(ctx, self.config, self.state, EMPTY_HISTORY)
        return Choice(d.action, d.propensity, d.probabilities, d.bucket, d.holdout)

    def learn(self, ctx: DecisionContext, choice: Choice, success: float) -> None:
        if self.learning:
            self.state = update(self.state, choice.bucket, choice.action, success)


def final_candidates(config: PolicyConfig, ctx: DecisionContext) -> tuple[str, ...]:
    """The actions the decision layer could choose for ``ctx`` (after consent, caps, rules, guardrails)."""
    return apply_overrides(config, ctx, eligibility(config, ctx, EMPTY_HISTORY).eligible).candidates


class _Candidates:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    def learn(self, ctx: DecisionContext, choice: Choice, success: float) -> None:
        return None

    def _pick(self, probs: dict[str, float], rng: np.random.Generator) -> Choice:
        names = list(probs)
        i = int(rng.choice(len(names), p=np.array([probs[a] for a in names])))
        return Choice(names[i], probs[names[i]], probs)


class UniformPolicy(_Candidates):
    """Uniformly random among the decision layer's final candidates."""

    name = "uniform"

    def choose(self, ctx: DecisionContext, rng: np.random.Generator) -> Choice:
        cands = final_candidates(self.config, ctx)
        return self._pick({a: 1.0 / len(cands) for a in cands}, rng)


class FixedPolicy(_Candidates):
    """Always ``action`` when the decision layer could choose it, the default action otherwise."""

    def __init__(self, config: PolicyConfig, action: str) -> None:
        super().__init__(config)
        self.action = action
        self.name = f"fixed:{action}"

    def choose(self, ctx: DecisionContext, rng: np.random.Generator) -> Choice:
        a = self.action if self.action in final_candidates(self.config, ctx) else self.config.default_action
        return Choice(a, 1.0, {a: 1.0})


class TriggerMapPolicy(_Candidates):
    """A deterministic rule book: ``by_trigger[trigger]`` when it is a candidate, else the default action."""

    def __init__(self, config: PolicyConfig, by_trigger: Mapping[str, str], name: str = "trigger_map") -> None:
        super().__init__(config)
        self.by_trigger = dict(by_trigger)
        self.name = name

    def choose(self, ctx: DecisionContext, rng: np.random.Generator) -> Choice:
        a = self.by_trigger.get(ctx.trigger or "", self.config.default_action)
        if a not in final_candidates(self.config, ctx):
            a = self.config.default_action
        return Choice(a, 1.0, {a: 1.0})


@dataclass
class Run:
    """What one run of a policy over a list of users did, and what it was truly worth."""

    policy: str
    users: list[SimUser]
    choices: list[Choice]
    successes: Array  # drawn outcomes (0/1)
    rewards: Array  # value · success − cost of the chosen action
    expected: Array  # expected reward of the action chosen
    oracle: Array  # the best expected reward among the user's final candidates
    uplift: Array  # expected success of the chosen action minus that of the default action

    @property
    def actions(self) -> list[str]:
        return [c.action for c in self.choices]

    @property
    def holdout(self) -> npt.NDArray[np.bool_]:
        return np.array([c.holdout for c in self.choices], dtype=bool)

    @property
    def propensities(self) -> Array:
        return np.array([c.propensity for c in self.choices], dtype=np.float64)

    def mean_reward(self) -> float:
        return float(self.rewards.mean())

    def cumulative_expected(self) -> Array:
        out: Array = np.cumsum(self.expected)
        return out

    def regret(self) -> Array:
        """Cumulative expected regret against the oracle."""
        out: Array = np.cumsum(self.oracle - self.expected)
        return out


def expected_reward(config: PolicyConfig, user: SimUser, action: str) -> float:
    spec = config.actions[action]
    return spec.value * user.success_probability(action, config.default_action) - spec.cost


def run_policy(config: PolicyConfig, users: Sequence[SimUser], policy: Policy, seed: int) -> Run:
    """Each user in turn: the policy chooses, the user responds, the policy learns."""
    rng = np.random.default_rng(seed)
    n = len(users)
    successes, rewards, expected, oracle, uplift = (np.empty(n) for _ in range(5))
    choices: list[Choice] = []
    default = config.default_action
    for i, user in enumerate(users):
        choice = policy.choose(user.context, rng)
        p = user.success_probability(choice.action, default)
        success = float(rng.random() < p)
        spec = config.actions[choice.action]
        successes[i] = success
        rewards[i] = spec.value * success - spec.cost
        expected[i] = expected_reward(config, user, choice.action)
        oracle[i] = max(expected_reward(config, user, a) for a in final_candidates(config, user.context))
        uplift[i] = p - user.success_probability(default, default)
        choices.append(choice)
        policy.learn(user.context, choice, success)
    return Run(policy=policy.name, users=list(users), choices=choices, successes=successes, rewards=rewards,
               expected=expected, oracle=oracle, uplift=uplift)


def fixed_action_values(config: PolicyConfig, users: Sequence[SimUser]) -> dict[str, float]:
    """The exact mean expected reward of every fixed-action policy over ``users`` (no outcomes drawn)."""
    totals = dict.fromkeys(config.action_names, 0.0)
    for user in users:
        cands = final_candidates(config, user.context)
        for a in totals:
            totals[a] += expected_reward(config, user, a if a in cands else config.default_action)
    return {a: t / len(users) for a, t in totals.items()}


def uniform_value(config: PolicyConfig, users: Sequence[SimUser]) -> float:
    """The exact mean expected reward of :class:`UniformPolicy` over ``users``."""
    total = 0.0
    for user in users:
        cands = final_candidates(config, user.context)
        total += sum(expected_reward(config, user, a) for a in cands) / len(cands)
    return total / len(users)


def policy_value(config: PolicyConfig, users: Sequence[SimUser], probabilities: Sequence[Mapping[str, float]]
                 ) -> float:
    """The exact expected reward of per-user probability vectors."""
    total = 0.0
    for user, probs in zip(users, probabilities, strict=True):
        total += sum(p * expected_reward(config, user, a) for a, p in probs.items() if p > 0)
    return total / len(users)
