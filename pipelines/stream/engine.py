"""The Bytewax engine: one dataflow keeps every feature view fresh in the online store.

A thin adapter of the shared semantics, like the Spark engine: admission is
:class:`features.semantics.EventRules`, aggregation is :class:`features.state.ViewState`
(the same tiled state machine :func:`features.state.sweep` drives in batch), names
and dtypes come from the specs. One dataflow serves every view::

    source ─► validate ─► users (keyed by user_id) ─────────────────────► rows ─► sinks
                │ invalid   admission + a ViewState per view keyed by user    ▲  changelog, Feast, memory
                ▼           │ late / duplicate / no_consent ─► drops log      │
           dead letters     ├ admitted ids ─► ids (by id bucket) ─► id_collision records
                            └ route: admitted events ─► keys (view|key) ──────┘
                              (sessions: every user's events of a session id    └► session_collision records
                              meet in one state, for the owner rule)

* **Sources**: a JSON-lines replay (``settings.data_path/stream.jsonl`` by default, in
  arrival order, as ``python -m pipelines.ingest.simulator --jsonl`` writes it) or a Kafka
  topic (``bytewax.connectors.kafka``; ``settings.stream.brokers``/``topic``). Every
  item carries its source position (``file:line`` or ``topic:partition:offset``), which
  names dead letters and drops.
* **Validation** decodes and checks an event in C (a msgspec type built from the event
  schema); whatever it does not accept goes through :func:`features.events.validate_event`,
  which decides and names the problems, so both paths give the same records and errors.
* **Admission** is keyed by ``user_id`` (copies of an event share it): consent, then
  lateness, then the first arrival of an ``event_id`` (ids are unique per user). A user's
  remembered ids are forgotten once ``EventRules.forget_after`` (``event_time`` plus the
  lateness and the clock skew validation clamps) has passed (a later copy is late anyway),
  and a user with nothing left is discarded, so the state stays bounded. Admitted events'
  ids also go, keyed by their last characters (a few hundred keys), to the ``ids`` step
  (:class:`_IdLogic`), which counts an id first admitted under another user as an
  ``id_collision`` in the drops log (reported apart from the drops: it still counts).
* **Aggregation** keeps one :class:`ViewState` per view and key. The views keyed by
  ``user_id`` live in the admission step itself (:class:`_UserLogic`: one keyed state per
  user, no second exchange). A view of any other entity (sessions) gets the admitted events
  routed to a second keyed step, ``view|key`` (:class:`_ViewLogic`), where every user's
  events of one key meet: a session belongs to one user (``Entity.owner``), and
  :class:`features.state.Owner` leaves out, as ``session_collision``, the events another
  user sends under a session id while its owner's state lives (Spark applies the same rule
  in its session grouping). With several workers, events of one session id from two users
  come from two workers, in an order within an epoch that Bytewax does not fix: a shared
  session is a producer error, and its counts are exact on one worker. For
  each batch of a key's events the state emits exactly the rows :func:`features.state.sweep`
  emits: one row per distinct arrival time of an accepted event (stamped with that
  ``ingest_time``) and one row per tile expiry (stamped with the expiry).
* **Rows** are compact (:class:`Row`: the values as a tuple in spec order) and travel as
  one list per key and call; the changelog encodes a batch's rows in one call per log
  file. Every step works on whole batches (``flat_map_batch``), not item by item.

Timers: data time, not wall time
--------------------------------
The "now" of a key is the arrival (``ingest_time``) of its events. Bytewax's
``notify_at`` runs on the system clock, which a replay does not follow, so expiries are
driven by data time first:

1. on each item, every pending expiry *before* the item's ``ingest_time`` is run first,
   emitting its row at the expiry time (this alone makes replays deterministic: rows and
   their timestamps do not depend on the wall clock, the batch sizes or the workers);
2. at EOF of a finite input, expiries up to ``until`` (inclusive; ``None``: until every
   window is empty) are run, as ``sweep(..., until=...)`` does;
3. live (``StreamClock.live``), ``notify_at`` also asks for a wake-up at
   ``expiry + offset + grace`` of wall time, where ``wall = data + offset`` (``offset`` is
   0 when ``ingest_time`` is stamped at arrival) and ``grace`` leaves room for events of
   that key still in flight. The wake-up runs the expiries that are due by then, stamped
   with their expiry times, so an expired window is written although no event came.

A live wake-up can run ahead of an event that was in flight for longer than ``grace``:
that event is then processed at the key's clock (it counts from there on) and counted
in :data:`STATS` (``clock_regressions``). Likewise live admission forgets an id by the
wall clock, ``grace`` after its lateness ran out. Replays never do either.

Ordering: a key's events must reach its state in arrival order. The replay file is in
arrival order; :func:`publish_to_kafka` keys messages by ``user_id`` so a user's events
(and so a session's, which belongs to one user) stay in one partition, in order. Every
event of a key then travels one path (source partition -> the user's worker, and for a
view routed on, -> the key's worker), and Bytewax keeps the order of items between two
workers and processes epochs in order.

Outputs
-------
* the **changelog** (JSON lines, ``settings.data_path/stream/changelog/part-*.jsonl``):
  every emitted row with its view, key, ``event_timestamp`` and all its values (a list in
  the view's feature order; :func:`decode_row` names them); the parity record;
* the **drops log** (``.../stream/drops/``): one line per late, duplicate, non-consented
  or invalid event, named by its source position; :func:`read_drops` counts them;
* **dead letters** (``settings.dead_letter_path/bytewax-*.jsonl``): the payload and field
  errors of each invalid event, through :class:`pipelines.ingest.eventlog.DeadLetterStore`;
* the **Feast online store**, through ``pipelines.store.online.write_online_rows``: one
  background writer per view writes the newest row of each key that changed while its
  previous write was in flight, and of it only the features that changed since the key's
  previous write in the epoch (Feast's SQLite store costs ~14 us per feature here, so batches
  grow and coalesce under load instead of queueing);
* an in-memory list for tests.

The file sinks are Bytewax partitioned sinks that truncate to their snapshot on resume,
so with recovery they hold every row exactly once. The online writers drain at every
snapshot (the end of each epoch), so a snapshot never covers rows that were only
buffered; rows replayed after a resume are upserts of values already written.

Running it::

    python -m bytewax.run pipelines.stream.engine:flow -w 2
    python -m bytewax.recovery RECOVERY_DIR 1          # once, then run with recovery:
    python -m bytewax.run "pipelines.stream.engine:build_flow(source='kafka')" -r RECOVERY_DIR -s 5 -b 0
    python -m pipelines.stream.engine report     # rows per view and drops per reason, from the logs
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import heapq
import json
import logging
import pickle
import sqlite3
import threading
import time
import weakref
import zlib
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, NamedTuple, Optional, TypeVar

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition

from conf.settings import Settings, load_settings
from features.events import (
    ALL_FIELDS,
    EVENT_PROPERTIES,
    PROPERTY_NAMES,
    REQUIRED_COMMON,
    FieldError,
    parse_time,
    validate_event,
)
from features.registry import REGISTRY, Registry
from features.semantics import Collision, Drop, EventRules, IdCollisions, arrival_order_key, to_us
from features.spec import FeatureView
from features.state import Owner, ViewState, owner_of
from pipelines.engine import BuildReport
from pipelines.ingest.eventlog import DeadLetterStore, decode_json, encode_json

if TYPE_CHECKING:
    from bytewax.recovery import RecoveryConfig

log = logging.getLogger(__name__)

INVALID = "invalid"
ADMISSION_KEY = "user_id"  # admission is per user; views keyed by it share its step
KEY_SEP = "|"
EVENT_TIMESTAMP = "event_timestamp"
DEFAULT_PARTS = 4

Raw = tuple[str, Any]  # (source position, payload: JSON text/bytes or a mapping)
Event = dict[str, Any]
Positioned = tuple[str, Event]  # (source position, validated event)
Invalid = tuple[str, Any, tuple[tuple[str, str], ...]]  # (source position, payload, (field, problem)...)

STATS: Counter[str] = Counter()  # process-wide diagnostics (clock regressions of live timers)
_SQLITE_WRITE_LOCK = threading.Lock()
WRITTEN_KEYS = 1_000_000  # at most this many keys' written values an online writer remembers within an epoch
_LOCKED_RETRIES = 20


class FeatureRow(NamedTuple):
    """One emitted row: the values of ``view`` for ``key`` from ``event_timestamp`` on."""

    view: str
    key: str
    event_timestamp: datetime
    values: dict[str, Any]


class DropRecord(NamedTuple):
    """An event that does not count, named by its source position."""

    reason: str
    id: str
    event_id: str | None
    ingest_time: datetime | None


@dataclass(frozen=True, kw_only=True)
class StreamClock:
    """How the stream's data time (``ingest_time``) drives timers; see the module docstring.

    ``offset``: wall time = data time + offset for live wake-ups; ``None`` runs on data
    time only (a replay). ``grace``: how long a live wake-up waits past an expiry for
    events of that key still in flight. ``until``: at EOF, run expiries up to this time
    (``None``: until every window is empty). ``flush_at_eof``: run them at all.
    """

    offset: timedelta | None = None
    grace: timedelta = timedelta(seconds=2)
    until: datetime | None = None
    flush_at_eof: bool = True

    @classmethod
    def live(cls, offset: timedelta = timedelta(0), grace: timedelta = timedelta(seconds=2)) -> StreamClock:
        return cls(offset=offset, grace=grace)

    @property
    def is_live(self) -> bool:
        return self.offset is not None

    def wall(self, data_time: datetime) -> datetime:
        assert self.offset is not None
        return data_time + self.offset + self.grace

    def due(self) -> datetime:
        """The latest data time whose expiries a live wake-up may run now."""
        assert self.offset is not None
        return datetime.now(UTC) - self.offset - self.grace


@dataclass(kw_only=True)
class StreamOutputs:
    """Where the dataflow writes: file logs, Feast, memory. ``parts`` files per log."""

    changelog_dir: Path | None
    drops_dir: Path
    dead_letter_dir: Path
    online: bool = False
    memory: list[FeatureRow] | None = None
    parts: int = DEFAULT_PARTS
    online_parts: int | None = None  # Feast writers; default one per view

    @classmethod
    def from_settings(cls, settings: Settings, *, online: bool = False, changelog: bool = True,
                      memory: list[FeatureRow] | None = None) -> StreamOutputs:
        root = settings.data_path / "stream"
        return cls(changelog_dir=root / "changelog" if changelog else None, drops_dir=root / "drops",
                   dead_letter_dir=settings.dead_letter_path, online=online, memory=memory)


# ------------------------------------------------------------------------------------------- sources
class _JsonlReplayPartition(StatefulSourcePartition[Raw, tuple[int, int]]):  # type: ignore[misc]
    def __init__(self, path: Path, batch_size: int, rate: float | None, resume: tuple[int, int] | None) -> None:
        offset, self._line = resume if resume is not None else (0, 0)
        self._name = path.name
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._fh.seek(offset)
        if resume is not None:
            log.warning("replay of %s resumes at line %d (byte %d) from a recovery snapshot", path, self._line, offset)
        self._batch = batch_size if rate is None else max(1, min(batch_size, round(rate / 100)))
        self._pause = None if rate is None else timedelta(seconds=self._batch / rate)
        self._awake: datetime | None = None

    def next_batch(self) -> list[Raw]:
        out: list[Raw] = []
        while len(out) < self._batch:
            line = self._fh.readline()
            if not line:
                if not out:
                    raise StopIteration
                break
            self._line += 1
            if line.strip():
                out.append((f"{self._name}:{self._line}", line))
        if self._pause is not None:
            self._awake = datetime.now(UTC) + self._pause
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        return (self._fh.tell(), self._line)

    def close(self) -> None:
        self._fh.close()


class JsonlReplaySource(FixedPartitionedSource[Raw, tuple[int, int]]):  # type: ignore[misc]
    """Replay a JSON-lines event log (one partition, read in file order = arrival order).

    Items are ``("<file>:<line>", line bytes)``, ``batch_size`` per read: a batch holds several events of
    each active key, so the keyed steps' per-key, per-call costs are shared by more events. ``rate`` paces
    the replay (events per second of wall time); resume state is the byte offset and line number.
    """

    def __init__(self, path: str | Path, *, batch_size: int = 50_000, rate: float | None = None) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.rate = rate

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int] | None) -> _JsonlReplayPartition:
        return _JsonlReplayPartition(self.path, self.batch_size, self.rate, resume_state)


def kafka_source(brokers: Sequence[str] | str, topic: str, *, tail: bool = True, batch_size: int = 1000,
                 add_config: Mapping[str, str] | None = None) -> Source:
    """A ``bytewax.connectors.kafka.KafkaSource`` (partitions assigned, no consumer group).

    ``tail=False`` ends at the end of every partition (a bounded run). Fetches wait at
    most 20 ms, for freshness.
    """
    from bytewax.connectors.kafka import KafkaSource

    config = {"fetch.wait.max.ms": "20", "socket.nagle.disable": "true", **(add_config or {})}
    return KafkaSource(_brokers(brokers), [topic], tail=tail, batch_size=batch_size, add_config=config)


def _kafka_raw(msg: Any) -> Raw:
    return (f"{msg.topic}:{msg.partition}:{msg.offset}", msg.value)


def _brokers(brokers: Sequence[str] | str) -> list[str]:
    return [b for b in brokers.split(",") if b] if isinstance(brokers, str) else list(brokers)


def publish_to_kafka(events: Iterable[Mapping[str, Any] | str], brokers: Sequence[str] | str, topic: str, *,
                     partitions: int = 1, create: bool = True, timeout: float = 30.0) -> int:
    """Append events (records or JSON lines) to ``topic``, in the given order, keyed by ``user_id``.

    Keying by user keeps each user's (and each session's) events in one partition, in
    order: the order the stream needs. Creates the topic (``partitions``) if missing.
    Returns how many were published; raises if any delivery failed.
    """
    from confluent_kafka import KafkaException, Producer

    servers = ",".join(_brokers(brokers))
    if create:
        ensure_topic(servers, topic, partitions=partitions, timeout=timeout)
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer({"bootstrap.servers": servers, "linger.ms": 5, "enable.idempotence": False,
                         "acks": "all", "queue.buffering.max.messages": 200_000})
    n = 0
    for e in events:
        if isinstance(e, str):
            line, user = e.strip(), decode_json(e).get("user_id")
        else:
            line, user = encode_json(e), e.get("user_id")
        while True:
            try:
                producer.produce(topic, value=line.encode(), key=None if user is None else str(user).encode(),
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        n += 1
    left = producer.flush(timeout)
    if left or failures:
        raise KafkaException(f"{left} events not delivered to {topic!r}; failures: {failures[:3]}")
    return n


def ensure_topic(brokers: str, topic: str, *, partitions: int = 1, timeout: float = 30.0) -> None:
    """Create ``topic`` unless it exists."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": brokers})
    if topic in admin.list_topics(timeout=timeout).topics:
        return
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in futures.values():
        try:
            f.result(timeout)
        except Exception as exc:  # a concurrent creator won the race
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


