"""The stream fires the triggers (:mod:`features.trigger_catalog`) by itself: absence triggers from its timers.

Each trigger lives in the keyed step of its ``key_field`` as a :class:`features.triggers.KeyTriggers` (the shared
per-key state machine; nothing here re-implements it):

* ``user_id`` triggers in the users step (:class:`~pipelines.stream.logic.UserLogic`): absence triggers take the
  user's admitted events in arrival order, condition triggers the rows of the user's views as the view's
  :class:`features.state.Stepper` emits them (expiry rows included);
* condition triggers of a view keyed otherwise (sessions) in that view's keys step
  (:class:`~pipelines.stream.logic.KeyLogic`), where the rows of ``view|key`` are made;
* absence triggers keyed otherwise (sessions) in a step of their own, :class:`TriggerLogic`, keyed by
  ``join_key|key``, fed the admitted events that carry the key (every user's events of a session meet there).

Time: in a replay each batch fires what fell due before its last arrival (data time), and the end of input fires
what is due up to the clock's ``until`` (``None``: until nothing is due); live, every keyed logic folds
:meth:`~features.triggers.KeyTriggers.next_deadline` into ``notify_at`` (``clock.wall``) and its wake-up advances
the triggers to the clock's ``due()``: an abandoned cart fires within ``grace`` of its deadline, with no event.

Output: each :class:`features.triggers.Fire` is written once to the trigger output, either the embedded trigger
log (``settings.trigger_log_path/part-*.jsonl``: a truncating Bytewax sink, so with recovery every firing is in it
exactly once) or a Kafka topic (``stream.trigger_output: kafka``; message key ``fire_id``, at least once).
:func:`read_triggers` deduplicates by ``fire_id`` on read, so a consumer of either sees each firing once.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple

from features.semantics import arrival_order_key, from_us, to_us
from features.spec import FeatureView
from features.trigger_catalog import TRIGGERS
from features.triggers import AbsenceTrigger, ConditionTrigger, Fire, KeyTriggers, Trigger
from pipelines.stream.snapshots import LazyLogic, LazySnapshot
from pipelines.stream.types import ADMISSION_KEY, KEY_SEP, Event, StreamClock

ONE_US: Final = timedelta(microseconds=1)
END_OF_TIME: Final = datetime.max.replace(tzinfo=UTC)


class Fires(NamedTuple):
    """The firings one call of a keyed step decided, in time order."""

    fires: list[Fire]


# ------------------------------------------------------------------------------------- which step holds which
def user_triggers(views: Iterable[FeatureView], triggers: Iterable[Trigger] = TRIGGERS) -> tuple[Trigger, ...]:
    """The triggers the users step keeps: keyed by ``user_id``, a condition only if its view is built."""
    names = {v.name for v in views}
    return tuple(t for t in triggers if t.key_field == ADMISSION_KEY
                 and (isinstance(t, AbsenceTrigger) or t.view.name in names))


def view_triggers(view: FeatureView, triggers: Iterable[Trigger] = TRIGGERS) -> tuple[ConditionTrigger, ...]:
    """The condition triggers over ``view``."""
    return tuple(t for t in triggers if isinstance(t, ConditionTrigger) and t.view.name == view.name)


def routed_triggers(triggers: Iterable[Trigger] = TRIGGERS) -> tuple[AbsenceTrigger, ...]:
    """The absence triggers keyed by another entity than the user (the trigger step's)."""
    return tuple(t for t in triggers if isinstance(t, AbsenceTrigger) and t.key_field != ADMISSION_KEY)


def trigger_router(triggers: Sequence[AbsenceTrigger]) -> Callable[[Event], list[tuple[str, tuple[str, Event]]]]:
    """An admitted event's items for the trigger step: ``("join_key|key", (join_key, event))`` per key field some
    trigger of that field reads the event for."""
    by_field: dict[str, frozenset[str]] = {}
    for t in triggers:
        by_field[t.key_field] = by_field.get(t.key_field, frozenset()) | t.event_types()
    fields = tuple(by_field.items())

    def route(e: Event) -> list[tuple[str, tuple[str, Event]]]:
        return [(f"{f}{KEY_SEP}{k}", (f, e)) for f, types in fields
                if (k := e.get(f)) is not None and e["event_type"] in types]

    return route


# ------------------------------------------------------------------------------------- time
def settle(kt: KeyTriggers, last_arrival: datetime) -> list[Fire]:
    """After a batch whose last arrival is ``last_arrival``: decide what fell due before it (every event and row
    of the key before it has been given; one at the same time may still come, ties split across batches)."""
    return kt.advance_to(last_arrival - ONE_US)


def drain(kt: KeyTriggers, until: datetime | None) -> list[Fire]:
    """At the end of input: fire what is due up to ``until`` (inclusive; None: until nothing is due)."""
    if until is not None:
        return kt.advance_to(until)
    out: list[Fire] = []
    while (due := kt.next_deadline()) is not None:
        out += kt.advance_to(due)
    return out


def wake_at(kt: KeyTriggers | None, clock: StreamClock) -> datetime | None:
    """The key's next trigger deadline as wall time (live), or None."""
    if kt is None or clock.offset is None:
        return None
    due = kt.next_deadline()
    return None if due is None else clock.wall(due)


# ------------------------------------------------------------------------------------- the trigger step
class TriggerLogic(LazyLogic):
    """The absence triggers of one key of another entity than the user (``join_key|key``: a session), fed every
    admitted event that carries the key, whichever user sent it, in arrival order. Each call emits one
    :class:`Fires` (or nothing)."""

    __slots__ = ("clock", "field", "key", "kt", "lateness", "triggers")

    def __init__(self, triggers: Sequence[AbsenceTrigger], clock: StreamClock, lateness: timedelta,
                 resume: bytes | LazySnapshot | None) -> None:
        self._snap = None
        self.triggers = triggers
        self.clock = clock
        self.lateness = lateness
        self.field = ""
        self.key = ""
        self.kt: KeyTriggers | None = None
        if resume is not None:
            self.field, self.key, snapshot = self.loads(resume)
            self.kt = self._make(snapshot)

    def _make(self, snapshot: Mapping[str, Mapping[str, Any]] | None = None) -> KeyTriggers:
        return KeyTriggers([t for t in self.triggers if t.key_field == self.field], self.key, snapshot)

    def on_batch(self, items: list[tuple[str, Event]]) -> tuple[list[Fires], bool]:
        if self._snap is not None:
            self.thaw()
        kt = self.kt
        if kt is None:
            self.field, first = items[0]
            self.key = str(first[self.field])
            kt = self.kt = self._make()
        events = [e for _, e in items]
        if len(events) > 1:  # the users step emits a batch's events user by user: a shared key's come grouped
            events.sort(key=arrival_order_key)
        fires: list[Fire] = []
        for e in events:
            fires += kt.apply(e)
        last = events[-1]["ingest_time"]
        fires += settle(kt, last)
        kt.forget(last, self.lateness)
        return ([Fires(fires)] if fires else []), kt.is_empty()

    def _advance(self, t: datetime | None, drained: bool) -> tuple[list[Fires], bool]:
        self.thaw()
        kt = self.kt
        if kt is None:
            return [], True
        fires = drain(kt, t) if drained else kt.advance_to(t or END_OF_TIME)
        kt.forget(t or END_OF_TIME, self.lateness)
        return ([Fires(fires)] if fires else []), kt.is_empty()

    def on_notify(self) -> tuple[list[Fires], bool]:
        if not self.clock.is_live:
            return [], self.kt is None or self.kt.is_empty()
        return self._advance(self.clock.due(), False)

    def on_eof(self) -> tuple[list[Fires], bool]:
        if not self.clock.flush_at_eof:
            self.thaw()
            return [], self.kt is None or self.kt.is_empty()
        return self._advance(self.clock.until, True)

    def notify_at(self) -> datetime | None:
        return wake_at(self.kt, self.clock)

    def dump(self) -> bytes:
        assert self.kt is not None
        return pickle.dumps((self.field, self.key, self.kt.snapshot()), protocol=pickle.HIGHEST_PROTOCOL)


# ------------------------------------------------------------------------------------- the output
def fire_record(f: Fire) -> dict[str, Any]:
    """A firing as the trigger log and topic write it (times as RFC 3339 UTC text)."""
    return {"fire_id": f.fire_id, "trigger": f.trigger, "key": f.key, "fire_time": f.fire_time.isoformat(),
            "fire_time_us": to_us(f.fire_time), "user_id": f.user_id, "cause": f.cause}


def encode_fires(fires: Iterable[Fire]) -> bytes:
    """Firings as JSON lines, in one string."""
    return b"".join(json.dumps(fire_record(f), separators=(",", ":")).encode() + b"\n" for f in fires)


def decode_fire(line: str | bytes) -> Fire:
    obj = json.loads(line)
    return Fire(trigger=obj["trigger"], key=obj["key"], fire_time=from_us(int(obj["fire_time_us"])),
                user_id=obj.get("user_id"), cause=obj.get("cause"))


def read_trigger_lines(directory: Path) -> list[bytes]:
    """Every line of a trigger log directory, as written (duplicates included)."""
    out: list[bytes] = []
    for path in sorted(Path(directory).glob("part-*.jsonl")):
        with open(path, "rb") as fh:
            out += [line for line in fh if line.strip()]
    return out


def read_triggers(directory: Path) -> list[Fire]:
    """The firings of a trigger log, each ``fire_id`` once (the first line of it), in time order: deduplicated on
    read, so a consumer sees each firing once whatever an at-least-once writer repeated."""
    seen: dict[str, Fire] = {}
    for line in read_trigger_lines(directory):
        f = decode_fire(line)
        seen.setdefault(f.fire_id, f)
    return sorted(seen.values(), key=lambda f: (f.fire_time, f.trigger, f.key))


def read_trigger_topic(brokers: str, topic: str, *, timeout: float = 30.0) -> tuple[list[Fire], int]:
    """The firings on a trigger topic, read from the start to the end of every partition, each ``fire_id`` (the
    message key) once; and the number of messages read (duplicates included)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"kairos-triggers-{topic}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        parts = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        seen: dict[str, Fire] = {}
        eof: set[int] = set()
        messages = 0
        deadline = time.monotonic() + timeout
        while len(eof) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"did not reach the end of every partition of {topic!r} in {timeout} s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                partition = msg.partition()
                if partition is not None:
                    eof.add(partition)
                continue
            value = msg.value()
            if value is None:
                continue
            messages += 1
            f = decode_fire(value)
            seen.setdefault(f.fire_id, f)
    finally:
        consumer.close()
    return sorted(seen.values(), key=lambda f: (f.fire_time, f.trigger, f.key)), messages


def fire_set(fires: Iterable[Fire]) -> set[tuple[str, str, datetime]]:
    """The ``(key, trigger, fire_time)`` identities parity compares."""
    return {f.identity for f in fires}
