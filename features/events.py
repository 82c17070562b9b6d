"""The Kairos behavioural event model, version 1.

One flat, versioned record per event. Common fields come first; each event type
then requires and allows a subset of the typed *property* fields. The same field
table drives validation (per record), the Arrow/parquet schema and the JSON-lines
codec, so a field is declared exactly once.

Times are timezone-aware UTC. ``event_time`` is when the user did it (client
clock); ``ingest_time`` is when Kairos received it. Feature semantics use both:
see ``features/SEMANTICS.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

SCHEMA_VERSION: Final = 1

# A client clock may run slightly ahead of ours; beyond this an event is rejected.
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)


class EventType(StrEnum):
    # commerce
    PRODUCT_VIEW = "product_view"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    CHECKOUT_START = "checkout_start"
    PURCHASE = "purchase"
    # engagement
    PAGE_VIEW = "page_view"
    SCROLL = "scroll"
    VIDEO_PROGRESS = "video_progress"
    SEARCH = "search"
    SHARE = "share"
    # account
    LOGIN = "login"
    HELP_SEARCH = "help_search"
    FEATURE_USE = "feature_use"
    # onboarding and forms
    ONBOARDING_STEP = "onboarding_step"
    FORM_STEP = "form_step"


COMMERCE_EVENTS: Final = frozenset(
    {
        EventType.PRODUCT_VIEW,
        EventType.ADD_TO_CART,
        EventType.REMOVE_FROM_CART,
        EventType.CHECKOUT_START,
        EventType.PURCHASE,
    }
)
ENGAGEMENT_EVENTS: Final = frozenset(
    {EventType.PAGE_VIEW, EventType.SCROLL, EventType.VIDEO_PROGRESS, EventType.SEARCH, EventType.SHARE}
)
ACCOUNT_EVENTS: Final = frozenset({EventType.LOGIN, EventType.HELP_SEARCH, EventType.FEATURE_USE})
ONBOARDING_EVENTS: Final = frozenset({EventType.ONBOARDING_STEP, EventType.FORM_STEP})


class DeviceType(StrEnum):
    DESKTOP = "desktop"
    MOBILE = "mobile"
    TABLET = "tablet"
    APP = "app"


@dataclass(frozen=True, kw_only=True, slots=True)
class Field:
    """One column of the event record."""

    name: str
    dtype: str  # "string" | "int64" | "float64" | "bool" | "timestamp"
    description: str
    min_value: float | None = None
    max_value: float | None = None
    allowed: frozenset[str] | None = None
    max_length: int | None = None


_S, _I, _F, _B, _T = "string", "int64", "float64", "bool", "timestamp"

COMMON_FIELDS: Final[tuple[Field, ...]] = (
    Field(name="schema_version", dtype=_I, description="Event schema version", min_value=1, max_value=SCHEMA_VERSION),
    Field(name="event_id", dtype=_S, description="Globally unique id; duplicates share it", max_length=128),
    Field(name="user_id", dtype=_S, description="Stable user identifier", max_length=128),
    Field(name="session_id", dtype=_S, max_length=128,
          description="Session identifier, unique across users (a session is one user's); null without sessions"),
    Field(name="event_type", dtype=_S, description="One of EventType", allowed=frozenset(EventType)),
    Field(name="event_time", dtype=_T, description="When the user acted (UTC)"),
    Field(name="ingest_time", dtype=_T, description="When Kairos received the event (UTC)"),
    Field(name="consent_analytics", dtype=_B, description="User allows behavioural analytics"),
    Field(name="consent_personalization", dtype=_B, description="User allows personalised decisions"),
    Field(name="consent_marketing", dtype=_B, description="User allows marketing contact"),
    Field(name="device_id", dtype=_S, description="Device fingerprint", max_length=128),
    Field(name="device_type", dtype=_S, description="One of DeviceType", allowed=frozenset(DeviceType)),
    Field(name="country", dtype=_S, description="ISO 3166-1 alpha-2 country code", max_length=2),
)

PROPERTY_FIELDS: Final[tuple[Field, ...]] = (
    Field(name="product_id", dtype=_S, description="Catalogue product id", max_length=128),
    Field(name="category", dtype=_S, description="Catalogue category", max_length=128),
    Field(name="price", dtype=_F, description="Unit price", min_value=0.0, max_value=1e7),
    Field(name="quantity", dtype=_I, description="Units", min_value=0, max_value=100_000),
    Field(name="amount", dtype=_F, description="Order or cart value", min_value=0.0, max_value=1e9),
    Field(name="page", dtype=_S, description="Page path", max_length=512),
    Field(name="dwell_seconds", dtype=_F, description="Time on page", min_value=0.0, max_value=86_400.0),
    Field(name="scroll_pct", dtype=_F, description="Scroll depth in percent", min_value=0.0, max_value=100.0),
    Field(name="video_id", dtype=_S, description="Video id", max_length=128),
    Field(name="progress_pct", dtype=_F, description="Video progress in percent", min_value=0.0, max_value=100.0),
    Field(name="query", dtype=_S, description="Search or help query text", max_length=512),
    Field(name="channel", dtype=_S, description="Share channel", max_length=64),
    Field(name="success", dtype=_B, description="Login succeeded"),
    Field(name="feature_name", dtype=_S, description="Product feature used", max_length=128),
    Field(name="flow", dtype=_S, description="Onboarding flow or form id", max_length=128),
    Field(name="step_index", dtype=_I, description="Zero-based step index", min_value=0, max_value=1_000),
    Field(name="completed", dtype=_B, description="Step completed (vs. abandoned)"),
)

ALL_FIELDS: Final[tuple[Field, ...]] = COMMON_FIELDS + PROPERTY_FIELDS
FIELDS_BY_NAME: Final[dict[str, Field]] = {f.name: f for f in ALL_FIELDS}
PROPERTY_NAMES: Final = frozenset(f.name for f in PROPERTY_FIELDS)

# Common fields every event must carry (session_id, device and geo may be null).
REQUIRED_COMMON: Final = (
    "schema_version",
    "event_id",
    "user_id",
    "event_type",
    "event_time",
    "ingest_time",
    "consent_analytics",
    "consent_personalization",
    "consent_marketing",
)

# (required properties, optional properties) per event type.
EVENT_PROPERTIES: Final[dict[EventType, tuple[frozenset[str], frozenset[str]]]] = {
    EventType.PRODUCT_VIEW: (frozenset({"product_id", "category", "price"}), frozenset({"page"})),
    EventType.ADD_TO_CART: (frozenset({"product_id", "category", "price", "quantity"}), frozenset()),
    EventType.REMOVE_FROM_CART: (frozenset({"product_id", "category", "price", "quantity"}), frozenset()),
    EventType.CHECKOUT_START: (frozenset({"amount", "quantity"}), frozenset()),
    EventType.PURCHASE: (frozenset({"amount", "quantity"}), frozenset({"product_id", "category"})),
    EventType.PAGE_VIEW: (frozenset({"page", "dwell_seconds"}), frozenset()),
    EventType.SCROLL: (frozenset({"page", "scroll_pct"}), frozenset()),
    EventType.VIDEO_PROGRESS: (frozenset({"video_id", "progress_pct"}), frozenset({"page"})),
    EventType.SEARCH: (frozenset({"query"}), frozenset()),
    EventType.SHARE: (frozenset({"channel"}), frozenset({"page", "product_id"})),
    EventType.LOGIN: (frozenset(), frozenset({"success"})),
    EventType.HELP_SEARCH: (frozenset({"query"}), frozenset({"page"})),
    EventType.FEATURE_USE: (frozenset({"feature_name"}), frozenset({"success"})),
    EventType.ONBOARDING_STEP: (frozenset({"flow", "step_index", "completed"}), frozenset()),
    EventType.FORM_STEP: (frozenset({"flow", "step_index", "completed"}), frozenset({"page"})),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldError:
    """One problem with one field of one event."""

    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


class EventValidationError(ValueError):
    """Raised by :func:`parse_event` for an invalid event; lists every field problem."""

    def __init__(self, errors: list[FieldError], event_id: str | None = None) -> None:
        self.errors = errors
        self.event_id = event_id
        where = f"event {event_id!r}" if event_id else "event"
        super().__init__(f"invalid {where}: " + "; ".join(str(e) for e in errors))


def parse_time(value: Any) -> datetime:
    """Accept an aware datetime or an ISO-8601 string with an offset; return UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif hasattr(value, "to_pydatetime"):  # pandas Timestamp
        dt = value.to_pydatetime()
    else:
        raise TypeError(f"expected a datetime or ISO-8601 string, got {type(value).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("has no timezone; send UTC, e.g. 2026-01-31T12:00:00Z")
    return dt.astimezone(UTC)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_value(f: Field, value: Any) -> tuple[Any, str | None]:
    """Coerce ``value`` to the field's dtype; return (value, problem)."""
    try:
        if f.dtype == _S:
            if not isinstance(value, str):
                return None, f"must be a string, got {type(value).__name__}"
            if value == "":
                return None, "must not be empty"
            if f.max_length is not None and len(value) > f.max_length:
                return None, f"longer than {f.max_length} characters ({len(value)})"
            if f.allowed is not None and value not in f.allowed:
                return None, f"{value!r} is not one of {sorted(f.allowed)}"
            return value, None
        if f.dtype == _B:
            if not isinstance(value, bool):
                return None, f"must be true or false, got {value!r}"
            return value, None
        if f.dtype == _T:
            return parse_time(value), None
        if f.dtype == _I:
            if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
                return None, f"must be an integer, got {value!r}"
            v: float = int(value)
        else:  # float64
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None, f"must be a number, got {value!r}"
            v = float(value)
            if not math.isfinite(v):
                return None, f"must be finite, got {value!r}"
    except OverflowError:
        return None, f"is out of range, got {value!r:.40}"
    except (TypeError, ValueError) as exc:
        return None, str(exc)
    if f.min_value is not None and v < f.min_value:
        return None, f"must be >= {f.min_value:g}, got {v:g}"
    if f.max_value is not None and v > f.max_value:
        return None, f"must be <= {f.max_value:g}, got {v:g}"
    return v, None


_FIELD_ORDER: Final[dict[str, int]] = {f.name: i for i, f in enumerate(ALL_FIELDS)}
_REQUIRED: Final[dict[EventType | None, frozenset[str]]] = {
    None: frozenset(REQUIRED_COMMON),
    **{et: frozenset(REQUIRED_COMMON) | req for et, (req, _) in EVENT_PROPERTIES.items()},
}
_NOT_ALLOWED: Final[dict[EventType, frozenset[str]]] = {
    et: PROPERTY_NAMES - req - opt for et, (req, opt) in EVENT_PROPERTIES.items()
}
_EVENT_TYPES: Final[dict[str, EventType]] = {t.value: t for t in EventType}


def validate_event(raw: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[FieldError]]:
    """Validate one raw event.

    Returns ``(record, [])`` with a normalised record (every field of
    :data:`ALL_FIELDS` present, UTC datetimes) or ``(None, errors)``, errors in
    field order. This is the hot path of every ingest, so it only visits the
    fields the event carries.
    """
    errors: list[FieldError] = []
    out: dict[str, Any] = dict.fromkeys(_FIELD_ORDER)
    raw_type = raw.get("event_type")
    etype = _EVENT_TYPES.get(raw_type) if isinstance(raw_type, str) else None
    not_allowed = _NOT_ALLOWED[etype] if etype is not None else frozenset()
    present: set[str] = set()
    for name, value in raw.items():
        f = FIELDS_BY_NAME.get(name)
        if f is None:
            errors.append(FieldError(field=name, problem="is not a field of the event schema"))
            continue
        if _is_missing(value):
            continue
        present.add(name)
        if name in not_allowed and etype is not None:
            errors.append(FieldError(field=name, problem=f"is not a property of {etype.value} events"))
            continue
        coerced, problem = _check_value(f, value)
        if problem is not None:
            errors.append(FieldError(field=name, problem=problem))
        out[name] = coerced
    for name in _REQUIRED[etype] - present:
        prop = etype is not None and name in PROPERTY_NAMES
        errors.append(FieldError(field=name, problem=f"is required for {etype.value} events" if prop and etype
                                 else "is required"))

    et, it = out["event_time"], out["ingest_time"]
    if isinstance(et, datetime) and isinstance(it, datetime) and et > it + MAX_CLOCK_SKEW:
        errors.append(
            FieldError(
                field="event_time",
                problem=f"is {(et - it).total_seconds():.0f}s after ingest_time (max clock skew "
                f"{MAX_CLOCK_SKEW.total_seconds():.0f}s)",
            )
        )
    if errors:
        errors.sort(key=lambda e: _FIELD_ORDER.get(e.field, len(_FIELD_ORDER)))
        return None, errors
    # A client clock slightly ahead of ours is clamped so that event_time <= ingest_time always holds.
    if isinstance(et, datetime) and isinstance(it, datetime) and et > it:
        out["event_time"] = it
    return out, []


def parse_event(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise one event or raise :class:`EventValidationError`."""
    record, errors = validate_event(raw)
    if record is None:
        eid = raw.get("event_id")
        raise EventValidationError(errors, eid if isinstance(eid, str) else None)
    return record
