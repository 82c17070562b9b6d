"""``decide``: one pure function from a context to a logged decision.

The steps, each its own module:

1. the **holdout** (:mod:`~serving.decision.holdout`): a held-out user gets the default action with
   probability 1;
2. **degraded** inputs (features read degraded, or a score the policy reads missing): the default action,
   or the configured score defaults (``degraded.mode``);
3. **eligibility** (:mod:`~serving.decision.eligibility`): the trigger's candidates, consent, caps, quiet
   hours, cool-down;
4. **overrides** (:mod:`~serving.decision.rules`): business rules by priority, then guardrails;
5. **scoring** (:mod:`~serving.decision.scoring`) and **exploration** (:mod:`~serving.decision.bandit`):
   the whole probability vector of the final candidates, from which the action is drawn.

The random generator is seeded from the exploration seed and the decision id, so the same inputs give
the same decision; the decision id is the context's, or a hash of the user, time, trigger and policy
version. Every answer carries the reasons, versions, feature ages, propensity and probability vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from serving.decision.bandit import EMPTY_STATE, BanditState, choice_probabilities, context_bucket, update
from serving.decision.config import PolicyConfig, policy_version
from serving.decision.context import EMPTY_HISTORY, Decision, DecisionContext, HistoryLike, Reasons
from serving.decision.eligibility import Eligibility, eligibility
from serving.decision.holdout import in_holdout
from serving.decision.rules import Overrides, apply_overrides
from serving.decision.scoring import expected_values, missing_scores, success_probability

_VERSIONS: dict[int, tuple[PolicyConfig, str]] = {}


def version_of(config: PolicyConfig) -> str:
    """:func:`policy_version`, remembered per configuration object (a configuration is immutable)."""
    hit = _VERSIONS.get(id(config))
    if hit is not None and hit[0] is config:
        return hit[1]
    v = policy_version(config)
    if len(_VERSIONS) > 64:
        _VERSIONS.clear()
    _VERSIONS[id(config)] = (config, v)
    return v


def decision_id_for(ctx: DecisionContext, version: str) -> str:
    """The context's decision id, or a deterministic one from the user, time, trigger and policy."""
    if ctx.decision_id:
        return ctx.decision_id
    key = f"{version}|{ctx.user_id}|{ctx.now.isoformat()}|{ctx.trigger or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _rng(seed: int, decision_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{decision_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def decide(ctx: DecisionContext, config: PolicyConfig, state: BanditState = EMPTY_STATE,
           history: HistoryLike = EMPTY_HISTORY) -> Decision:
    """The decision for ``ctx`` under ``config``, the bandit ``state`` and the user's ``history``. Pure."""
    version = version_of(config)
    decision_id = decision_id_for(ctx, version)
    rng = _rng(config.exploration.seed, decision_id)
    default = config.default_action
    notes: list[str] = []

    missing = missing_scores(config, ctx.scores)
    degraded = ctx.degraded or bool(missing)
    scores = {s: float(ctx.scores[s]) for s in config.scores if s not in missing}
    if missing:
        notes.append(f"missing scores {list(missing)}")
        scores.update({s: config.degraded.score_defaults.get(s, 0.0) for s in missing})
    if ctx.degraded:
        notes.append("features read degraded")
    bucket = context_bucket(config, ctx.trigger, scores)
    elig = eligibility(config, ctx, history)
    holdout = in_holdout(ctx.user_id, config.holdout)

    if holdout or (degraded and config.degraded.mode == "default"):
        notes.append("holdout: the default action" if holdout else "degraded: the default action")
        over = Overrides(candidates=(default,), explore=False)
        probs = {default: 1.0}
        action, best = default, default
    else:
        over = apply_overrides(config, ctx, elig.eligible)
        cands = over.candidates
        prior = {a: success_probability(config.actions[a], scores) for a in cands}
        p, best_i = choice_probabilities(config, state, bucket, cands, prior, over.boosts, over.explore, rng)
        p = p / p.sum()
        i = int(rng.choice(len(cands), p=p)) if len(cands) > 1 else 0
        action, best = cands[i], cands[best_i]
        probs = {a: float(p[j]) for j, a in enumerate(cands)}
    vector = {a: probs.get(a, 0.0) for a in config.action_names}
    reasons = _reasons(ctx, elig, over, notes)
    return Decision(
        decision_id=decision_id, user_id=ctx.user_id, at=ctx.now, action=action,
        channel=config.actions[action].channel, propensity=vector[action], probabilities=vector,
        scores=dict(ctx.scores), expected_values=expected_values(config, scores, elig.eligible),
        reasons=reasons, policy_version=version, model_versions=dict(ctx.model_versions),
        feature_ages=dict(ctx.feature_ages), bucket=bucket, holdout=holdout, degraded=degraded,
        explored=action != best)


def _reasons(ctx: DecisionContext, elig: Eligibility, over: Overrides, notes: list[str]) -> Reasons:
    ineligible: dict[str, tuple[str, ...]] = dict(elig.ineligible)
    for a, why in over.removed.items():
        ineligible[a] = ineligible.get(a, ()) + why
    return Reasons(trigger=ctx.trigger, consent=tuple(sorted(ctx.consents)), ineligible=ineligible,
                   caps_hit=elig.caps_hit, rules_applied=over.rules_applied, guardrails=over.guardrails,
                   quiet_hours=elig.quiet_hours, cooldown=elig.cooldown, notes=(*elig.notes, *notes))


def record_outcome(state: BanditState, decision: Decision, reward: float) -> BanditState:
    """The bandit state after the outcome of ``decision`` (``reward`` in [0, 1]). Pure: ``state`` is unchanged."""
    return update(state, decision.bucket, decision.action, reward)


def probability_vector(ctx: DecisionContext, config: PolicyConfig, state: BanditState = EMPTY_STATE,
                       history: HistoryLike = EMPTY_HISTORY) -> Mapping[str, float]:
    """The final policy's probability of each action for ``ctx`` (what off-policy evaluation reads)."""
    return decide(ctx, config, state, history).probabilities