# ------------------------------------------------------------------------------------------- steps
def _fast_event_struct() -> Any:
    """A msgspec type that decodes and checks one event in C, field by field as :func:`validate_event` does."""
    fields: list[tuple[str, Any, None]] = []
    for f in ALL_FIELDS:
        t: Any
        lo = f.min_value
        hi = f.max_value
        if f.dtype == "string":
            if f.allowed is not None:
                t = Literal.__getitem__(tuple(sorted(str(v) for v in f.allowed)))
            else:
                t = Annotated[str, msgspec.Meta(min_length=1, max_length=f.max_length)]
        elif f.dtype == "bool":
            t = bool
        elif f.dtype == "timestamp":
            t = Annotated[datetime, msgspec.Meta(tz=True)]
        elif f.dtype == "int64":
            t = Annotated[int, msgspec.Meta(ge=None if lo is None else int(lo), le=None if hi is None else int(hi))]
        else:
            t = Annotated[float, msgspec.Meta(ge=lo, le=hi)]
        fields.append((f.name, Optional[t], None))  # noqa: UP045 - a runtime type for msgspec
    return msgspec.defstruct("_FastEvent", fields, forbid_unknown_fields=True, gc=False)


_FAST_DECODER = msgspec.json.Decoder(_fast_event_struct())
_FAST_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)
_REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    str(et): tuple(REQUIRED_COMMON) + tuple(sorted(req)) for et, (req, _) in EVENT_PROPERTIES.items()}
_FORBIDDEN_BY_TYPE: dict[str, tuple[str, ...]] = {
    str(et): tuple(sorted(PROPERTY_NAMES - req - opt)) for et, (req, opt) in EVENT_PROPERTIES.items()}


