"""Engine-free trigger specifications and the one per-key trigger state machine every engine adapts.

A *trigger* names a moment worth acting on (features/SEMANTICS.md, "Triggers"):

* :class:`ConditionTrigger`: an expression over the features of one feature view becomes true (an edge false ->
  true at a change point of the key), e.g. three or more items in the cart, the churn-risk rule.
* :class:`AbsenceTrigger`: "Y did not follow X within N": a start event arms a deadline, a newer start
  restarts it, a newer cancel disarms it, and the deadline fires by itself in data time, without any event.

Both read admitted events only (consent, lateness and duplicates are decided by :mod:`features.semantics`
first), keyed by their entity's join key. :class:`TriggerStepper` is the pure per-key state machine, the
trigger counterpart of :class:`features.state.Stepper`: :meth:`TriggerStepper.apply` takes the key's admitted
events in arrival order, :meth:`TriggerStepper.observe` the rows of a condition's view at its change points,
:meth:`TriggerStepper.advance_to` runs the clock and :meth:`TriggerStepper.next_deadline` tells a live engine when
to wake it up. Its state is plain data (:meth:`TriggerStepper.snapshot`, :meth:`TriggerStepper.restore`).
:class:`KeyTriggers` holds the steppers of one key, and :func:`sweep_triggers` is the batch sweep of one key.

This module never imports pyspark, bytewax or feast.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from features.events import FIELDS_BY_NAME, EventType
from features.expr import Expr, Func, if_, lit, not_
from features.expr import ge as _ge_func
from features.semantics import EPOCH, MICROSECOND, event_order_key, from_us, to_us
from features.spec import Entity, FeatureView, check_unique
from features.state import Stepper, ViewState, owner_of

ZERO: Final = timedelta(0)
NUMERIC_OR_BOOL: Final = frozenset({"int64", "float64", "bool"})
ALL_TYPES: Final[frozenset[EventType]] = frozenset(EventType)

OrderKey = tuple[datetime, datetime, str]  # event_order_key: (event_time, ingest_time, event_id)


# ------------------------------------------------------------------------------------- expression helpers
# Comparisons and connectives built from the expression language's own functions (``ge``, ``not``, ``if``), so an
# engine that compiles :mod:`features.expr` trees compiles a trigger condition with nothing new. A null operand
# gives null (or false for the connectives), and a null condition is not true.
def gt(a: Expr | float, b: Expr | float) -> Func:
    """``a > b`` (null if either is null)."""
    return not_(_ge_func(b, a))


def lt(a: Expr | float, b: Expr | float) -> Func:
    """``a < b`` (null if either is null)."""
    return not_(_ge_func(a, b))


def ge(a: Expr | float, b: Expr | float) -> Func:
    """``a >= b`` (null if either is null)."""
    return _ge_func(a, b)


def le(a: Expr | float, b: Expr | float) -> Func:
    """``a <= b`` (null if either is null)."""
    return _ge_func(b, a)


def all_of(*conditions: Expr) -> Expr:
    """True when every condition is true (a null one counts as false)."""
    if not conditions:
        raise ValueError("all_of needs at least one condition")
    out: Expr = conditions[-1]
    for c in reversed(conditions[:-1]):
        out = if_(c, out, lit(False))
    return if_(out, lit(True), lit(False))


def any_of(*conditions: Expr) -> Expr:
    """True when some condition is true (a null one counts as false)."""
    if not conditions:
        raise ValueError("any_of needs at least one condition")
    out: Expr = if_(conditions[-1], lit(True), lit(False))
    for c in reversed(conditions[:-1]):
        out = if_(c, lit(True), out)
    return out


def truthy(value: Any) -> bool:
    """Whether a condition's value counts as true: null (and NaN) is not."""
    return value is not None and value == value and bool(value)


# ------------------------------------------------------------------------------------- specs
@dataclass(frozen=True, kw_only=True)
class Fire:
    """One trigger firing: ``(key, trigger, fire_time)`` is its identity (parity compares it), unique per trigger
    and key (fire times of one trigger and key strictly increase). ``user_id`` is the user of the arming event
    (absence) or the one an engine passes with a row (condition; None if it has none); ``cause`` the event id of
    the arming start (absence), or None."""

    trigger: str
    key: str
    fire_time: datetime
    user_id: str | None = None
    cause: str | None = None

    @property
    def identity(self) -> tuple[str, str, datetime]:
        return (self.key, self.trigger, self.fire_time)

    @property
    def fire_id(self) -> str:
        """A deterministic id of the firing (its identity hashed): the idempotency key of the trigger topic, so a
        firing re-emitted after a restart is recognised as the same one."""
        text = f"{self.trigger}|{self.key}|{to_us(self.fire_time)}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, kw_only=True)
