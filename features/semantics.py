"""The time semantics every engine obeys, as small pure functions.

Read ``features/SEMANTICS.md`` for the prose. In short, the value of a feature for
an entity *as of* time ``t`` aggregates the events that

1. belong to the entity and pass the aggregation's event-type filter and ``where``;
2. the user consented to (``consent_analytics``);
3. were not *late*: ``ingest_time - event_time <= allowed_lateness``;
4. are the first arrival of their ``event_id`` for their user (duplicates are dropped; ids are unique per
   user, and an id seen under a second user is reported as a collision: :class:`Collision`);
5. had *arrived* by ``t``: ``ingest_time <= t``;
6. fall in the window: ``window_start(t) <= event_time`` where
   ``window_start(t) = floor(t, hop) - length`` (a lifetime window has no start: every event since the
   key's first counts, and nothing ever leaves it).

Because ``event_time <= ingest_time`` (the event model guarantees it), rule 5
implies ``event_time <= t``. Values therefore change only when an event arrives,
or when a tile leaves a window: at ``tile_expiry(tile_start)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from features.events import MAX_CLOCK_SKEW
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
    """The start of the tile (of width ``window.hop``) an event falls in; a lifetime window has one tile, at the
    epoch (its running state)."""
    return EPOCH if window.length is None else floor_time(event_time, window.hop)


def window_start(as_of: datetime, window: Window) -> datetime | None:
    """The earliest event time included in ``window`` as of ``as_of`` (inclusive); None for a lifetime window
    (no bound: every event since the key's first)."""
    return None if window.length is None else floor_time(as_of, window.hop) - window.length


def in_window(event_time: datetime, as_of: datetime, window: Window) -> bool:
    start = window_start(as_of, window)
    return (start is None or start <= event_time) and event_time <= as_of


def expires(window: Window) -> bool:
    """Whether tiles of ``window`` ever leave it (every window but a lifetime one)."""
    return window.length is not None


def tile_expiry(tile: datetime, window: Window) -> datetime:
    """The first time at which a tile starting at ``tile`` is no longer in the window.

    ``tile >= floor(t, hop) - length``  <=>  ``t < tile + length + hop``. A lifetime window's tile never
    leaves (:func:`expires`): asking for its expiry is an error.
    """
    if window.length is None:
        raise ValueError("a lifetime window's running state never expires")
    return tile + window.length + window.hop


class Drop(StrEnum):
    """Why an event does not count; engines report counts per reason."""

    LATE = "late"
    DUPLICATE = "duplicate"
    NO_CONSENT = "no_consent"


class Collision(StrEnum):
    """A broken-producer signal every engine counts (``BuildReport.collisions``), apart from the drops.

    * ``id_collision``: an admitted event whose ``event_id`` was first admitted under another user, no later
      than that first copy's :meth:`EventRules.id_retention` after its event time. Ids are unique per user, so
      the event still counts for its own user.
    * ``session_collision``: an event whose ``session_id`` is held by another user's live session; it is not
      part of any session feature (it still counts for its user's).
    """

    EVENT_ID = "id_collision"
    SESSION_ID = "session_collision"


@dataclass(frozen=True, kw_only=True, slots=True)
class EventRules:
    allowed_lateness: timedelta
    consent_field: str = "consent_analytics"
    max_clock_skew: timedelta = MAX_CLOCK_SKEW

    @property
    def id_retention(self) -> timedelta:
        """How long past its (clamped) ``event_time`` an admitted id must be remembered to recognise its copies.

        A copy carries the client's own ``event_time``; validation clamps a time up to ``max_clock_skew`` ahead
        of arrival, so the first copy's stored time can be up to that much earlier than a later copy's, and a
        later copy is not late until ``allowed_lateness`` past *its* time. Past this, every copy is late.
        """
        return self.allowed_lateness + self.max_clock_skew

    def forget_after(self, event: Mapping[str, Any]) -> datetime:
        """The last arrival time at which a copy of this admitted event can still be a duplicate (not late)."""
        t: datetime = event["event_time"]
        return t + self.id_retention

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


class IdCollisions:
    """Recognises ``id_collision``: an admitted event whose id was first admitted under another user.

    Feed it admitted events in arrival order (:meth:`observe`). It remembers each id's first user until
    :meth:`EventRules.forget_after` of that first copy; an id arriving later starts afresh. The reference and
    Spark keep ids as long as they like, the stream forgets them (:meth:`forget`), and all give the same answer.
    """

    __slots__ = ("first", "rules")

    def __init__(self, rules: EventRules) -> None:
        self.rules = rules
        self.first: dict[str, tuple[Any, datetime]] = {}  # event_id -> (user of its first admission, forget after)

    def observe(self, event: Mapping[str, Any]) -> bool:
        """True if this admitted event is a collision (its id is held by another user)."""
        eid = event["event_id"]
        first = self.first.get(eid)
        if first is None or event["ingest_time"] > first[1]:
            self.first[eid] = (event.get("user_id"), self.rules.forget_after(event))
            return False
        return bool(first[0] != event.get("user_id"))

    def forget(self, now: datetime) -> None:
        """Drop the ids no copy arriving after ``now`` can collide with."""
        self.first = {k: v for k, v in self.first.items() if v[1] >= now}


class Admission:
    """Rules 2-4 for one user's events in arrival order: the stateful admission every engine that admits event by
    event runs (the reference through :func:`admitted`, the stream per user key).

    :meth:`admit` applies consent and lateness (:meth:`EventRules.drop_reason`), then the first arrival of an
    ``event_id``: a copy of an admitted id is a duplicate. An admitted id is remembered until
    :meth:`EventRules.forget_after` of its copy; once an arrival passes that, the id is forgotten (every copy
    arriving later is late anyway, which rule 3 decides first), so a user's state stays bounded and
    ``seen`` empty means nothing is left to remember. ``seen`` maps an id to its forget-after time; it is the
    state to save, and ``Admission(rules, seen)`` restores it.
    """

    __slots__ = ("drop_reason", "forget_after", "heap", "seen")

    def __init__(self, rules: EventRules, seen: dict[str, datetime] | None = None) -> None:
        # bound once: admit runs per event
        self.drop_reason = rules.drop_reason
        self.forget_after = rules.forget_after
        self.seen: dict[str, datetime] = {} if seen is None else seen  # event_id -> forget after
        self.heap = [(t, i) for i, t in self.seen.items()]  # (forget after, event_id), soonest first
        heapq.heapify(self.heap)

    def admit(self, event: Mapping[str, Any]) -> Drop | None:
        """Why ``event`` does not count (None: admitted); then forget the ids no copy arriving from now can be."""
        reason = self.drop_reason(event)
        seen = self.seen
        eid = event["event_id"]
        if reason is None:
            if eid in seen:
                reason = Drop.DUPLICATE
            else:
                forget = self.forget_after(event)  # a copy may carry an unclamped, later event_time (id_retention)
                seen[eid] = forget
                heapq.heappush(self.heap, (forget, eid))
        heap = self.heap
        now = event["ingest_time"]
        while heap and heap[0][0] < now:  # ids whose copies arriving from now on are late anyway
            seen.pop(heapq.heappop(heap)[1], None)
        return reason

    def forget(self, limit: datetime | None) -> None:
        """Forget the ids whose copies arriving after ``limit`` would be late anyway (all if ``None``)."""
        heap, seen = self.heap, self.seen
        while heap and (limit is None or heap[0][0] < limit):
            seen.pop(heapq.heappop(heap)[1], None)


def admitted(
    events: Iterable[Mapping[str, Any]], rules: EventRules, drops: dict[Drop, int] | None = None,
    collisions: dict[Collision, int] | None = None,
) -> Iterator[Mapping[str, Any]]:
    """Events that count, in arrival order: rules 2-4 applied by one :class:`Admission` per user.

    Rules 2 and 3 come first, so a duplicate is the first arrival among the copies that pass consent and
    lateness (copies at the same arrival time are interchangeable: the one first in the input wins). A user's
    id is forgotten :meth:`EventRules.forget_after` (every later copy is late, so forgetting changes no
    answer). ``collisions`` counts the admitted events whose id another user holds (:class:`IdCollisions`).
    """
    users: dict[Any, Admission] = {}
    ids = IdCollisions(rules)
    for e in sorted(events, key=arrival_order_key):
        user = e.get("user_id")
        admission = users.get(user)
        if admission is None:
            admission = users[user] = Admission(rules)
        reason = admission.admit(e)
        if reason is not None:
            if drops is not None:
                drops[reason] = drops.get(reason, 0) + 1
            continue
        if ids.observe(e) and collisions is not None:
            collisions[Collision.EVENT_ID] = collisions.get(Collision.EVENT_ID, 0) + 1
        yield e
