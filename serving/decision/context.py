"""The values the decision functions take and give: the context, the history of past decisions, the result.

Everything is an immutable value, so :func:`serving.decision.policy.decide` is a pure function: the
same context, history, bandit state and configuration give the same decision. The caller (an endpoint, a
trigger consumer, the simulator) reads the features, scores and history, and stores what comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from serving.decision.config import Channel, Consent


def _utc(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {t!r}")
    return t.astimezone(UTC)


@dataclass(frozen=True)
class PastDecision:
    """One decision already taken for the user: what caps and cool-downs count."""

    at: datetime
    action: str
    channel: Channel
    trigger: str | None = None
    holdout: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _utc(self.at, "PastDecision.at"))


class HistoryLike(Protocol):
    """What eligibility reads of a user's past decisions (a store implements it; a tuple does too)."""

    def since(self, start: datetime) -> Iterable[PastDecision]:
        """The decisions at or after ``start``."""
        ...


@dataclass(frozen=True)
class History:
    """A user's past decisions, in any order: an explicit input, so the policy stays a pure function."""

    decisions: tuple[PastDecision, ...] = ()

    def since(self, start: datetime) -> Iterable[PastDecision]:
        return (d for d in self.decisions if d.at >= start)

    def add(self, decision: PastDecision) -> History:
        return History((*self.decisions, decision))


EMPTY_HISTORY = History()


@dataclass(frozen=True)
class DecisionContext:
    """What is known at the moment of the decision.

    ``features`` are the feature values read (and ``feature_ages`` their views' ages, in seconds; ``None``
    for a cold start); ``scores`` the champions' scores by model name and ``model_versions`` their versions;
    ``request`` the request-time context (page, device, flags such as ``breaking_news``). ``degraded`` says
    the features were read degraded (cold-start defaults). Condition rows see features, scores, request
    and the ``trigger`` under their own names.
    """

    user_id: str
    now: datetime
    trigger: str | None = None
    consents: frozenset[Consent] = frozenset()
    timezone: str | None = None
    segments: frozenset[str] = frozenset()
    features: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)
    model_versions: Mapping[str, str] = field(default_factory=dict)
    feature_ages: Mapping[str, float | None] = field(default_factory=dict)
    request: Mapping[str, Any] = field(default_factory=dict)
    degraded: bool = False
    decision_id: str | None = None

    def __post_init__(self) -> None:
        if not self.user_id:
            raise ValueError("user_id is empty")
        object.__setattr__(self, "now", _utc(self.now, "DecisionContext.now"))
        object.__setattr__(self, "consents", frozenset(self.consents))
        object.__setattr__(self, "segments", frozenset(self.segments))

    def row(self) -> dict[str, Any]:
        """The mapping conditions are evaluated over."""
        return {**self.features, **self.request, **self.scores, "trigger": self.trigger}


@dataclass(frozen=True)
class Reasons:
    """Why the decision came out as it did."""

    trigger: str | None
    consent: tuple[str, ...]  # the consents the user has
    ineligible: Mapping[str, tuple[str, ...]]  # action -> why it could not be chosen
    caps_hit: tuple[str, ...]
    rules_applied: tuple[str, ...]
    guardrails: tuple[str, ...]
    quiet_hours: bool
    cooldown: bool
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "consent": list(self.consent),
                "ineligible": {k: list(v) for k, v in self.ineligible.items()}, "caps_hit": list(self.caps_hit),
                "rules_applied": list(self.rules_applied), "guardrails": list(self.guardrails),
                "quiet_hours": self.quiet_hours, "cooldown": self.cooldown, "notes": list(self.notes)}


@dataclass(frozen=True)
class Decision:
    """One decision: the action, and everything the decision log and off-policy evaluation need.

    ``probabilities`` is the whole vector of the *final* policy (after consent, caps, rules, guardrails,
    the holdout and exploration) over the catalogue; ``propensity`` is its entry for ``action``. The action
    was drawn from exactly this vector.
    """

    decision_id: str
    user_id: str
    at: datetime
    action: str
    channel: Channel
    propensity: float
    probabilities: Mapping[str, float]
    scores: Mapping[str, float]  # the champions' scores
    expected_values: Mapping[str, float]  # action -> the scoring model's expected value (eligible actions)
    reasons: Reasons
    policy_version: str
    model_versions: Mapping[str, str]
    feature_ages: Mapping[str, float | None]
    bucket: str
    holdout: bool
    degraded: bool
    explored: bool  # the action was not the one of highest expected value

    def past(self) -> PastDecision:
        """This decision as the history the next one reads."""
        return PastDecision(at=self.at, action=self.action, channel=self.channel, trigger=self.reasons.trigger,
                            holdout=self.holdout)

    def log_row(self) -> dict[str, Any]:
        """A JSON-ready row of the decision log."""
        return {"decision_id": self.decision_id, "user_id": self.user_id, "at": self.at.isoformat(),
                "action": self.action, "channel": self.channel, "propensity": self.propensity,
                "probabilities": dict(self.probabilities), "scores": dict(self.scores),
                "expected_values": dict(self.expected_values), "reasons": self.reasons.as_dict(),
                "policy_version": self.policy_version, "model_versions": dict(self.model_versions),
                "feature_ages": dict(self.feature_ages), "bucket": self.bucket, "holdout": self.holdout,
                "degraded": self.degraded, "explored": self.explored}