def _fast_validate(payload: str | bytes) -> Event | None:
    """The record :func:`validate_event` makes of a JSON event, or None to take its path (invalid or unusual).

    Sound, not complete: it accepts only what ``validate_event`` accepts and returns the same record (typed
    fields, UTC times, None for missing ones); anything else (a wrong type, an int as 2.0, a client clock ahead
    of ``ingest_time``...) goes through ``validate_event``, which names the problems.
    """
    try:
        rec: Event = msgspec.structs.asdict(_FAST_DECODER.decode(payload))
    except _FAST_ERRORS:
        return None
    etype = rec["event_type"]
    if etype is None:
        return None
    for name in _REQUIRED_BY_TYPE[etype]:
        if rec[name] is None:
            return None
    for name in _FORBIDDEN_BY_TYPE[etype]:
        if rec[name] is not None:
            return None
    et, it = rec["event_time"], rec["ingest_time"]
    if et.tzinfo is not UTC:
        et = rec["event_time"] = et.astimezone(UTC)
    if it.tzinfo is not UTC:
        it = rec["ingest_time"] = it.astimezone(UTC)
    if et > it:  # clamped or rejected by validate_event
        return None
    return rec


class _Invalid(NamedTuple):
    """An invalid event: its source position, payload and ``(field, problem)`` pairs."""

    pos: str
    payload: Any
    errors: tuple[tuple[str, str], ...]


def _validate_one(item: Any) -> tuple[bool, Positioned | Invalid]:
    """(True, (position, event)) or (False, (position, payload, errors)); items are Raw or Kafka messages."""
    pos, payload = item if isinstance(item, tuple) else _kafka_raw(item)
    if isinstance(payload, bytearray):
        payload = bytes(payload)
    if isinstance(payload, str | bytes):
        record = _fast_validate(payload)
        if record is not None:
            return True, (pos, record)
    try:
        raw = decode_json(payload) if isinstance(payload, str | bytes) else dict(payload)
    except (ValueError, TypeError) as exc:  # not JSON, not UTF-8, not an object
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        return False, _Invalid(pos, text, (("payload", f"is not a JSON event object: {exc}"),))
    record, errors = validate_event(raw)
    if record is None:
        return False, _Invalid(pos, raw, tuple((e.field, e.problem) for e in errors))
    return True, (pos, record)


def _validate_batch(items: list[Any]) -> list[tuple[str, Positioned] | _Invalid]:
    """Valid events keyed by ``user_id`` (the admission key), and the invalid ones."""
    out: list[tuple[str, Positioned] | _Invalid] = []
    for item in items:
        ok, checked = _validate_one(item)
        if ok:
            pos, record = checked  # type: ignore[misc]
            out.append((str(record["user_id"]), (pos, record)))
        else:
            out.append(checked)  # type: ignore[arg-type]
    return out


class Row(msgspec.Struct, gc=False):
    """One emitted row, compact: the features of ``view`` for ``key`` from ``event_timestamp`` on, as a tuple in
    spec order (``FeatureView.feature_names``). It is the changelog line as is; :meth:`feature_row` names them."""

    view: str
    key: str
    event_timestamp: datetime
    values: tuple[Any, ...]

    def feature_row(self, names: Mapping[str, Sequence[str]]) -> FeatureRow:
        return FeatureRow(self.view, self.key, self.event_timestamp,
                          dict(zip(names[self.view], self.values, strict=True)))


def _expire(name: str, key: str, state: ViewState, now: datetime | None, out: list[Row], limit: datetime | None,
            *, inclusive: bool) -> datetime | None:
    """Run the expiries before ``limit`` (or up to it), one row per distinct expiry time; the key's new clock."""
    last = state.run_expiries(limit, inclusive, partial(Row, name, key), out)
    return now if last is None or (now is not None and now >= last) else last


def _fold(name: str, key: str, state: ViewState, now: datetime | None, events: Iterable[Event],
          out: list[Row], owner: Owner | None = None, collided: list[Event] | None = None) -> datetime | None:
    """Fold one key's events (arrival order) into its state, appending sweep's rows; the key's new clock.

    With ``owner`` (a view whose keys have an owner), an event of another owner while the key is held is left out
    and appended to ``collided``, as :func:`features.state.sweep` does."""
    pending: datetime | None = None  # an arrival time whose row is not yet emitted (ties share one row)
    for e in events:
        t: datetime = e["ingest_time"]
        if now is not None and t < now:  # a live wake-up ran ahead of this event
            STATS["clock_regressions"] += 1
            log.warning("%s|%s: event %s arrived at %s, behind the key's clock %s; counted from the clock",
                        name, key, e["event_id"], t, now)
            t = now
            e = {**e, "ingest_time": t}
        if pending is not None and t != pending:
            out.append(Row(name, key, pending, state.row()))
            pending = None
        t_us = to_us(t)
        nxt = state.next_expiry_us()
        if nxt is not None and nxt < t_us:
            now = _expire(name, key, state, now, out, t, inclusive=False)
        dropped = state.advance_us(t_us)
        if owner is not None and not owner.admits(state, e):
            if collided is not None:
                collided.append(e)
            if dropped:
                pending = t
        elif state.add(e) or dropped:
            pending = t
        now = t
    if pending is not None:
        out.append(Row(name, key, pending, state.row()))
    return now


@dataclass(frozen=True)
class _Plan:
    """What the keyed steps share: the views, the rules, the clock and the routes between them."""

    own: tuple[tuple[FeatureView, frozenset[str]], ...]  # views keyed by the admission key, with their event types
    routes: tuple[Callable[[Event], tuple[str, tuple[str, Event]] | None], ...]  # to the other views' keys
    views: Mapping[str, FeatureView]
    rules: EventRules
    clock: StreamClock


class _Drops(NamedTuple):
    """The events one call of the admission step dropped."""

    records: list[DropRecord]


_Claim = tuple[str, "Event"]  # an admitted event and its source position, for the id-collision check
_ID_BUCKET_CHARS = 2  # the ids step is keyed by an id's last characters: a few hundred keys, whatever the load


class _Claims(NamedTuple):
    """The events one call of the admission step admitted, keyed by their id's bucket (:class:`_IdLogic`)."""

    items: list[tuple[str, _Claim]]


_Forward = tuple[str, tuple[str, Event]]  # an admitted event for the key (``view|key``) of a view routed on
# What one call of the admission step emits, each its own item, told apart by type (one ``branch`` step, no copies
# of the step's output for several readers): the rows of its views (a ``list``), the drops, the events routed on.
_Emitted = list[Row] | _Drops | _Claims | _Forward


_FREEZE_LOCK = threading.Lock()  # a snapshot may be frozen by its logic's worker and pickled by another's


