"""The stream's keyed logic: what one key's state does with a batch of its items, a timer or the end of input.

Three keyed steps, each a :class:`~pipelines.stream.snapshots.LazyLogic` (copy-on-write snapshots):

* :class:`UserLogic` (the ``users`` step, keyed by ``user_id``): admission by
  :class:`features.semantics.Admission` (rules 2-4; a user's ids are forgotten once every later copy is late,
  and a user with nothing left is discarded), *fused* with the state of every view keyed by ``user_id``: one
  state object per user and no second exchange, which is what keeps the stream fast at a million users. It
  emits its views' rows, the drop records, the admitted ids (for the ids step) and, if some view is routed on,
  the admitted events (for the keys step).
* :class:`KeyLogic` (the ``keys`` step, keyed by ``view|key``): one view's state for a key of another entity
  (sessions), where every user's events of the key meet, so the owner rule (:class:`features.state.Owner`)
  sees them all; it emits rows and ``session_collision`` records.
* :class:`IdLogic` (the ``ids`` step, keyed by an id's last characters): ``id_collision`` by
  :class:`features.semantics.IdCollisions`.

Every view's state is driven by :class:`features.state.Stepper`, the change-point loop :func:`features.state.sweep`
runs too, so each batch emits exactly the rows ``sweep`` emits. Timers run on data time
(:class:`~pipelines.stream.types.StreamClock`; see :mod:`pipelines.stream.engine`).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, partial
from typing import Any

from features.semantics import Admission, Collision, EventRules, IdCollisions, arrival_order_key
from features.spec import FeatureView
from features.state import Stepper, ViewState, owner_of
from features.triggers import AbsenceTrigger, ConditionTrigger, Fire, KeyTriggers, Trigger
from pipelines.stream.snapshots import LazyLogic, LazySnapshot
from pipelines.stream.triggers import END_OF_TIME, Fires, drain, settle, wake_at
from pipelines.stream.types import (
    ID_BUCKET_CHARS,
    KEY_SEP,
    STATS,
    Admitted,
    Claim,
    Claims,
    DropRecord,
    Drops,
    Emitted,
    Event,
    Forward,
    Positioned,
    Row,
    StreamClock,
)

StepOut = Emitted | Fires

log = logging.getLogger(__name__)


def _regressed(event: Mapping[str, Any], now: datetime) -> None:
    """A live wake-up ran ahead of an event still in flight: it counts from the key's clock (module docstring of
    :mod:`pipelines.stream.engine`)."""
    STATS["clock_regressions"] += 1
    log.warning("event %s of user %s arrived at %s, behind its key's clock %s; counted from the clock",
                event["event_id"], event.get("user_id"), event["ingest_time"], now)


def router(view: FeatureView) -> Callable[[Event], Forward | None]:
    """The view's item for an event: ``("view|key", (view, event))``, or None if the view does not read it."""
    join_key, name = view.entity.join_key, view.name
    types = view.event_types()

    def route(e: Event) -> Forward | None:
        k = e.get(join_key)
        if k is None or e["event_type"] not in types:  # no aggregation of the view reads it
            return None
        return f"{name}{KEY_SEP}{k}", (name, e)

    return route


@dataclass(frozen=True)
class StepPlan:
    """What the keyed steps share: the views, the rules and the clock.

    ``own``: the views the users step keeps (keyed by ``user_id``), with their event types; ``forward``: whether
    the users step emits its admitted events for views routed on (or the trigger step); ``views``: every view, by
    name; ``triggers``: the triggers keyed by the user (:func:`pipelines.stream.triggers.user_triggers`).
    """

    own: tuple[tuple[FeatureView, frozenset[str]], ...]
    forward: bool
    views: Mapping[str, FeatureView]
    rules: EventRules
    clock: StreamClock
    triggers: tuple[Trigger, ...] = ()

    @cached_property
    def absence_types(self) -> frozenset[str]:
        """The event types the users step's absence triggers read (only these go through them)."""
        return frozenset().union(*(t.event_types() for t in self.triggers if isinstance(t, AbsenceTrigger)))


def _observe(kt: KeyTriggers, rows: list[Row], user_id: str | None) -> list[Fire]:
    """The rows a view's stepper emitted (per view in time order), through the key's condition triggers."""
    out: list[Fire] = []
    observe = kt.observe
    for r in rows:
        if r.view in kt.by_view:
            out += observe(r.view, r.event_timestamp, r.values, user_id)
    return out


