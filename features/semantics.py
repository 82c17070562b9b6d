"""The time semantics every engine obeys, as small pure functions.

Read ``features/SEMANTICS.md`` for the prose. In short, the value of a feature for
an entity *as of* time ``t`` aggregates the events that

1. belong to the entity and pass the aggregation's event-type filter and ``where``;
2. the user consented to (``consent_analytics``);
3. were not *late*: ``ingest_time - event_time <= allowed_lateness``;
4. are the first arrival of their ``event_id`` (duplicates are dropped);
5. had *arrived* by ``t``: ``ingest_time <= t``;
6. fall in the window: ``window_start(t) <= event_time`` where
   ``window_start(t) = floor(t, hop) - length``.

Because ``event_time <= ingest_time`` (the event model guarantees it), rule 5
implies ``event_time <= t``. Values therefore change only when an event arrives,
or when a tile leaves a window: at ``tile_expiry(tile_start)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from features.spec import Window

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def to_us(t: datetime) -> int:
    """A UTC datetime as integer microseconds since the Unix epoch (exact; engines keep time so inside)."""
    return (t - EPOCH) // MICROSECOND


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def floor_time(t: datetime, hop: timedelta) -> datetime:
    """``t`` rounded down to a multiple of ``hop`` since the Unix epoch (UTC)."""
    return t - ((t - EPOCH) % hop)


def tile_start(event_time: datetime, window: Window) -> datetime:
    """The start of the tile (of width ``window.hop``) an event falls in."""
    return floor_time(event_time, window.hop)


def window_start(as_of: datetime, window: Window) -> datetime:
    """The earliest event time included in ``window`` as of ``as_of`` (inclusive)."""
    return floor_time(as_of, window.hop) - window.length


def in_window(event_time: datetime, as_of: datetime, window: Window) -> bool:
    return window_start(as_of, window) <= event_time <= as_of


def tile_expiry(tile: datetime, window: Window) -> datetime:
    """The first time at which a tile starting at ``tile`` is no longer in the window.

    ``tile >= floor(t, hop) - length``  <=>  ``t < tile + length + hop``.
    """
    return tile + window.length + window.hop


class Drop(StrEnum):
    """Why an event does not count; engines report counts per reason."""

    LATE = "late"
    DUPLICATE = "duplicate"
    NO_CONSENT = "no_consent"


@dataclass(frozen=True, kw_only=True, slots=True)
class EventRules:
    allowed_lateness: timedelta
    consent_field: str = "consent_analytics"

    def drop_reason(self, event: Mapping[str, Any]) -> Drop | None:
        """Rules 2 and 3, which depend on the event alone."""
        if not event.get(self.consent_field):
            return Drop.NO_CONSENT
        if event["ingest_time"] - event["event_time"] > self.allowed_lateness:
            return Drop.LATE
        return None


def arrival_order_key(event: Mapping[str, Any]) -> tuple[datetime, str]:
    """The order in which the stream sees events: by arrival, ties by event id."""
    return (event["ingest_time"], event["event_id"])


def event_order_key(event: Mapping[str, Any]) -> tuple[datetime, datetime, str]:
    """The total order ``last`` uses: event time, then arrival, then id."""
    return (event["event_time"], event["ingest_time"], event["event_id"])


def admitted(
    events: Iterable[Mapping[str, Any]], rules: EventRules, drops: dict[Drop, int] | None = None
) -> Iterator[Mapping[str, Any]]:
    """Events that count, in arrival order: rules 2-4 applied (first arrival of an id wins).

    A duplicate is recognised by ``event_id``; since a copy carries the same
    ``event_time``, any copy arriving after the allowed lateness is late anyway, so
    a stream only has to remember ids for ``allowed_lateness`` past their event time.
    """
    seen: set[str] = set()
    for e in sorted(events, key=arrival_order_key):
        reason = rules.drop_reason(e)
        if reason is None and e["event_id"] in seen:
            reason = Drop.DUPLICATE
        if reason is not None:
            if drops is not None:
                drops[reason] = drops.get(reason, 0) + 1
            continue
        seen.add(e["event_id"])
        yield e