class _Snapshot:
    """A key's recovery snapshot, copied only if it must be: copy-on-write instead of a copy per key and epoch.

    Bytewax asks every key touched in an epoch for an immutable snapshot at the epoch's end,
    whether or not recovery is on. Pickling each one cost a tenth of the dataflow's time, and most
    are never read: without recovery Bytewax drops them at once, with it the recovery writer pickles
    them within the epoch. So :meth:`_Lazy.snapshot` hands out this handle to the live state and
    keeps a weak reference to it; before the logic next mutates its state it calls
    :meth:`_Lazy.thaw`, which pickles the state into the handle *if the handle is still alive*.
    Either way the handle pickles as the ``bytes`` a copying ``snapshot`` would return, and it
    never sees a change made after it was taken.
    """

    __slots__ = ("__weakref__", "_data", "_logic")

    def __init__(self, logic: _Lazy) -> None:
        self._logic: _Lazy | None = logic
        self._data: bytes | None = None

    def freeze(self) -> bytes:
        with _FREEZE_LOCK:
            if self._data is None:
                assert self._logic is not None
                self._data, self._logic = self._logic.dump(), None
            return self._data

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        return bytes, (self.freeze(),)


class _Lazy(StatefulBatchLogic):  # type: ignore[misc]
    """A keyed logic whose snapshots are copy-on-write (:class:`_Snapshot`): ``dump`` pickles the state, and every
    method that mutates it calls :meth:`thaw` first. Subclasses set ``_snap = None`` in their ``__init__`` (one
    logic is made per key, so without a ``super().__init__`` call)."""

    __slots__ = ("_snap",)
    _snap: weakref.ref[_Snapshot] | None

    @staticmethod
    def loads(resume: bytes | _Snapshot) -> Any:
        return pickle.loads(resume.freeze() if isinstance(resume, _Snapshot) else resume)

    @abstractmethod
    def dump(self) -> bytes:
        """The key's state, pickled."""

    def thaw(self) -> None:
        """Before a mutation: copy the state into the last snapshot if anything still holds it."""
        ref = self._snap
        if ref is not None:
            self._snap = None
            snap = ref()
            if snap is not None:
                snap.freeze()

    def snapshot(self) -> _Snapshot:
        ref = self._snap
        snap = ref() if ref is not None else None
        if snap is None:  # unchanged since the last one, which is still held: hand it out again
            snap = _Snapshot(self)
            self._snap = weakref.ref(snap)
        return snap


class _UserLogic(_Lazy):
    """One user: admission (rules 2-4, with the ids it must remember for duplicates) and the ViewState of every
    view keyed by the user, in one step; admitted events of views keyed otherwise (sessions) are routed on."""

    __slots__ = ("heap", "key", "nows", "plan", "seen", "states")

    def __init__(self, plan: _Plan, resume: bytes | _Snapshot | None) -> None:
        self._snap = None
        self.plan = plan
        n = len(plan.own)
        self.key = ""
        self.seen: dict[str, datetime] = {}  # event_id -> when its copies are late anyway (EventRules.forget_after)
        self.heap: list[tuple[datetime, str]] = []
        self.states: list[ViewState | None] = [None] * n
        self.nows: list[datetime | None] = [None] * n  # each view's data clock: latest time processed
        if resume is not None:
            loaded = self.loads(resume)
            if len(loaded) != 3:  # sessions lived with their user for a while; now their own step holds them
                raise ValueError("a recovery snapshot of the users step from an older engine (with its users' "
                                 "sessions inside): the layout changed, so start from a new recovery store")
            self.key, self.seen, saved = loaded
            self.heap = [(t, i) for i, t in self.seen.items()]
            heapq.heapify(self.heap)
            for v, s in enumerate(saved):
                if s is not None:
                    self.nows[v] = s[0]
                    self.states[v] = ViewState.restore(plan.own[v][0], s[1])

    def on_batch(self, items: list[Positioned]) -> tuple[list[_Emitted], bool]:
        if self._snap is not None:
            self.thaw()
        rules, seen, heap = self.plan.rules, self.seen, self.heap
        forget_after = rules.forget_after
        admitted: list[Event] = []
        drops: list[DropRecord] = []
        claims: list[tuple[str, _Claim]] = []
        for pos, e in items:
            reason = rules.drop_reason(e)
            eid = e["event_id"]
            if reason is None and eid in seen:
                reason = Drop.DUPLICATE
            if reason is None:
                forget = forget_after(e)  # a copy may carry an unclamped, later event_time (id_retention)
                seen[eid] = forget
                heapq.heappush(heap, (forget, eid))
                admitted.append(e)
                claims.append((eid[-_ID_BUCKET_CHARS:], (pos, e)))
            else:
                drops.append(DropRecord(reason.value, pos, eid, e["ingest_time"]))
            now = e["ingest_time"]
            while heap and heap[0][0] < now:  # ids whose copies arriving from now on are late anyway
                seen.pop(heapq.heappop(heap)[1], None)
        rows: list[Row] = []
        out: list[_Emitted] = [_Drops(drops)] if drops else []
        if claims:
            out.append(_Claims(claims))
        if admitted:
            if not self.key:
                self.key = str(admitted[0]["user_id"])
            for v, (view, types) in enumerate(self.plan.own):
                mine = [e for e in admitted if e["event_type"] in types]
                if mine:
                    state = self.states[v]
                    if state is None:
                        state = self.states[v] = ViewState(view)
                    self.nows[v] = _fold(view.name, self.key, state, self.nows[v], mine, rows)
                    if state.is_empty():
                        self.states[v] = self.nows[v] = None
            for route in self.plan.routes:
                for e in admitted:
                    item = route(e)
                    if item is not None:
                        out.append(item)
        if rows:
            out.append(rows)
        return out, self._discard()

    def _discard(self) -> bool:
        return not self.seen and not any(self.states)

    def _expire_all(self, limit: datetime | None) -> list[_Emitted]:
        rows: list[Row] = []
        for v, state in enumerate(self.states):
            if state is not None:
                self.nows[v] = _expire(self.plan.own[v][0].name, self.key, state, self.nows[v], rows, limit,
                                       inclusive=True)
                if state.is_empty():
                    self.states[v] = self.nows[v] = None
        return [rows] if rows else []

    def on_notify(self) -> tuple[list[_Emitted], bool]:
        self.thaw()
        clock = self.plan.clock
        out: list[_Emitted] = []
        if clock.is_live:
            due = clock.due()
            self._forget(due)
            out = self._expire_all(due)
        return out, self._discard()

    def on_eof(self) -> tuple[list[_Emitted], bool]:
        self.thaw()
        clock = self.plan.clock
        out: list[_Emitted] = []
        if clock.flush_at_eof:  # the clock runs on to ``until``: ids whose lateness ran out by then go too
            self._forget(clock.until)
            out = self._expire_all(clock.until)
        return out, self._discard()

    def _forget(self, limit: datetime | None) -> None:
        """Forget the ids whose copies arriving after ``limit`` would be late anyway (all if ``None``)."""
        heap, seen = self.heap, self.seen
        while heap and (limit is None or heap[0][0] < limit):
            seen.pop(heapq.heappop(heap)[1], None)

    def notify_at(self) -> datetime | None:
        clock = self.plan.clock
        if clock.offset is None:  # not live
            return None
        times = [s.next_expiry() for s in self.states if s is not None]
        if self.heap:
            times.append(self.heap[0][0])
        due = min((t for t in times if t is not None), default=None)
        return None if due is None else clock.wall(due)

    def dump(self) -> bytes:
        saved = [None if s is None else (self.nows[v], s.snapshot()) for v, s in enumerate(self.states)]
        return pickle.dumps((self.key, self.seen, saved), protocol=pickle.HIGHEST_PROTOCOL)