class UserLogic(LazyLogic):
    """One user: admission (:class:`features.semantics.Admission`) and a :class:`features.state.Stepper` per view
    keyed by the user, in one step (see the module docstring), and the user's triggers
    (:class:`features.triggers.KeyTriggers`: absence triggers take the admitted events, condition triggers the
    rows; :mod:`pipelines.stream.triggers`)."""

    __slots__ = ("admission", "key", "kt", "plan", "steppers")

    def __init__(self, plan: StepPlan, resume: bytes | LazySnapshot | None) -> None:
        self._snap = None
        self.plan = plan
        self.key = ""
        self.steppers: list[Stepper | None] = [None] * len(plan.own)
        self.kt: KeyTriggers | None = None
        if resume is None:
            self.admission = Admission(plan.rules)
            return
        loaded = self.loads(resume)
        if len(loaded) != 4:  # older layouts: sessions inside their user, or no trigger state
            raise ValueError("a recovery snapshot of the users step from an older engine (its users' sessions "
                             "inside, or no trigger state): the layout changed, so start from a new recovery store")
        self.key, seen, saved, triggers = loaded
        self.admission = Admission(plan.rules, seen)
        for v, s in enumerate(saved):
            if s is not None:
                self.steppers[v] = self._stepper(v, ViewState.restore(plan.own[v][0], s[1]), s[0])
        if triggers is not None:
            self.kt = KeyTriggers(plan.triggers, self.key, triggers)

    def _stepper(self, v: int, state: ViewState, now: datetime | None = None) -> Stepper:
        return Stepper(state, partial(Row, self.plan.own[v][0].name, self.key), None, now, _regressed)

    def on_batch(self, items: list[Positioned]) -> tuple[list[StepOut], bool]:
        if self._snap is not None:
            self.thaw()
        admit = self.admission.admit
        admitted: list[Event] = []
        drops: list[DropRecord] = []
        claims: list[tuple[str, Claim]] = []
        for pos, e in items:
            reason = admit(e)
            if reason is None:
                admitted.append(e)
                claims.append((e["event_id"][-ID_BUCKET_CHARS:], (pos, e)))
            else:
                drops.append(DropRecord(reason.value, pos, e["event_id"], e["ingest_time"]))
        rows: list[Row] = []
        out: list[StepOut] = [Drops(drops)] if drops else []
        if claims:
            out.append(Claims(claims))
        if admitted:
            if not self.key:
                self.key = str(admitted[0]["user_id"])
            steppers = self.steppers
            for v, (view, types) in enumerate(self.plan.own):
                mine = [e for e in admitted if e["event_type"] in types]
                if mine:
                    stepper = steppers[v]
                    if stepper is None:
                        stepper = steppers[v] = self._stepper(v, ViewState(view))
                    stepper.fold(mine, rows)
                    if stepper.state.is_empty():
                        steppers[v] = None
            if self.plan.forward:
                out.append(Admitted(admitted))
            if self.plan.triggers:  # the admitted events (absence), then the rows (conditions), in time order
                kt = self.kt
                if kt is None:
                    kt = self.kt = KeyTriggers(self.plan.triggers, self.key)
                fires: list[Fire] = []
                starts = self.plan.absence_types
                for e in admitted:
                    if e["event_type"] in starts:
                        fires += kt.apply(e)
                fires += _observe(kt, rows, self.key)
                fires += settle(kt, admitted[-1]["ingest_time"])
                if fires:
                    out.append(Fires(fires))
        if rows:
            out.append(rows)
        return out, self._discard()

    def _discard(self) -> bool:
        return not self.admission.seen and not any(self.steppers) and (self.kt is None or self.kt.is_empty())

    def _expire_all(self, limit: datetime | None, drained: bool) -> list[StepOut]:
        """Expire the views' tiles up to ``limit`` and advance the triggers to it (``drained``: at the end of
        input, where None runs until nothing is due)."""
        rows: list[Row] = []
        steppers = self.steppers
        for v, stepper in enumerate(steppers):
            if stepper is not None:
                stepper.expire(limit, rows)
                if stepper.state.is_empty():
                    steppers[v] = None
        out: list[StepOut] = [rows] if rows else []
        kt = self.kt
        if kt is not None:
            fires = _observe(kt, rows, self.key)
            fires += drain(kt, limit) if drained else kt.advance_to(limit or END_OF_TIME)
            kt.forget(limit or END_OF_TIME, self.plan.rules.allowed_lateness)
            if fires:
                out.append(Fires(fires))
        return out

    def on_notify(self) -> tuple[list[StepOut], bool]:
        self.thaw()
        clock = self.plan.clock
        out: list[StepOut] = []
        if clock.is_live:
            due = clock.due()
            self.admission.forget(due)
            out = self._expire_all(due, False)
        return out, self._discard()

    def on_eof(self) -> tuple[list[StepOut], bool]:
        self.thaw()
        clock = self.plan.clock
        out: list[StepOut] = []
        if clock.flush_at_eof:  # the clock runs on to ``until``: ids whose lateness ran out by then go too
            self.admission.forget(clock.until)
            out = self._expire_all(clock.until, True)
        return out, self._discard()

    def notify_at(self) -> datetime | None:
        clock = self.plan.clock
        if clock.offset is None:  # not live
            return None
        times = [s.state.next_expiry() for s in self.steppers if s is not None]
        heap = self.admission.heap
        if heap:
            times.append(heap[0][0])
        due = min((t for t in times if t is not None), default=None)
        wall = None if due is None else clock.wall(due)
        fire = wake_at(self.kt, clock)
        return fire if wall is None else wall if fire is None else min(wall, fire)

    def dump(self) -> bytes:
        saved = [None if s is None else (s.now, s.state.snapshot()) for s in self.steppers]
        triggers = None if self.kt is None else self.kt.snapshot()
        return pickle.dumps((self.key, self.admission.seen, saved, triggers), protocol=pickle.HIGHEST_PROTOCOL)