class AbsenceTrigger:
    """"Y did not follow X within N", per key of ``entity``.

    An admitted event of the key is a *start* if its type is in ``start_types`` and ``start_where`` (if any) is
    true, else a *cancel* if its type is in ``cancel_types`` and ``cancel_where`` is true (an event matching both
    is a start: it re-arms). Events are ordered by :func:`features.semantics.event_order_key` (event time, then
    arrival, then id). The latest start arms the key unless a later cancel has arrived; it fires at
    ``max(start.event_time + within, start.ingest_time)`` if, by then (arrived by that time, inclusive), no later
    start and no later cancel has arrived. ``cooldown``: a firing less than this after the key's previous firing
    of the trigger is suppressed (the arming is spent). See features/SEMANTICS.md, "Triggers".
    """

    name: str
    entity: Entity
    description: str
    start_types: frozenset[EventType]
    within: timedelta
    cancel_types: frozenset[EventType] = frozenset()
    start_where: Expr | None = None
    cancel_where: Expr | None = None
    cooldown: timedelta = ZERO
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.description:
            raise ValueError(f"trigger {self.name!r}: a description is required")
        if not self.start_types:
            raise ValueError(f"trigger {self.name!r}: at least one start event type is required")
        for t in self.start_types | self.cancel_types:
            if t not in ALL_TYPES:
                raise ValueError(f"trigger {self.name!r}: {t!r} is not an event type")
        if self.within <= ZERO:
            raise ValueError(f"trigger {self.name!r}: within must be positive, got {self.within}")
        if self.cooldown < ZERO:
            raise ValueError(f"trigger {self.name!r}: cooldown must not be negative")
        for where in (self.start_where, self.cancel_where):
            if where is not None:
                unknown = where.columns() - FIELDS_BY_NAME.keys()
                if unknown:
                    raise ValueError(f"trigger {self.name!r}: where reads {sorted(unknown)}, not event fields")

    @property
    def key_field(self) -> str:
        return self.entity.join_key

    def event_types(self) -> frozenset[str]:
        """The event types the trigger reads (to route only these to its state)."""
        return frozenset(str(t) for t in self.start_types | self.cancel_types)

    def is_start(self, event: Mapping[str, Any]) -> bool:
        return event["event_type"] in self.start_types and (
            self.start_where is None or truthy(self.start_where.fn(event)))

    def is_cancel(self, event: Mapping[str, Any]) -> bool:
        return event["event_type"] in self.cancel_types and (
            self.cancel_where is None or truthy(self.cancel_where.fn(event)))

    def fire_time_of(self, start: Mapping[str, Any]) -> datetime:
        """When an arming by ``start`` fires: its deadline in data time, or its arrival if it arrived after it."""
        deadline: datetime = start["event_time"] + self.within
        arrived: datetime = start["ingest_time"]
        return max(deadline, arrived)


@dataclass(frozen=True, kw_only=True)
class ConditionTrigger:
    """Fires when ``when`` over the features of ``view`` becomes true for a key: at a change point of the key
    (features/SEMANTICS.md: an arrival of an accepted event, or a tile expiry) where it is true and was not at the
    key's previous change point (before the first, the cold-start row, on which it must not be true).

    ``when`` reads only features of ``view`` of a numeric or boolean type. ``cooldown`` as for
    :class:`AbsenceTrigger` (a suppressed edge is spent: the condition must become false and true again).
    """

    name: str
    view: FeatureView
    when: Expr
    description: str
    cooldown: timedelta = ZERO
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.description:
            raise ValueError(f"trigger {self.name!r}: a description is required")
        if self.cooldown < ZERO:
            raise ValueError(f"trigger {self.name!r}: cooldown must not be negative")
        by_name = {f.name: f for f in self.view.features}
        cols = self.when.columns()
        if not cols:
            raise ValueError(f"trigger {self.name!r}: the condition reads no feature")
        for c in sorted(cols):
            f = by_name.get(c)
            if f is None:
                raise ValueError(f"trigger {self.name!r}: {c!r} is not a feature of view {self.view.name!r}")
            if f.dtype not in NUMERIC_OR_BOOL:
                raise ValueError(f"trigger {self.name!r}: feature {c!r} is {f.dtype}, not numeric or boolean")
        cold = self.when.evaluate(self.view.finalize_row({}))
        if cold is not None and not isinstance(cold, bool):
            raise ValueError(f"trigger {self.name!r}: the condition gives {cold!r}, not a boolean")
        if truthy(cold):
            raise ValueError(f"trigger {self.name!r}: the condition is true on the cold-start row")

    @property
    def entity(self) -> Entity:
        return self.view.entity

    @property
    def key_field(self) -> str:
        return self.view.entity.join_key

    def holds(self, row: Mapping[str, Any] | Sequence[Any]) -> bool:
        """Whether the condition is true on a row of the view (a mapping, or the values in feature order)."""
        if isinstance(row, Mapping):
            return truthy(self.when.fn(row))
        return truthy(_over_row(self)(row))


