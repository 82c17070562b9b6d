"""The service's typed requests and answers (pydantic): the OpenAPI document is generated from these.

Versioned under ``/v1``. Every answer that carries features says how old each view's values
are, which views were stale or cold, and whether the service answered degraded (cold-start
defaults because the online store was down or over its time budget), with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

ViewState = Literal["fresh", "stale", "cold_start", "degraded"]


def _aware_utc(v: datetime | None) -> datetime | None:
    """A request time in UTC, in a range where ages can be computed (1970-2999)."""
    if v is None:
        return None
    try:
        utc = v.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not 1970 <= utc.year <= 2999:
        raise ValueError("must be between 1970 and 2999")
    return utc


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventBatch(_Model):
    """Behavioural events, as the event model defines them (``features/events.py``); ``ingest_time`` is stamped
    by the service on arrival."""

    events: list[dict[str, Any]] = Field(min_length=1, description="the events, each a JSON object")


class EventError(_Model):
    index: int = Field(description="the event's position in the batch")
    event_id: str | None
    field: str
    problem: str


class EventsAccepted(_Model):
    accepted: int = Field(description="appended to the event topic")
    rejected: int = Field(description="invalid: sent to the dead-letter store")
    no_consent: int = Field(description="of users without analytics consent: counted, stored nowhere")
    errors: list[EventError] = Field(description="every problem of every rejected event")
    topic: str = Field(description="where accepted events went: a Kafka topic or the embedded event log")


class EventsRejected(_Model):
    detail: str
    errors: list[EventError]


class ScoreRequest(_Model):
    user_id: str = Field(min_length=1, max_length=128)
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    request_time: AwareDatetime | None = Field(default=None, description="default: now (UTC); years 1970 to 2999")
    models: list[str] | None = Field(default=None, description="default: every served model")

    @field_validator("request_time")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        """In UTC, and in a range where ages can be computed."""
        return _aware_utc(v)


class ViewAge(_Model):
    age_seconds: float | None = Field(description="request time minus the view's last change point; null: no row")
    state: ViewState
    max_age_seconds: float


class ModelScore(_Model):
    score: float = Field(ge=0, le=1)
    registered_model: str
    version: str
    feature_service: str


class ScoreResponse(_Model):
    user_id: str
    session_id: str | None
    request_time: datetime
    scores: dict[str, ModelScore]
    views: dict[str, ViewAge]
    degraded: bool
    reason: str | None = None
    latency_ms: float


class FeatureVector(_Model):
    user_id: str
    session_id: str | None
    service: str
    request_time: datetime
    values: dict[str, Any]
    views: dict[str, ViewAge]
    degraded: bool
    reason: str | None = None


class Reloaded(_Model):
    loaded: dict[str, str]
    unchanged: dict[str, str]
    missing: list[str]
    errors: dict[str, str]


class Problem(_Model):
    """Every error answer: what went wrong, in words that name the field or the fix."""

    detail: str


# -- the decision layer ------------------------------------------------------------------------------------------
Flag = bool | int | float | str


class DecideRequest(_Model):
    """The request-time context of one decision. ``consents`` are the user's current consents: an action needing
    one the user has not given is never taken (none given: nothing personalized). ``flags`` are request-time
    values the policy's rules read (e.g. ``breaking_news``); ``segments`` the user's segments (e.g.
    ``high_value``, which guardrails protect)."""

    user_id: str = Field(min_length=1, max_length=128)
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    trigger: str | None = Field(default=None, min_length=1, max_length=64,
                                description="a trigger of the policy (conf/policy.yaml triggers); null: none fired")
    page: str | None = Field(default=None, max_length=512)
    device: str | None = Field(default=None, max_length=32)
    consents: list[Literal["personalization", "marketing"]] = Field(default_factory=list)
    timezone: str | None = Field(default=None, max_length=64, description="an IANA time zone (quiet hours)")
    segments: list[str] = Field(default_factory=list, max_length=32)
    flags: dict[str, Flag] = Field(default_factory=dict, max_length=32)
    request_time: AwareDatetime | None = Field(default=None, description="default: now (UTC); years 1970 to 2999")

    @field_validator("request_time")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return _aware_utc(v)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory
            raise ValueError(f"{v!r} is not an IANA time zone like 'Europe/Paris'") from None
        return v


class DecisionReasons(_Model):
    trigger: str | None
    consent: list[str] = Field(description="the consents the user has")
    ineligible: dict[str, list[str]] = Field(description="action -> why it could not be chosen")
    caps_hit: list[str]
    rules_applied: list[str]
    guardrails: list[str]
    quiet_hours: bool
    cooldown: bool
    notes: list[str]


class DecisionResponse(_Model):
    """One logged decision: the action and everything off-policy evaluation needs."""

    decision_id: str = Field(description="post its outcome to /v1/outcomes with this id")
    user_id: str
    session_id: str | None
    request_time: datetime
    action: str
    channel: str
    propensity: float = Field(ge=0, le=1, description="the final policy's probability of the action")
    probabilities: dict[str, float] = Field(description="the final policy's whole vector over the catalogue")
    scores: dict[str, float] = Field(description="the champions' scores")
    expected_values: dict[str, float] = Field(description="eligible action -> its expected value")
    reasons: DecisionReasons
    policy_version: str
    model_versions: dict[str, str]
    feature_ages: dict[str, float | None] = Field(description="view -> age in seconds; null: no row (cold start)")
    views: dict[str, ViewAge]
    bucket: str = Field(description="the bandit's context bucket")
    holdout: bool
    degraded: bool
    reason: str | None = Field(default=None, description="why the answer is degraded")
    explored: bool
    attribution_window_seconds: float
    latency_ms: float


class OutcomeRequest(_Model):
    """An outcome of a decision: ``reward`` in [0, 1] (1: the action's success)."""

    decision_id: str = Field(min_length=1, max_length=64)
    outcome_type: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                              description="e.g. purchase, click, retained")
    reward: float = Field(ge=0, le=1, allow_inf_nan=False)
    time: AwareDatetime | None = Field(default=None, description="when it happened; default: now (UTC)")

    @field_validator("time")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return _aware_utc(v)


class OutcomeAccepted(_Model):
    decision_id: str
    outcome_type: str
    reward: float
    time: datetime
    user_id: str
    action: str
    bucket: str
    propensity: float
    policy_version: str
    decision_time: datetime
    seconds_after_decision: float
    bandit: list[float] = Field(description="the (bucket, action) counts after it: [successes, failures]")


class OutcomeRefused(_Model):
    """An outcome not joined: ``status`` unknown (404), expired (410), duplicate (409) or before_decision (422)."""

    detail: str
    status: str
    decision_id: str
