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
        if v is None:
            return None
        try:
            utc = v.astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of range") from None
        if not 1970 <= utc.year <= 2999:
            raise ValueError("must be between 1970 and 2999")
        return utc


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