Trigger = AbsenceTrigger | ConditionTrigger

_ROW_FNS: dict[str, tuple[ConditionTrigger, Callable[[Sequence[Any]], Any]]] = {}


def _over_row(trigger: ConditionTrigger) -> Callable[[Sequence[Any]], Any]:
    hit = _ROW_FNS.get(trigger.name)
    if hit is None or hit[0] is not trigger:
        hit = _ROW_FNS[trigger.name] = (trigger, trigger.when.fn_over(trigger.view.feature_names))
    return hit[1]


def check_triggers(triggers: Iterable[Trigger]) -> tuple[Trigger, ...]:
    """The triggers, checked for unique names."""
    out = tuple(triggers)
    check_unique("trigger", (t.name for t in out))
    return out


# ------------------------------------------------------------------------------------- state
def _us(t: datetime | None) -> int | None:
    return None if t is None else (t - EPOCH) // MICROSECOND


def _dt(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


def _okey(k: OrderKey | None) -> list[Any] | None:
    return None if k is None else [_us(k[0]), _us(k[1]), k[2]]


def _from_okey(v: Any) -> OrderKey | None:
    return None if v is None else (from_us(v[0]), from_us(v[1]), str(v[2]))


@dataclass(kw_only=True)
class TriggerState:
    """One trigger's state for one key, plain data.

    Absence: ``start``/``cancel`` are the order keys of the latest start and cancel seen, ``deadline`` the fire
    time of the current arming (None: not armed), ``user_id``/``cause`` the arming start's user and event id.
    Condition: ``holds`` whether the condition held at the last decided change point, ``pending`` the time of a
    change point observed but not yet decided (a later row at the same time may replace it) and ``pending_holds``
    its value. Both: ``now`` the key's clock (the latest time processed), ``last_fire`` the latest emitted firing
    (for the cool-down), ``regressions`` events that arrived behind the clock (a live timer ran ahead of them).
    """

    now: datetime | None = None
    last_fire: datetime | None = None
    regressions: int = 0
    start: OrderKey | None = None
    cancel: OrderKey | None = None
    deadline: datetime | None = None
    user_id: str | None = None
    cause: str | None = None
    holds: bool = False
    pending: datetime | None = None
    pending_holds: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: times as integer microseconds since the Unix epoch."""
        return {"now": _us(self.now), "last_fire": _us(self.last_fire), "regressions": self.regressions,
                "start": _okey(self.start), "cancel": _okey(self.cancel), "deadline": _us(self.deadline),
                "user_id": self.user_id, "cause": self.cause, "holds": self.holds, "pending": _us(self.pending),
                "pending_holds": self.pending_holds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TriggerState:
        return cls(now=_dt(d["now"]), last_fire=_dt(d["last_fire"]), regressions=int(d["regressions"]),
                   start=_from_okey(d["start"]), cancel=_from_okey(d["cancel"]), deadline=_dt(d["deadline"]),
                   user_id=d["user_id"], cause=d["cause"], holds=bool(d["holds"]), pending=_dt(d["pending"]),
                   pending_holds=bool(d["pending_holds"]))


class TriggerStepper:
    """The state machine of one trigger for one key; every engine drives it, none re-implements it.

    * :meth:`apply` (absence triggers): one admitted event of the key, in arrival order. It first fires the
      deadlines before the event's arrival, then applies it. An event behind the clock (a live timer ran ahead of
      it) counts as arriving at the clock, and is counted in ``regressions``.
    * :meth:`observe` (condition triggers): the row of the view at a change point, in time order (the rows
      :class:`features.state.Stepper` emits). A row at a later time decides the previous one; a row at the same
      time replaces it (ties split across batches write two rows at one time).
    * :meth:`advance_to`: every event (or row) arriving at or before ``t`` has been given: fire what is due by
      ``t`` (inclusive). A replay calls it with data time, a live engine with the wall clock at a wake-up.
    * :meth:`next_deadline`: when the next firing is due (a timer for a live engine), or None.

    Each returns the firings, in time order; the state is plain data (:meth:`snapshot`, :meth:`restore`).
    """

    __slots__ = ("key", "state", "trigger")

    def __init__(self, trigger: Trigger, key: str, state: TriggerState | None = None) -> None:
        self.trigger = trigger
        self.key = key
        self.state = TriggerState() if state is None else state

    # -- checkpoints ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return self.state.to_dict()

    @classmethod
    def restore(cls, trigger: Trigger, key: str, snapshot: Mapping[str, Any]) -> TriggerStepper:
        return cls(trigger, key, TriggerState.from_dict(snapshot))

    # -- time ----------------------------------------------------------------------------------
    def next_deadline(self) -> datetime | None:
        s = self.state
        return s.deadline if isinstance(self.trigger, AbsenceTrigger) else s.pending

    def advance_to(self, t: datetime) -> list[Fire]:
        """Fire what is due at or before ``t``; the clock moves to the last firing decided."""
        out: list[Fire] = []
        self._due(t, True, out)
        return out

    def _due(self, t: datetime, inclusive: bool, out: list[Fire]) -> None:
        s = self.state
        if isinstance(self.trigger, AbsenceTrigger):
            d = s.deadline
            if d is not None and (d < t or (inclusive and d == t)):
                s.deadline = None
                self._fire(d, s.user_id, s.cause, out)
                self._tick(d)
            return
        p = s.pending
        if p is not None and (p < t or (inclusive and p == t)):
            now_holds = s.pending_holds
            s.pending = None
            if now_holds and not s.holds:
                self._fire(p, s.user_id, None, out)
            s.holds = now_holds
            self._tick(p)

    def _fire(self, t: datetime, user: str | None, cause: str | None, out: list[Fire]) -> None:
        s = self.state
        cooldown = self.trigger.cooldown
        if s.last_fire is not None and t < s.last_fire + cooldown:
            return  # suppressed: the arming (or edge) is spent
        s.last_fire = t
        out.append(Fire(trigger=self.trigger.name, key=self.key, fire_time=t, user_id=user, cause=cause))

    def _tick(self, t: datetime) -> None:
        if self.state.now is None or self.state.now < t:
            self.state.now = t

    def _arrival(self, t: datetime) -> datetime:
        now = self.state.now
        if now is not None and t < now:
            self.state.regressions += 1
            return now
        return t

    # -- input ---------------------------------------------------------------------------------
    def apply(self, event: Mapping[str, Any]) -> list[Fire]:
        """One admitted event of the key (arrival order); the firings due before its arrival."""
        trigger = self.trigger
        if not isinstance(trigger, AbsenceTrigger):
            raise TypeError(f"trigger {trigger.name!r} is a condition trigger: give it rows (observe)")
        out: list[Fire] = []
        t = self._arrival(event["ingest_time"])
        self._due(t, False, out)
        s = self.state
        is_start = trigger.is_start(event)
        if is_start or trigger.is_cancel(event):
            o = event_order_key(event)
            if is_start:
                if s.start is None or o > s.start:
                    s.start = o
                    s.user_id, s.cause = event.get("user_id"), event["event_id"]
                    if s.cancel is None or o > s.cancel:
                        s.deadline = max(event["event_time"] + trigger.within, t)
                    else:  # a later cancel has already arrived
                        s.deadline = None
            else:
                if s.cancel is None or o > s.cancel:
                    s.cancel = o
                if s.deadline is not None and s.start is not None and o > s.start:
                    s.deadline = None
        self._tick(t)
        return out

    def observe(self, t: datetime, row: Mapping[str, Any] | Sequence[Any], user_id: str | None = None) -> list[Fire]:
        """The view's row for the key at change point ``t``; the firings decided by it (those before ``t``)."""
        trigger = self.trigger
        if not isinstance(trigger, ConditionTrigger):
            raise TypeError(f"trigger {trigger.name!r} is an absence trigger: give it events (apply)")
        out: list[Fire] = []
        s = self.state
        behind = s.pending if s.pending is not None else s.now
        if behind is not None and t < behind:  # rows come in time order: one behind the clock counts from it
            s.regressions += 1
            t = behind
        self._due(t, False, out)
        s.pending = t
        s.pending_holds = trigger.holds(row)
        if user_id is not None:
            s.user_id = user_id
        return out

    def discardable(self, now: datetime, allowed_lateness: timedelta) -> bool:
        """Whether, with every event up to ``now`` given, the state holds nothing a later admitted event could
        need: the engine may drop it (a new stepper behaves the same). Absence: not armed, past the cool-down, and
        an event older than the latest start and cancel would now be late. Condition: the condition does not hold,
        nothing is pending, past the cool-down."""
        s = self.state
        if s.now is None:
            return True
        now = max(now, s.now)
        if s.last_fire is not None and now < s.last_fire + self.trigger.cooldown:
            return False
        if isinstance(self.trigger, ConditionTrigger):
            return not s.holds and s.pending is None
        if s.deadline is not None:
            return False
        newest = max((k[0] for k in (s.start, s.cancel) if k is not None), default=None)
        return newest is None or now > newest + allowed_lateness