class KeyLogic(LazyLogic):
    """The :class:`features.state.Stepper` of one ``view|key`` (views not keyed by the user: sessions), emitting
    sweep's rows. Each call emits one list of rows (or nothing), and for a view whose keys have an owner (a
    session is one user's) the ``session_collision`` records of the events another user sent while the key was
    held (:class:`features.state.Owner`): every user's events of a key meet here, in one state. The condition
    triggers over the view (``triggers``, by view name) observe its rows here (:class:`Fires`)."""

    __slots__ = ("clock", "key", "kt", "lateness", "stepper", "triggers", "view_name", "views")

    def __init__(self, views: Mapping[str, FeatureView], clock: StreamClock,
                 resume: bytes | LazySnapshot | None,
                 triggers: Mapping[str, tuple[ConditionTrigger, ...]] | None = None,
                 lateness: timedelta = timedelta(0)) -> None:
        self._snap = None
        self.views = views
        self.clock = clock
        self.triggers = triggers or {}
        self.lateness = lateness
        self.stepper: Stepper | None = None
        self.kt: KeyTriggers | None = None
        self.view_name = ""
        self.key = ""
        if resume is not None:
            self.view_name, self.key, now, snapshot, owner, kt = self.loads(resume)
            view = views[self.view_name]
            self.stepper = self._stepper(view, ViewState.restore(view, snapshot), now)
            if self.stepper.owner is not None:
                self.stepper.owner.owner = owner
            if kt is not None:
                self.kt = KeyTriggers(self.triggers.get(self.view_name, ()), self.key, kt)

    def _stepper(self, view: FeatureView, state: ViewState, now: datetime | None = None) -> Stepper:
        return Stepper(state, partial(Row, view.name, self.key), owner_of(view), now, _regressed)

    def _owner(self) -> str | None:
        owner = self.stepper.owner if self.stepper is not None else None
        return None if owner is None or owner.owner is None else str(owner.owner)

    def on_batch(self, items: list[tuple[str, Event]]) -> tuple[list[list[Row] | Drops | Fires], bool]:
        if self._snap is not None:
            self.thaw()
        stepper = self.stepper
        if stepper is None:
            self.view_name, first = items[0]
            view = self.views[self.view_name]
            self.key = str(first[view.entity.join_key])
            stepper = self.stepper = self._stepper(view, ViewState(view))
            conditions = self.triggers.get(self.view_name, ())
            if conditions:
                self.kt = KeyTriggers(conditions, self.key)
        out: list[Row] = []
        collided: list[Event] = []
        events = [e for _, e in items]
        if len(events) > 1:
            # the users step emits a batch's events user by user: one key's events from two users (a shared
            # session) come grouped by user, and the owner rule must see them in arrival order, as sweep does
            events.sort(key=arrival_order_key)
        stepper.fold(events, out, collided)  # type: ignore[arg-type]
        emitted: list[list[Row] | Drops | Fires] = [out] if out else []
        kt = self.kt
        if kt is not None:
            fires = _observe(kt, out, self._owner())
            fires += settle(kt, max(e["ingest_time"] for e in events))
            if fires:
                emitted.append(Fires(fires))
        if collided:
            field = stepper.owner.field if stepper.owner is not None else ""
            # one record per event (its user and id), however many views left it out: the drops log counts ids
            emitted.append(Drops([DropRecord(Collision.SESSION_ID.value, f"{e.get(field)}|{e['event_id']}#session",
                                             e["event_id"], e["ingest_time"]) for e in collided]))
        return emitted, self._done()

    def _expire(self, limit: datetime | None, drained: bool) -> list[list[Row] | Drops | Fires]:
        assert self.stepper is not None
        out: list[Row] = []
        self.stepper.expire(limit, out)
        emitted: list[list[Row] | Drops | Fires] = [out] if out else []
        kt = self.kt
        if kt is not None:
            fires = _observe(kt, out, self._owner())
            fires += drain(kt, limit) if drained else kt.advance_to(limit or END_OF_TIME)
            kt.forget(limit or END_OF_TIME, self.lateness)
            if fires:
                emitted.append(Fires(fires))
        return emitted

    def _done(self) -> bool:
        return (self.stepper is None or self.stepper.state.is_empty()) and (self.kt is None or self.kt.is_empty())

    def on_notify(self) -> tuple[list[list[Row] | Drops | Fires], bool]:
        self.thaw()
        out = self._expire(self.clock.due(), False) if self.stepper is not None and self.clock.is_live else []
        return out, self._done()

    def on_eof(self) -> tuple[list[list[Row] | Drops | Fires], bool]:
        self.thaw()
        out = self._expire(self.clock.until, True) if self.stepper is not None and self.clock.flush_at_eof else []
        return out, self._done()

    def notify_at(self) -> datetime | None:
        if self.clock.offset is None or self.stepper is None:  # not live
            return None
        nxt = self.stepper.state.next_expiry()
        wall = None if nxt is None else self.clock.wall(nxt)
        fire = wake_at(self.kt, self.clock)
        return fire if wall is None else wall if fire is None else min(wall, fire)

    def dump(self) -> bytes:
        stepper = self.stepper
        assert stepper is not None
        owner = None if stepper.owner is None else stepper.owner.owner
        kt = None if self.kt is None else self.kt.snapshot()
        return pickle.dumps((self.view_name, self.key, stepper.now, stepper.state.snapshot(), owner, kt),
                            protocol=pickle.HIGHEST_PROTOCOL)


