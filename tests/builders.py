"""Shared event builders for tests: small, explicit, validated events.

``make_event`` returns a normalised record exactly as ``features.events.parse_event``
would, so every test event has passed the real validation. Property defaults make
each event type valid with no arguments; pass keywords to override them.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from features.events import EventType, parse_event

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)

_ids = itertools.count()

DEFAULT_PROPERTIES: dict[EventType, dict[str, Any]] = {
    EventType.PRODUCT_VIEW: {"product_id": "p1", "category": "shoes", "price": 50.0},
    EventType.ADD_TO_CART: {"product_id": "p1", "category": "shoes", "price": 50.0, "quantity": 1},
    EventType.REMOVE_FROM_CART: {"product_id": "p1", "category": "shoes", "price": 50.0, "quantity": 1},
    EventType.CHECKOUT_START: {"amount": 50.0, "quantity": 1},
    EventType.PURCHASE: {"amount": 50.0, "quantity": 1},
    EventType.PAGE_VIEW: {"page": "/home", "dwell_seconds": 30.0},
    EventType.SCROLL: {"page": "/home", "scroll_pct": 50.0},
    EventType.VIDEO_PROGRESS: {"video_id": "v1", "progress_pct": 25.0},
    EventType.SEARCH: {"query": "running shoes"},
    EventType.SHARE: {"channel": "email"},
    EventType.LOGIN: {"success": True},
    EventType.HELP_SEARCH: {"query": "cancel subscription"},
    EventType.FEATURE_USE: {"feature_name": "wishlist", "success": True},
    EventType.ONBOARDING_STEP: {"flow": "signup", "step_index": 0, "completed": True},
    EventType.FORM_STEP: {"flow": "address", "step_index": 0, "completed": True},
}


def raw_event(
    event_type: EventType | str,
    *,
    user_id: str = "u1",
    session_id: str | None = "s1",
    event_time: datetime = T0,
    ingest_delay: timedelta = timedelta(seconds=1),
    event_id: str | None = None,
    consent: bool = True,
    device_id: str = "d1",
    **properties: Any,
) -> dict[str, Any]:
    """An unvalidated event mapping (for validation tests)."""
    et = EventType(event_type)
    raw: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id or f"evt-{next(_ids):06d}",
        "user_id": user_id,
        "session_id": session_id,
        "event_type": et.value,
        "event_time": event_time,
        "ingest_time": event_time + ingest_delay,
        "consent_analytics": consent,
        "consent_personalization": consent,
        "consent_marketing": False,
        "device_id": device_id,
        "device_type": "mobile",
        "country": "DE",
    }
    raw.update(DEFAULT_PROPERTIES[et])
    raw.update(properties)
    return raw


def make_event(event_type: EventType | str, **kwargs: Any) -> dict[str, Any]:
    """A validated, normalised event record."""
    return parse_event(raw_event(event_type, **kwargs))


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