class KeyTriggers:
    """The steppers of one key for every trigger of its entity: what an engine keeps as the key's trigger state.

    Absence triggers take the key's admitted events (:meth:`apply`), condition triggers the rows of their view
    (:meth:`observe`, by view name). A stepper is made on first use and kept until the engine discards it.
    """

    __slots__ = ("absence", "by_view", "key", "steppers", "triggers")

    def __init__(self, triggers: Iterable[Trigger], key: str,
                 snapshot: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.triggers = {t.name: t for t in triggers}
        self.key = key
        self.by_view: dict[str, list[ConditionTrigger]] = {}
        self.absence: list[tuple[AbsenceTrigger, frozenset[str]]] = []
        for t in self.triggers.values():
            if isinstance(t, ConditionTrigger):
                self.by_view.setdefault(t.view.name, []).append(t)
            else:
                self.absence.append((t, t.event_types()))
        self.steppers: dict[str, TriggerStepper] = {}
        for name, snap in (snapshot or {}).items():
            self.steppers[name] = TriggerStepper.restore(self.triggers[name], key, snap)

    def _stepper(self, trigger: Trigger) -> TriggerStepper:
        s = self.steppers.get(trigger.name)
        if s is None:
            s = self.steppers[trigger.name] = TriggerStepper(trigger, self.key)
        return s

    def apply(self, event: Mapping[str, Any]) -> list[Fire]:
        out: list[Fire] = []
        for t, types in self.absence:
            if event["event_type"] in types:
                out += self._stepper(t).apply(event)
        return out

    def observe(self, view: str, t: datetime, row: Mapping[str, Any] | Sequence[Any],
                user_id: str | None = None) -> list[Fire]:
        out: list[Fire] = []
        for trig in self.by_view.get(view, ()):
            out += self._stepper(trig).observe(t, row, user_id)
        return out

    def advance_to(self, t: datetime) -> list[Fire]:
        out: list[Fire] = []
        for s in self.steppers.values():
            out += s.advance_to(t)
        out.sort(key=lambda f: (f.fire_time, f.trigger))
        return out

    def next_deadline(self) -> datetime | None:
        return min((d for s in self.steppers.values() if (d := s.next_deadline()) is not None), default=None)

    def forget(self, now: datetime, allowed_lateness: timedelta) -> None:
        """Drop the steppers that hold nothing (:meth:`TriggerStepper.discardable`); the key may go when
        :meth:`is_empty`."""
        self.steppers = {n: s for n, s in self.steppers.items() if not s.discardable(now, allowed_lateness)}

    def is_empty(self) -> bool:
        return not self.steppers

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {n: s.snapshot() for n, s in self.steppers.items()}


# ------------------------------------------------------------------------------------- batch sweep
def sweep_triggers(trigger: Trigger, key: str, events: Iterable[Mapping[str, Any]], *,
                   until: datetime | None = None) -> list[Fire]:
    """Every firing of ``trigger`` for one key: ``events`` are the key's admitted events in arrival order.

    Absence: each event through :meth:`TriggerStepper.apply`, then the clock to ``until`` (None: until the last
    deadline). Condition: the events through the view's :class:`features.state.Stepper` (its owner rule included),
    each row through :meth:`TriggerStepper.observe`, the tile expiries up to ``until`` likewise. The Spark engine
    runs this per key; the stream drives the same steppers batch by batch.
    """
    stepper = TriggerStepper(trigger, key)
    out: list[Fire] = []
    if isinstance(trigger, AbsenceTrigger):
        for e in events:
            out += stepper.apply(e)
        end = stepper.next_deadline() if until is None else until
        if end is not None:
            out += stepper.advance_to(end)
        return out
    rows: list[tuple[datetime, tuple[Any, ...]]] = []
    view_stepper = Stepper(ViewState(trigger.view), _timed, owner_of(trigger.view))
    view_stepper.fold(events, rows)
    view_stepper.expire(until, rows)
    for t, row in rows:
        out += stepper.observe(t, row)
    last = stepper.next_deadline()
    if last is not None:
        out += stepper.advance_to(last)
    return out


def _timed(t: datetime, row: tuple[Any, ...]) -> tuple[datetime, tuple[Any, ...]]:
    return t, row