class IdLogic(LazyLogic):
    """One bucket of event ids (their last characters): which user first admitted each id, for ``id_collision``
    (:class:`features.semantics.IdCollisions`; ids are unique per user, so a collision is counted, not dropped).
    Each call emits the collisions' records (or nothing). Ids are forgotten as admission forgets them: a bucket
    is a few hundred keys whatever the load, so Bytewax's per-key costs do not grow with the users."""

    __slots__ = ("ids", "limit", "now", "rules")

    def __init__(self, rules: EventRules, resume: bytes | LazySnapshot | None) -> None:
        self._snap = None
        self.rules = rules
        self.ids = IdCollisions(rules)
        self.now: datetime | None = None  # the latest arrival seen
        self.limit = ID_FORGET_AT  # sweep the forgotten ids once this many are held (then twice what is left)
        if resume is not None:
            self.ids.first, self.now = self.loads(resume)

    def on_batch(self, items: list[Claim]) -> tuple[list[list[DropRecord]], bool]:
        if self._snap is not None:
            self.thaw()
        out: list[DropRecord] = []
        observe = self.ids.observe
        for pos, e in items:
            if observe(e):
                out.append(DropRecord(Collision.EVENT_ID.value, f"{pos}#id", e["event_id"], e["ingest_time"]))
        now = items[-1][1]["ingest_time"]
        if self.now is not None and self.now > now:
            now = self.now
        self.now = now
        if len(self.ids.first) > self.limit:
            self.ids.forget(now)
            self.limit = max(ID_FORGET_AT, 2 * len(self.ids.first))
        return ([out] if out else []), False

    def on_eof(self) -> tuple[list[list[DropRecord]], bool]:
        return [], True

    def dump(self) -> bytes:
        return pickle.dumps((self.ids.first, self.now), protocol=pickle.HIGHEST_PROTOCOL)


ID_FORGET_AT = 4096  # a bucket sweeps its forgotten ids once it holds this many (amortised, not per event)