class _ViewLogic(_Lazy):
    """The ViewState of one ``view|key`` (views not keyed by the user: sessions), emitting sweep's rows; see the
    module docstring for timers. Each call emits one list of rows (or nothing), and for a view whose keys have an
    owner (a session is one user's) the ``session_collision`` records of the events another user sent while the
    key was held (:class:`features.state.Owner`): every user's events of a key meet here, in one state."""

    __slots__ = ("clock", "key", "now", "owner", "state", "view_name", "views")

    def __init__(self, views: Mapping[str, FeatureView], clock: StreamClock, resume: bytes | _Snapshot | None) -> None:
        self._snap = None
        self.views = views
        self.clock = clock
        self.state: ViewState | None = None
        self.view_name = ""
        self.key = ""
        self.now: datetime | None = None  # the key's data clock: latest time processed
        self.owner: Owner | None = None
        if resume is not None:
            self.view_name, self.key, self.now, snapshot, owner = self.loads(resume)
            view = views[self.view_name]
            self.state = ViewState.restore(view, snapshot)
            self.owner = owner_of(view)
            if self.owner is not None:
                self.owner.owner = owner

    def on_batch(self, items: list[tuple[str, Event]]) -> tuple[list[list[Row] | _Drops], bool]:
        if self._snap is not None:
            self.thaw()
        if self.state is None:
            self.view_name, first = items[0]
            view = self.views[self.view_name]
            self.key = str(first[view.entity.join_key])
            self.state = ViewState(view)
            self.owner = owner_of(view)
        out: list[Row] = []
        collided: list[Event] = []
        events = [e for _, e in items]
        if len(events) > 1:
            # the users step emits a batch's events user by user: one key's events from two users (a shared
            # session) come grouped by user, and the owner rule must see them in arrival order, as sweep does
            events.sort(key=arrival_order_key)
        self.now = _fold(self.view_name, self.key, self.state, self.now, events, out, self.owner, collided)
        emitted: list[list[Row] | _Drops] = [out] if out else []
        if collided:
            field = self.owner.field if self.owner is not None else ""
            # one record per event (its user and id), however many views left it out: the drops log counts ids
            emitted.append(_Drops([DropRecord(Collision.SESSION_ID.value, f"{e.get(field)}|{e['event_id']}#session",
                                              e["event_id"], e["ingest_time"]) for e in collided]))
        return emitted, self.state.is_empty()

    def _expire(self, limit: datetime | None) -> list[list[Row] | _Drops]:
        assert self.state is not None
        out: list[Row] = []
        self.now = _expire(self.view_name, self.key, self.state, self.now, out, limit, inclusive=True)
        return [out] if out else []

    def on_notify(self) -> tuple[list[list[Row] | _Drops], bool]:
        self.thaw()
        out = self._expire(self.clock.due()) if self.state is not None and self.clock.is_live else []
        return out, self.state is None or self.state.is_empty()

    def on_eof(self) -> tuple[list[list[Row] | _Drops], bool]:
        self.thaw()
        out = self._expire(self.clock.until) if self.state is not None and self.clock.flush_at_eof else []
        return out, self.state is None or self.state.is_empty()

    def notify_at(self) -> datetime | None:
        if self.clock.offset is None or self.state is None:  # not live
            return None
        nxt = self.state.next_expiry()
        return None if nxt is None else self.clock.wall(nxt)

    def dump(self) -> bytes:
        state = self.state
        assert state is not None
        owner = None if self.owner is None else self.owner.owner
        return pickle.dumps((self.view_name, self.key, self.now, state.snapshot(), owner),
                            protocol=pickle.HIGHEST_PROTOCOL)


class _IdLogic(_Lazy):
    """One bucket of event ids (their last characters): which user first admitted each id, for ``id_collision``
    (:class:`features.semantics.IdCollisions`; ids are unique per user, so a collision is counted, not dropped).
    Each call emits the collisions' records (or nothing). Ids are forgotten as admission forgets them: a bucket
    is a few hundred keys whatever the load, so Bytewax's per-key costs do not grow with the users."""

    __slots__ = ("ids", "limit", "now", "rules")

    def __init__(self, rules: EventRules, resume: bytes | _Snapshot | None) -> None:
        self._snap = None
        self.rules = rules
        self.ids = IdCollisions(rules)
        self.now: datetime | None = None  # the latest arrival seen
        self.limit = _ID_FORGET_AT  # sweep the forgotten ids once this many are held (then twice what is left)
        if resume is not None:
            self.ids.first, self.now = self.loads(resume)

    def on_batch(self, items: list[_Claim]) -> tuple[list[list[DropRecord]], bool]:
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
            self.limit = max(_ID_FORGET_AT, 2 * len(self.ids.first))
        return ([out] if out else []), False

    def on_eof(self) -> tuple[list[list[DropRecord]], bool]:
        return [], True

    def dump(self) -> bytes:
        return pickle.dumps((self.ids.first, self.now), protocol=pickle.HIGHEST_PROTOCOL)


_ID_FORGET_AT = 4096  # a bucket sweeps its forgotten ids once it holds this many (amortised, not per event)


# ------------------------------------------------------------------------------------------- sinks
def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # Kairos times are UTC already: "...+00:00"
        return (value if value.utcoffset() == timedelta(0) else value.astimezone(UTC)).isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_json_default)
_LINES = _ENCODER  # ``encode_lines``: a list of rows (or records) to JSON lines in one call


def _encode_drops(drops: Sequence[DropRecord]) -> bytes:
    return _ENCODER.encode_lines([d._asdict() for d in drops])


def _dumps(obj: Any) -> str:
    """Compact JSON (msgspec: ~5x the standard library; UTC datetimes as RFC 3339 ``...Z``)."""
    return _ENCODER.encode(obj).decode()


def _part_of(key: str) -> int:
    return zlib.adler32(key.encode())


def _lines_by_part(parts: int) -> Callable[[list[tuple[str, list[Row]]]], list[tuple[str, bytes]]]:
    """A batch of ``(state key, rows)`` as one encoded chunk per log part: a key goes to the part its key
    would route it to (its rows stay together, in order), and the sink routes 4 items instead of one per key."""

    def encode(xs: list[tuple[str, list[Row]]]) -> list[tuple[str, bytes]]:
        chunks: dict[int, list[Row]] = {}
        for key, rows in xs:
            part = _part_of(key) % parts
            chunk = chunks.get(part)
            if chunk is None:
                chunks[part] = list(rows)
            else:
                chunk.extend(rows)
        return [(str(part), _LINES.encode_lines(rows)) for part, rows in chunks.items()]

    return encode


class _TruncatingFile(StatefulSinkPartition[bytes, int]):  # type: ignore[misc]
    """A JSON-lines file truncated to its snapshot on resume: lines are written exactly once.

    Items are encoded lines, each ending in a newline (one item may hold many lines)."""

    def __init__(self, path: Path, resume_state: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a+b")  # noqa: SIM115 - closed in close()
        self._fh.truncate(resume_state or 0)
        self._fh.seek(0, 2)

    def write_batch(self, values: list[bytes]) -> None:
        self._fh.write(b"".join(values))
        self._fh.flush()

    def snapshot(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()


class JsonlLogSink(FixedPartitionedSink[bytes, int]):  # type: ignore[misc]
    """``(key, lines)`` items (encoded JSON lines) into ``parts`` files ``<dir>/part-<i>.jsonl`` by key
    (exactly once with recovery). ``by_part``: the items' keys are part indexes already (:func:`_lines_by_part`)."""

    def __init__(self, directory: Path, parts: int = DEFAULT_PARTS, *, by_part: bool = False) -> None:
        self.directory = Path(directory)
        self.parts = parts
        self.by_part = by_part

    def list_parts(self) -> list[str]:
        return [f"part-{i}.jsonl" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key) if self.by_part else _part_of(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TruncatingFile:
        return _TruncatingFile(self.directory / for_part, resume_state)


class _DeadLetterPartition(StatefulSinkPartition[Invalid, int]):  # type: ignore[misc]
    def __init__(self, path: Path, resume_state: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            fh.truncate(resume_state or 0)
        self.store = DeadLetterStore(path=path, source="bytewax")

    def write_batch(self, values: list[Invalid]) -> None:
        for pos, payload, errors in values:
            self.store.put(payload if isinstance(payload, str | dict) else repr(payload),
                           [FieldError(field=f, problem=f"{p} (at {pos})") for f, p in errors])

    def snapshot(self) -> int:
        return self.store.path.stat().st_size if self.store.path.exists() else 0


class DeadLetterSink(FixedPartitionedSink[Invalid, int]):  # type: ignore[misc]
    """Invalid events into ``DeadLetterStore`` files ``<dir>/bytewax-<i>.jsonl`` (exactly once with recovery)."""

    def __init__(self, directory: Path, parts: int = 1) -> None:
        self.directory = Path(directory)
        self.parts = parts

    def list_parts(self) -> list[str]:
        return [f"bytewax-{i}.jsonl" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return _part_of(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.directory / for_part, resume_state)


class _OnlinePartition(StatefulSinkPartition[FeatureRow, None]):  # type: ignore[misc]
    """Writes to Feast on a background thread, newest row per key, changed features only; flushed at every
    snapshot.

    Feast's online write costs a fixed amount per feature (SQLite: one upsert each), so rows wait here while a
    write is in flight and only each key's newest is written next: under load the batches grow and coalesce
    more, and the writer keeps up. Of a key's row only the features that differ from what this partition
    wrote for the key earlier in the same epoch are written (an event moves a few of a view's features); a
    key's first row in an epoch is written whole. So whatever else wrote the store (a batch materialization,
    another run) is overwritten by the key's next rows as it would be with whole rows, but for one epoch.
    ``snapshot`` (the end of every epoch) waits until everything received is written, so a recovery snapshot
    never covers rows that were only buffered: after a crash they are emitted again.
    """

    def __init__(self, settings: Settings, views: Mapping[str, FeatureView]) -> None:
        from feast import FeatureStore

        from pipelines.store.online import write_online_rows

        self.views = views
        self.write_online = write_online_rows
        self.store = FeatureStore(repo_path=str(settings.feature_repo_path))
        # SQLite has one writer at a time: writers of this process take turns instead of timing out on its lock
        self.lock = _SQLITE_WRITE_LOCK if settings.online_store.type == "sqlite" else contextlib.nullcontext()
        self._pending: dict[tuple[str, str], FeatureRow] = {}
        # view|key -> the values last written for it in this epoch, least recently written first (the writer
        # thread's while it writes; cleared at each snapshot, with the writer idle)
        self._written: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._busy = False
        self._closing = False
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="kairos-online-writer", daemon=True)
        self._thread.start()

    def write_batch(self, values: list[FeatureRow]) -> None:
        with self._cv:
            self._raise()
            for r in values:  # a key's rows come in time order; the store keeps one row per key
                prev = self._pending.get((r.view, r.key))
                if prev is None or r.event_timestamp >= prev.event_timestamp:
                    self._pending[(r.view, r.key)] = r
            self._cv.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError("writing the Feast online store failed") from self._error

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._pending:
                    return
                batch, self._pending, self._busy = self._pending, {}, True
            try:
                self._write(batch.values())
            except BaseException as exc:  # surfaced to the dataflow by the next write_batch/snapshot
                log.exception("writing %d rows to the Feast online store failed", len(batch))
                with self._cv:
                    self._error = exc
                    self._busy = False
                    self._cv.notify_all()
                return
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _write(self, rows: Iterable[FeatureRow]) -> None:
        written = self._written
        by_view: dict[str, list[dict[str, Any]]] = defaultdict(list)
        done: list[tuple[tuple[str, str], Mapping[str, Any]]] = []
        for r in rows:
            key = (r.view, r.key)
            last = written.get(key)
            if last is None:
                changed: Mapping[str, Any] = r.values
            else:
                changed = {n: v for n, v in r.values.items() if n not in last or last[n] != v}
                if not changed:  # the store already holds every value of this row
                    continue
            view = self.views[r.view]
            by_view[r.view].append({view.entity.join_key: r.key, EVENT_TIMESTAMP: r.event_timestamp, **changed})
            done.append((key, r.values))
        for name, batch in by_view.items():
            for attempt in range(_LOCKED_RETRIES + 1):
                try:
                    with self.lock:
                        self.write_online(self.store, self.views[name], batch)
                    break
                except sqlite3.OperationalError as exc:  # another process holds SQLite's write lock too long
                    if "locked" not in str(exc) or attempt == _LOCKED_RETRIES:
                        raise
                    log.warning("online store locked, retrying the write of %d %s rows", len(batch), name)
                    time.sleep(0.1 * (attempt + 1))
        for key, values in done:  # only once written: a failed write leaves nothing believed written
            written.pop(key, None)  # re-inserted last: the dict stays in order of the last write
            written[key] = values
        while len(written) > WRITTEN_KEYS:
            del written[next(iter(written))]

    def flush(self) -> None:
        with self._cv:
            while (self._pending or self._busy) and self._error is None:
                self._cv.wait()
            self._raise()

    def snapshot(self) -> None:
        self.flush()
        with self._cv:  # the writer is idle until the next write_batch: the next epoch writes keys whole again
            self._written.clear()

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join()


class OnlineStoreSink(FixedPartitionedSink[FeatureRow, None]):  # type: ignore[misc]
    """Rows into the Feast online store (``pipelines.store.online.write_online_rows``), newest per key, in batches.

    ``parts`` writers (default: one per view), each a thread of the worker that owns it;
    a view's rows always go to the same writer. The repo must have been applied
    (``python -m kairos apply``).
    """

    def __init__(self, settings: Settings, views: Mapping[str, FeatureView], parts: int | None = None) -> None:
        self.settings = settings
        self.views = dict(views)
        self.parts = parts or len(self.views)
        self._index = {name: i for i, name in enumerate(sorted(self.views))}

    def list_parts(self) -> list[str]:
        return [f"online-{i}" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        """By view: each writer owns whole views (a view's Feast table has one writer)."""
        return self._index[item_key.split(KEY_SEP, 1)[0]]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _OnlinePartition:
        return _OnlinePartition(self.settings, self.views)


class _MemoryPartition(StatelessSinkPartition[Any]):  # type: ignore[misc]
    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def write_batch(self, items: list[Any]) -> None:
        self.out.extend(items)


class MemorySink(DynamicSink[Any]):  # type: ignore[misc]
    """Append items to a list (tests; one process)."""

    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MemoryPartition:
        return _MemoryPartition(self.out)


# ------------------------------------------------------------------------------------------- reading the logs
def encode_row(row: FeatureRow) -> str:
    return _dumps({"view": row.view, "key": row.key, EVENT_TIMESTAMP: row.event_timestamp, "values": row.values})


def decode_row(line: str | bytes, registry: Registry = REGISTRY) -> FeatureRow:
    """A changelog line back to a row with spec-typed values (timestamps as UTC datetimes).

    ``values`` is a list in spec order (:class:`Row`, what the dataflow writes) or an object by name."""
    obj = json.loads(line)
    view = registry.view(obj["view"])
    values = obj["values"]
    if isinstance(values, list):
        names = view.feature_names
        if len(values) != len(names):
            raise ValueError(f"a {view.name} row has {len(values)} values, the spec {len(names)} features")
        values = dict(zip(names, values, strict=True))
    for f in view.features:
        if f.dtype == "timestamp" and values.get(f.name) is not None:
            values[f.name] = parse_time(values[f.name])
    return FeatureRow(obj["view"], obj["key"], parse_time(obj[EVENT_TIMESTAMP]), values)


def _lines(directory: Path) -> Iterable[bytes]:
    for path in sorted(Path(directory).glob("part-*.jsonl")):
        with open(path, "rb") as fh:
            yield from (line for line in fh if line.strip())


def read_changelog(directory: Path, registry: Registry = REGISTRY) -> list[FeatureRow]:
    """Every row of a changelog directory (per key in emission order)."""
    return [decode_row(line, registry) for line in _lines(directory)]


def timelines(rows: Iterable[FeatureRow]) -> dict[tuple[str, str], dict[datetime, dict[str, Any]]]:
    """``(view, key) -> {change point: values}``; a change point written twice keeps its last row."""
    out: dict[tuple[str, str], dict[datetime, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        out[(r.view, r.key)][r.event_timestamp] = r.values
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def read_drops(directory: Path) -> dict[str, int]:
    """Drops per reason (``late``, ``duplicate``, ``no_consent``, ``invalid``) and collisions per kind
    (``id_collision``, ``session_collision``: counted, not dropped), each record id once."""
    seen: dict[str, str] = {}
    for line in _lines(directory):
        obj = json.loads(line)
        seen[obj["id"]] = obj["reason"]
    counts = Counter(seen.values())
    return {r: counts.get(r, 0) for r in (*(d.value for d in Drop), INVALID, *(c.value for c in Collision))}


# ------------------------------------------------------------------------------------------- the builder
def relax_gc() -> None:
    """Run the process that runs the dataflow without the cyclic collector.

    The keyed state is millions of small containers that form no reference cycles: reference counting
    frees them. The cyclic collector can only walk them, and walks each new one at least once: at 1M users
    (one new user and session per event) its three young collections took 10 s of a 112 s run, even with
    a young collection only every 10M allocations. So it is off, and the objects alive now (modules, specs)
    are moved out of its sight. That is only safe because nothing the engine does per event, batch or epoch
    leaves cyclic garbage; tests/integration/test_no_cycles.py runs the dataflow with the collector off
    and checks what ``gc.collect()`` then finds does not grow with the events.

    For a process that exists to run the dataflow (``python -m bytewax.run``); :meth:`BytewaxFeatureBuilder.run`
    uses :func:`_relaxed_gc`.
    """
    gc.disable()
    gc.freeze()


@contextlib.contextmanager
def _relaxed_gc() -> Iterator[None]:
    """:func:`relax_gc` for the duration of an in-process run, then the caller's collector as it was."""
    enabled = gc.isenabled()
    relax_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


_Events = TypeVar("_Events")
_Rows = TypeVar("_Rows")


class FeatureBuilder(ABC, Generic[_Events, _Rows]):  # TEMPORARY: until the stream fills MaterializationEngine
    def __init__(self, settings: Settings, registry: Registry = REGISTRY) -> None:
        self.settings = settings
        self.registry = registry
        self.rules = EventRules(allowed_lateness=settings.events.allowed_lateness)
        self.progress: Callable[[str], None] = lambda _message: None



class BytewaxFeatureBuilder(FeatureBuilder[Stream, Stream]):  # type: ignore[misc]
    """Compile every feature view into one Bytewax dataflow.

    ``build(source)`` builds the dataflow (:attr:`flow`) from the hooks; ``run`` runs it
    to the end of a finite source and reports from the logs. ``clock`` sets the timers
    (replay by default), ``outputs`` the sinks (changelog and drops logs by default).
    """

    def __init__(self, settings: Settings, registry: Registry = REGISTRY, *, clock: StreamClock | None = None,
                 outputs: StreamOutputs | None = None, flow_id: str = "kairos_features") -> None:
        super().__init__(settings, registry)
        self.clock = clock or StreamClock()
        self.outputs = outputs or StreamOutputs.from_settings(settings)
        self.flow = Dataflow(flow_id)
        self._views: dict[str, FeatureView] = {}
        self._drops: list[Stream] = []  # encoded drop records from validate and admit, for the drops log
        self._rows: list[Stream] = []  # (state key, [Row, ...]) from the user step and the other keys' step
        self._built = False

    # -- sources ---------------------------------------------------------------------------------
    def default_source(self, *, path: str | Path | None = None, tail: bool = True, rate: float | None = None) -> Source:
        """The source the settings name: the replay file, or the Kafka topic."""
        stream = self.settings.stream
        if stream.source == "kafka":
            if not stream.brokers:
                raise ValueError("stream.brokers is required when stream.source is kafka")
            return kafka_source(stream.brokers, stream.topic, tail=tail, batch_size=stream.batch_size)
        return JsonlReplaySource(path or self.settings.data_path / "stream.jsonl", batch_size=stream.batch_size,
                                 rate=rate)

    # -- hooks -----------------------------------------------------------------------------------
    def validate(self, source: Stream, report: BuildReport) -> Stream:
        """Parse and validate, a batch at a time; invalid payloads go to the dead-letter store and the drops log.
        Valid events come out keyed by ``user_id``, the admission key."""
        checked = op.flat_map_batch("validate", source, _validate_batch)
        invalid = op.flat_map_batch("validate_invalid", checked, lambda xs: [x for x in xs if type(x) is _Invalid])
        op.output("dead_letters", op.flat_map_batch("dead_letters_key", invalid, lambda xs: [(x.pos, x) for x in xs]),
                  DeadLetterSink(self.outputs.dead_letter_dir))
        self._drops.append(op.flat_map_batch("validate_drops", invalid, lambda xs: [
            (x.pos, _encode_drops([DropRecord(INVALID, x.pos, None, None)])) for x in xs]))
        report.dropped.setdefault(INVALID, 0)
        return op.flat_map_batch("validate_valid", checked, lambda xs: [x for x in xs if type(x) is tuple])

    def admit(self, events: Stream, report: BuildReport) -> Stream:
        """Consent, lateness, then first arrival, keyed by ``user_id``; drops go to the drops log.

        The same keyed step (:class:`_UserLogic`) keeps the ViewState of every view keyed by ``user_id`` and of
        every view keyed by an entity the user owns (sessions; ``Entity.owner``), their rows going to
        :attr:`_rows`: one state object per user, one exchange. Returns the admitted events routed to the keys
        (``view|key``) of any other view (none in the catalogue: then the step's output itself, unused)."""
        own = tuple((v, v.event_types()) for v in self._views.values() if v.entity.join_key == ADMISSION_KEY)
        plan = _Plan(own=own, routes=tuple(self.router(v) for v in self._routed()), views=dict(self._views),
                     rules=self.rules, clock=self.clock)
        decided = op.stateful_batch("users", events, lambda resume: _UserLogic(plan, resume))
        # one reader splits the step's output by type (each more reader of a stream gets a copy of every item)
        rows = op.branch("user_rows", decided, lambda kv: type(kv[1]) is list)
        self._rows.append(rows.trues)
        claims = op.branch("user_claims", rows.falses, lambda kv: type(kv[1]) is _Claims)
        rest = claims.falses
        by_id = op.flat_map_batch("id_claims", claims.trues, lambda xs: [c for _, cl in xs for c in cl.items])
        rules = self.rules
        collided = op.stateful_batch("ids", by_id, lambda resume: _IdLogic(rules, resume))
        self._drops.append(op.flat_map_batch("id_collisions", collided, lambda xs: [
            (k, _encode_drops(d)) for k, d in xs]))
        if plan.routes:
            split = op.branch("admit_drops_or_routed", rest, lambda kv: type(kv[1]) is _Drops)
            rest, routed = split.trues, op.flat_map_batch("route", split.falses, lambda xs: [f for _, f in xs])
        else:
            routed = rest  # no view is routed on: unread
        self._drops.append(op.flat_map_batch("admit_drops", rest, lambda xs: [
            (k, _encode_drops(d.records)) for k, d in xs]))
        for d in Drop:
            report.dropped.setdefault(d.value, 0)
        return routed

    def _routed(self) -> list[FeatureView]:
        """The views whose keys need a keyed step of their own: neither the user's nor owned by the user."""
        return [v for v in self._views.values() if v.entity.join_key != ADMISSION_KEY]

    @staticmethod
    def router(view: FeatureView) -> Callable[[Event], tuple[str, tuple[str, Event]] | None]:
        """The view's item for an event: ``("view|key", (view, event))``, or None if the view does not read it."""
        join_key, name = view.entity.join_key, view.name
        types = view.event_types()

        def route(e: Event) -> tuple[str, tuple[str, Event]] | None:
            k = e.get(join_key)
            if k is None or e["event_type"] not in types:  # no aggregation of the view reads it
                return None
            return f"{name}{KEY_SEP}{k}", (name, e)

        return route

    def key_by_entity(self, view: FeatureView, events: Stream) -> Stream:
        """Register ``view``: :meth:`admit` routes events to its keys (arrival order per key is kept)."""
        self._views[view.name] = view
        return events

    def aggregate(self, view: FeatureView, keyed: Stream) -> Stream:
        """A :class:`ViewState` per ``view|key`` for the views keyed neither by the user nor by an entity the user
        owns (one step serves them all). Each call emits one list of rows, keyed by its state key."""
        views, clock = dict(self._views), self.clock
        return op.stateful_batch("keys", keyed, lambda resume: _ViewLogic(views, clock, resume))

    def write(self, view: FeatureView, rows: Stream) -> int:
        """Attach the sinks (changelog, Feast, memory) to the rows of every view; counts come from :meth:`report`.

        ``rows`` carries ``(state key, [Row, ...])`` items: the changelog encodes a batch's rows in one call per
        log file (:func:`_lines_by_part`)."""
        out = self.outputs
        names = {v.name: v.feature_names for v in self._views.values()}
        if out.changelog_dir is not None:
            lines = op.flat_map_batch("changelog_encode", rows, _lines_by_part(out.parts))
            op.output("changelog", lines, JsonlLogSink(out.changelog_dir, out.parts, by_part=True))
        if out.online:
            keyed = op.flat_map_batch("online_rows", rows, lambda xs: [
                (f"{r.view}{KEY_SEP}{r.key}", r.feature_row(names)) for _, rs in xs for r in rs])
            op.output("online_store", keyed, OnlineStoreSink(self.settings, self._views, out.online_parts))
        if out.memory is not None:
            op.output("memory", op.flat_map_batch("memory_rows", rows, lambda xs: [
                r.feature_row(names) for _, rs in xs for r in rs]), MemorySink(out.memory))
        return 0

    # -- the dataflow ----------------------------------------------------------------------------
    def build(self, source: Source | Stream, views: Sequence[FeatureView] | None = None) -> BuildReport:
        """Build the dataflow (once) into :attr:`flow`: the hooks wired for every view, as one graph."""
        if self._built:
            raise RuntimeError("this builder already built its dataflow; make a new builder")
        self._built = True
        views = list(views or self.registry.views)
        report = BuildReport()
        stream = source if isinstance(source, Stream) else op.input("source", self.flow, source)
        for v in views:
            self.key_by_entity(v, stream)
        routed = self.admit(self.validate(stream, report), report)
        if self._routed():
            keyed = op.branch("key_rows", self.aggregate(views[0], routed), lambda kv: type(kv[1]) is list)
            self._rows.append(keyed.trues)
            self._drops.append(op.flat_map_batch("key_collisions", keyed.falses, lambda xs: [
                (k, _encode_drops(d.records)) for k, d in xs]))
        rows = self._rows[0] if len(self._rows) == 1 else op.merge("rows", *self._rows)
        self.write(views[0], rows)
        drops = op.merge("drops", *self._drops)
        op.output("drops_log", drops, JsonlLogSink(self.outputs.drops_dir, self.outputs.parts))
        return report

    def dataflow(self, source: Source | None = None, views: Sequence[FeatureView] | None = None) -> Dataflow:
        self.build(source if source is not None else self.default_source(), views)
        return self.flow

    def run(self, source: Source | None = None, *, workers: int | None = None,
            epoch_interval: timedelta | None = None, recovery: RecoveryConfig | None = None) -> BuildReport:
        """Build and run to the end of a finite source on ``workers`` threads (default: settings)."""
        from bytewax.run import cli_main

        t0 = time.perf_counter()
        flow = self.dataflow(source)
        with _relaxed_gc():
            cli_main(flow, workers_per_process=workers or self.settings.stream.workers,
                     epoch_interval=epoch_interval or timedelta(seconds=10), recovery_config=recovery)
        report = self.report()
        report.seconds = time.perf_counter() - t0
        return report

    def report(self) -> BuildReport:
        """Rows per view (distinct change points) and drops per reason, from the logs on disk."""
        counts = read_drops(self.outputs.drops_dir)
        collisions = {c.value for c in Collision}
        report = BuildReport(dropped={k: v for k, v in counts.items() if k not in collisions},
                             collisions={k: v for k, v in counts.items() if k in collisions})
        if self.outputs.changelog_dir is not None:
            for (view, _key), points in timelines(read_changelog(self.outputs.changelog_dir, self.registry)).items():
                report.views[view] = report.views.get(view, 0) + len(points)
        return report


# ------------------------------------------------------------------------------------------- entry points
def build_flow(source: str | None = None, path: str | None = None, *, brokers: str | None = None,
               topic: str | None = None, tail: bool = True, live: bool | None = None,
               offset_seconds: float | None = None, grace_seconds: float = 2.0, until: str | None = None,
               flush_at_eof: bool = True, online: bool | None = None,
               changelog: str | None = None, drops: str | None = None, rate: float | None = None,
               views: Sequence[str] | None = None, parts: int = DEFAULT_PARTS) -> Dataflow:
    """The dataflow for ``python -m bytewax.run "pipelines.stream.engine:build_flow(...)"``.

    Defaults come from the settings (``stream.source``, ``brokers``, ``topic``; the
    replay file ``data_path/stream.jsonl``). ``live`` (default: a tailing Kafka source, or
    an ``offset_seconds``) turns on wall-clock wake-ups for expiries: wall time = data
    time + ``offset_seconds`` (default 0: ``ingest_time`` is wall time; a replay of
    history at its own pace passes now minus its first arrival). ``online`` (default:
    live) writes the Feast online store, applying the repo first if it was never applied.
    ``until`` is an ISO time bounding the EOF flush; ``changelog=''`` turns the changelog off.
    """
    overrides: dict[str, Any] = {}
    if source or brokers or topic:
        base = load_settings().stream
        overrides["stream"] = base.model_copy(update={k: v for k, v in
                                                      (("source", source), ("brokers", brokers), ("topic", topic))
                                                      if v is not None}).model_dump()
    settings = load_settings(**overrides)
    is_kafka = settings.stream.source == "kafka"
    live = (is_kafka and tail) or offset_seconds is not None if live is None else live
    online = live if online is None else online
    offset = timedelta(seconds=offset_seconds or 0.0) if live else None
    clock = StreamClock(offset=offset, grace=timedelta(seconds=grace_seconds),
                        until=parse_time(until) if until else None, flush_at_eof=flush_at_eof)
    outputs = StreamOutputs.from_settings(settings, online=online)
    if changelog is not None:
        outputs.changelog_dir = Path(changelog) if changelog else None
    if drops:
        outputs.drops_dir = Path(drops)
    outputs.parts = parts
    if online and not (settings.data_path / "registry.db").exists():
        from pipelines.store.repo import apply_repo

        apply_repo(settings)
    builder = BytewaxFeatureBuilder(settings, clock=clock, outputs=outputs)
    relax_gc()  # this process runs the dataflow (python -m bytewax.run)
    chosen = [REGISTRY.view(v) for v in views] if views else None
    return builder.dataflow(builder.default_source(path=path, tail=tail, rate=rate), chosen)


def __getattr__(name: str) -> Any:
    """``flow``: the settings' dataflow, built on first access (``python -m bytewax.run pipelines.stream.engine``)."""
    if name == "flow":
        return build_flow()
    raise AttributeError(name)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipelines.stream.engine",
                                description="Reports of the Bytewax engine (run it with python -m bytewax.run)")
    p.add_argument("command", choices=["report"])
    p.add_argument("--changelog", type=Path, default=None)
    p.add_argument("--drops", type=Path, default=None)
    a = p.parse_args(argv)
    settings = load_settings()
    outputs = StreamOutputs.from_settings(settings)
    builder = BytewaxFeatureBuilder(settings, outputs=StreamOutputs(
        changelog_dir=a.changelog or outputs.changelog_dir, drops_dir=a.drops or outputs.drops_dir,
        dead_letter_dir=outputs.dead_letter_dir))
    report = builder.report()
    print(json.dumps({"rows": report.views, "dropped": report.dropped}, indent=2))


if __name__ == "__main__":
    main()
