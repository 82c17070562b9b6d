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
  arrival order, as ``kairos simulate --jsonl`` writes it) or a Kafka
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
  (:class:`~pipelines.stream.logic.IdLogic`), which counts an id first admitted under another user as an
  ``id_collision`` in the drops log (reported apart from the drops: it still counts).
* **Aggregation** keeps one :class:`ViewState` per view and key. The views keyed by
  ``user_id`` live in the admission step itself (:class:`~pipelines.stream.logic.UserLogic`: one keyed state per
  user, no second exchange). A view of any other entity (sessions) gets the admitted events
  routed to a second keyed step, ``view|key`` (:class:`~pipelines.stream.logic.KeyLogic`), where every user's
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
in :data:`pipelines.stream.types.STATS` (``clock_regressions``). Likewise live admission forgets an id by the
wall clock, ``grace`` after its lateness ran out. Replays never do either.

Ordering: a key's events must reach its state in arrival order. The replay file is in
arrival order; :func:`pipelines.ingest.kafka.publish_to_kafka` keys messages by ``user_id`` so a user's events
(and so a session's, which belongs to one user) stay in one partition, in order. Every
event of a key then travels one path (source partition -> the user's worker, and for a
view routed on, -> the key's worker), and Bytewax keeps the order of items between two
workers and processes epochs in order.

Outputs
-------
* the **changelog** (JSON lines, ``settings.data_path/stream/changelog/part-*.jsonl``):
  every emitted row with its view, key, ``event_timestamp`` and all its values (a list in
  the view's feature order; :func:`pipelines.stream.changelog.decode_row` names them); the parity record;
* the **drops log** (``.../stream/drops/``): one line per late, duplicate, non-consented
  or invalid event, named by its source position; :func:`pipelines.stream.changelog.read_drops` counts them;
* **dead letters** (``settings.dead_letter_path/bytewax-*.jsonl``): the payload and field
  errors of each invalid event, through :class:`pipelines.ingest.eventlog.DeadLetterStore`;
* the **Feast online store**, through ``pipelines.store.online.write_online_rows``: one
  background writer per view writes the newest row of each key that changed while its
  previous write was in flight, and of it only the features that changed since the key's
  previous write in the epoch (Feast's SQLite store costs ~14 us per feature here, so batches
  grow and coalesce under load instead of queueing);
* an in-memory list for tests.

* the **trigger output** (:mod:`pipelines.stream.triggers`): every firing of the triggers of
  :mod:`features.trigger_catalog`, which the keyed steps fire by themselves (user triggers in ``users``,
  a session view's conditions in ``keys``, session absence triggers in a ``triggers`` step keyed by
  ``join_key|key``; deadlines in data time in a replay, on the wall clock live, like the expiries):
  the embedded trigger log (``settings.trigger_log_path/part-*.jsonl``, one firing a line, exactly once
  with recovery) or, with ``stream.trigger_output: kafka``, the topic ``stream.trigger_topic`` keyed by
  ``fire_id`` (at least once: consumers deduplicate by the key, as
  :func:`pipelines.stream.triggers.read_triggers` does on read for the log).

The file sinks are Bytewax partitioned sinks that truncate to their snapshot on resume,
so with recovery they hold every row exactly once. The online writers drain at every
snapshot (the end of each epoch), so a snapshot never covers rows that were only
buffered; rows replayed after a resume are upserts of values already written.

Running it::

    python -m bytewax.run pipelines.stream.flow:flow -w 2
    python -m bytewax.recovery RECOVERY_DIR 1          # once, then run with recovery:
    python -m bytewax.run "pipelines.stream.flow:build_flow(source='kafka')" -r RECOVERY_DIR -s 5 -b 0
    kairos stream --report-only     # rows per view and drops per reason, from the logs

The engine's hooks (:class:`pipelines.engine.MaterializationEngine`) map onto this graph
----------------------------------------------------------------------------------------
``plan`` gives one :class:`~pipelines.engine.Step` per keyed state the stream keeps: ``users`` (key
``user_id``: the views keyed by the user) and, if any view is keyed otherwise, ``keys`` (key ``view|key``).
``read`` is the input, ``validate`` the decode step. ``admit`` adds the ``users`` keyed step, which admits
*and* keeps the user-keyed views' state in one state object per user (one exchange: splitting them would
cost a second exchange and a second state per user); it returns that step's output, the admitted,
user-keyed stream (:class:`UserStreams`). For the ``users`` step, ``key_by_entity`` is that stream's rows
(already keyed by user) and ``aggregate`` takes them as they are: the aggregation ran in the fused step.
For ``keys``, ``key_by_entity`` routes the admitted events to ``view|key`` and ``aggregate`` adds the keyed
step. ``write`` encodes a step's rows for each sink and returns the handle (:class:`StepSinks`);
``finish`` attaches each sink once for all steps (one writer per log file) and the drops log. Nothing is
counted until the dataflow runs: :meth:`BytewaxEngine.run` reads the counts from the logs.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from conf.settings import Settings
from features.registry import REGISTRY, Registry
from features.semantics import Collision, Drop
from features.spec import FeatureView
from pipelines.engine import BuildReport, MaterializationEngine, Step
from pipelines.stream.changelog import encode_drops, lines_by_part, read_changelog, read_drops, timelines
from pipelines.stream.decode import validate_batch
from pipelines.stream.logic import IdLogic, KeyLogic, StepPlan, UserLogic, router
from pipelines.stream.sinks import DeadLetterSink, JsonlLogSink, MemorySink, OnlineStoreSink
from pipelines.stream.sources import JsonlReplaySource, kafka_source
from pipelines.stream.triggers import (
    Fires,
    TriggerLogic,
    encode_fires,
    routed_triggers,
    trigger_router,
    user_triggers,
    view_triggers,
)
from pipelines.stream.types import (
    ADMISSION_KEY,
    INVALID,
    KEY_SEP,
    Admitted,
    Claims,
    DropRecord,
    Drops,
    Invalid,
    StreamClock,
    StreamOutputs,
)

if TYPE_CHECKING:
    from bytewax.recovery import RecoveryConfig

USERS = "users"  # the step keyed by user_id: admission and the views keyed by the user
KEYS = "keys"  # the step keyed by view|key: the views of other entities (sessions)
TRIGGERS = "triggers"  # the step keyed by join_key|key: the absence triggers of other entities (sessions)


def relax_gc() -> None:
    """Run the process that runs the dataflow without the cyclic collector.

    The keyed state is millions of small containers that form no reference cycles: reference counting
    frees them. The cyclic collector can only walk them, and walks each new one at least once: at 1M users
    (one new user and session per event) its three young collections took 10 s of a 112 s run, even with
    a young collection only every 10M allocations. So it is off, and the objects alive now (modules, specs)
    are moved out of its sight. That is only safe because nothing the engine does per event, batch or epoch
    leaves cyclic garbage; tests/integration/test_no_cycles.py runs the dataflow with the collector off
    and checks what ``gc.collect()`` then finds does not grow with the events.

    For a process that exists to run the dataflow (``python -m bytewax.run``); :meth:`BytewaxEngine.run`
    uses :func:`relaxed_gc`.
    """
    gc.disable()
    gc.freeze()


@contextlib.contextmanager
def relaxed_gc() -> Iterator[None]:
    """:func:`relax_gc` for the duration of an in-process run, then the caller's collector as it was."""
    enabled = gc.isenabled()
    relax_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()



class UserStreams(NamedTuple):
    """What :meth:`BytewaxEngine.admit` gives the steps: the users step's output, split by kind."""

    rows: Stream  # (user_id, [Row, ...]): the rows of the views keyed by the user, made in the admission step
    admitted: Stream  # (user_id, Admitted): the admitted events, for the views routed on (unread if there are none)


class StepSinks(NamedTuple):
    """What :meth:`BytewaxEngine.write` gives back for a step: its rows encoded for each sink, for
    :meth:`BytewaxEngine.finish` to attach (one sink per log, for every step)."""

    changelog: Stream | None  # (part, encoded lines)
    online: Stream | None  # ("view|key", FeatureRow)
    memory: Stream | None  # FeatureRow
    triggers: Stream | None = None  # (state key, encoded trigger lines) or KafkaSinkMessage(fire_id, line)


class BytewaxEngine(MaterializationEngine[Source | Stream, UserStreams, Stream, Stream, StepSinks]):
    """Compile every feature view into one Bytewax dataflow (see the module docstring for the hooks).

    :meth:`dataflow` builds it (:attr:`flow`) through :meth:`materialize`; :meth:`run` builds, runs it to the
    end of a finite source and reports from the logs (:meth:`read_report`). ``clock`` sets the timers (replay
    by default), ``outputs`` the sinks (changelog and drops logs by default).
    """

    name = "bytewax"
    eager = False  # the hooks wire one dataflow; it runs in run()

    def __init__(self, settings: Settings, registry: Registry = REGISTRY, *, clock: StreamClock | None = None,
                 outputs: StreamOutputs | None = None, flow_id: str = "kairos_features") -> None:
        super().__init__(settings, registry)
        self.clock = clock or StreamClock()
        self.outputs = outputs or StreamOutputs.from_settings(settings)
        self.flow = Dataflow(flow_id)
        self._steps: list[Step] = []
        self._drops: list[Stream] = []  # encoded drop records of every step, for the drops log (in this order)
        self._fires: dict[str, Stream] = {}  # each step's (state key, Fires), for the trigger output
        self._built = False

    # -- sources ---------------------------------------------------------------------------------
    def default_source(self, *, path: str | Path | None = None, tail: bool = True, rate: float | None = None,
                       on_batch: Callable[[int], None] | None = None) -> Source:
        """The source the settings name: the replay file (``on_batch``: see :class:`JsonlReplaySource`), or the
        Kafka topic."""
        stream = self.settings.stream
        if stream.source == "kafka":
            if not stream.brokers:
                raise ValueError("stream.brokers is required when stream.source is kafka")
            return kafka_source(stream.brokers, stream.topic, tail=tail, batch_size=stream.batch_size)
        return JsonlReplaySource(path or self.settings.events_log_path, batch_size=stream.batch_size,
                                 rate=rate, on_batch=on_batch)

    # -- hooks -----------------------------------------------------------------------------------
    def plan(self, views: Sequence[FeatureView]) -> list[Step]:
        """One step per keyed state: ``users`` (always: admission is keyed by user) and ``keys`` if a view is keyed
        by another entity."""
        steps = [Step(USERS, ADMISSION_KEY, tuple(v for v in views if v.entity.join_key == ADMISSION_KEY))]
        routed = tuple(v for v in views if v.entity.join_key != ADMISSION_KEY)
        if routed:
            steps.append(Step(KEYS, f"view{KEY_SEP}key", routed))
        if self.outputs.fires_trigger and routed_triggers():
            steps.append(Step(TRIGGERS, f"join_key{KEY_SEP}key", ()))  # no view: absence triggers only
        return steps

    def prepare(self, steps: Sequence[Step]) -> None:
        self._steps = list(steps)

    def read(self, source: Source | Stream) -> Stream:
        if self._built:
            raise RuntimeError("this engine already built its dataflow; make a new engine")
        self._built = True
        return source if isinstance(source, Stream) else op.input("source", self.flow, source)

    def validate(self, source: Stream, report: BuildReport) -> Stream:
        """Parse and validate, a batch at a time; invalid payloads go to the dead-letter store and the drops log.
        Valid events come out keyed by ``user_id``, the admission key."""
        checked = op.flat_map_batch("validate", source, validate_batch)
        invalid = op.flat_map_batch("validate_invalid", checked, lambda xs: [x for x in xs if type(x) is Invalid])
        op.output("dead_letters", op.flat_map_batch("dead_letters_key", invalid, lambda xs: [(x.pos, x) for x in xs]),
                  DeadLetterSink(self.outputs.dead_letter_dir))
        self._drops.append(op.flat_map_batch("validate_drops", invalid, lambda xs: [
            (x.pos, encode_drops([DropRecord(INVALID, x.pos, None, None)])) for x in xs]))
        report.dropped.setdefault(INVALID, 0)
        return op.flat_map_batch("validate_valid", checked, lambda xs: [x for x in xs if type(x) is tuple])


    def admit(self, events: Stream, report: BuildReport) -> UserStreams:
        """Consent, lateness, then first arrival (:class:`features.semantics.Admission`), keyed by ``user_id``;
        drops go to the drops log, admitted ids to the ``ids`` step (``id_collision``).

        The same keyed step (:class:`~pipelines.stream.logic.UserLogic`) keeps the state of every view of the
        ``users`` step: one state object per user, one exchange (see the module docstring). So what it returns,
        the admitted, user-keyed stream, holds the rows of those views beside the admitted events."""
        users = self._step(USERS)
        own = tuple((v, v.event_types()) for v in (users.views if users is not None else ()))
        triggers = user_triggers(users.views if users is not None else ()) if self.outputs.fires_trigger else ()
        plan = StepPlan(own=own, forward=self._step(KEYS) is not None or self._step(TRIGGERS) is not None,
                        views={v.name: v for v in self._views()}, rules=self.rules, clock=self.clock,
                        triggers=triggers)
        decided = op.stateful_batch(USERS, events, lambda resume: UserLogic(plan, resume))
        # one reader splits the step's output by type (each more reader of a stream gets a copy of every item)
        rows = op.branch("user_rows", decided, lambda kv: type(kv[1]) is list)
        claims = op.branch("user_claims", rows.falses, lambda kv: type(kv[1]) is Claims)
        by_id = op.flat_map_batch("id_claims", claims.trues, lambda xs: [c for _, cl in xs for c in cl.items])
        rules = self.rules
        collided = op.stateful_batch("ids", by_id, lambda resume: IdLogic(rules, resume))
        self._drops.append(op.flat_map_batch("id_collisions", collided, lambda xs: [
            (k, encode_drops(d)) for k, d in xs]))
        split = op.branch("admit_drops_or_admitted", claims.falses, lambda kv: type(kv[1]) is Drops)
        self._drops.append(op.flat_map_batch("admit_drops", split.trues, lambda xs: [
            (k, encode_drops(d.records)) for k, d in xs]))
        fires = op.branch("user_fires", split.falses, lambda kv: type(kv[1]) is Fires)
        self._fires[USERS] = fires.trues
        for d in Drop:
            report.dropped.setdefault(d.value, 0)
        return UserStreams(rows=rows.trues, admitted=fires.falses)

    def key_by_entity(self, step: Step, events: UserStreams) -> Stream:
        """``users``: the rows of the admission step, already keyed by user (that step is this one's state).
        ``keys``: each admitted event to the key ``view|key`` of every view of the step that reads it, in arrival
        order per key (every event of a key travels one path: its user's worker, then the key's)."""
        if step.name == USERS:
            return events.rows
        if step.name == TRIGGERS:  # every admitted event that carries a key some absence trigger reads it for
            route_fires = trigger_router(routed_triggers())
            return op.flat_map_batch("route_triggers", events.admitted, lambda xs: [
                item for _, a in xs if type(a) is Admitted for e in a.events for item in route_fires(e)])
        routes = tuple(router(v) for v in step.views)
        return op.flat_map_batch("route", events.admitted, lambda xs: [
            item for _, a in xs if type(a) is Admitted for route in routes for e in a.events
            if (item := route(e)) is not None])

    def aggregate(self, step: Step, keyed: Stream) -> Stream:
        """``users``: the rows as they come (the fused admission step ran the views' state machines).
        ``keys``: a :class:`~pipelines.stream.logic.KeyLogic` per ``view|key``; its ``session_collision`` records
        go to the drops log. Both give ``(state key, [Row, ...])`` items."""
        if step.name == USERS:
            return keyed
        clock, lateness = self.clock, self.rules.allowed_lateness
        if step.name == TRIGGERS:
            absence = routed_triggers()
            self._fires[TRIGGERS] = op.stateful_batch(TRIGGERS, keyed, lambda resume: TriggerLogic(
                absence, clock, lateness, resume))
            return op.flat_map_batch("trigger_rows", self._fires[TRIGGERS], lambda xs: [])  # no rows
        views = {v.name: v for v in step.views}
        conditions = {v.name: view_triggers(v) for v in step.views} if self.outputs.fires_trigger else {}
        out = op.stateful_batch(KEYS, keyed, lambda resume: KeyLogic(views, clock, resume, conditions, lateness))
        split = op.branch("key_rows", out, lambda kv: type(kv[1]) is list)
        fires = op.branch("key_fires", split.falses, lambda kv: type(kv[1]) is Fires)
        self._fires[KEYS] = fires.trues
        self._drops.append(op.flat_map_batch("key_collisions", fires.falses, lambda xs: [
            (k, encode_drops(d.records)) for k, d in xs]))
        return split.trues

    def write(self, step: Step, rows: Stream) -> StepSinks:
        """The step's rows encoded for each sink the outputs name (changelog, Feast, memory): a handle that
        :meth:`finish` attaches. The changelog encodes a batch's rows in one call per log file."""
        out = self.outputs
        names = {v.name: v.feature_names for v in step.views}
        changelog = online = memory = triggers = None
        fires = self._fires.get(step.name)
        if fires is not None and out.fires_trigger:
            triggers = self._encode_fires(step, fires)
        if step.name == TRIGGERS:
            return StepSinks(None, None, None, triggers)
        if out.changelog_dir is not None:
            changelog = op.flat_map_batch(f"{step.name}_changelog_encode", rows, lines_by_part(out.parts))
        if out.online:
            online = op.flat_map_batch(f"{step.name}_online_rows", rows, lambda xs: [
                (f"{r.view}{KEY_SEP}{r.key}", r.feature_row(names)) for _, rs in xs for r in rs])
        if out.memory is not None:
            memory = op.flat_map_batch(f"{step.name}_memory_rows", rows, lambda xs: [
                r.feature_row(names) for _, rs in xs for r in rs])
        return StepSinks(changelog, online, memory, triggers)

    def _encode_fires(self, step: Step, fires: Stream) -> Stream:
        """A step's firings for the trigger output: JSON lines by state key (the trigger log), or one Kafka
        message per firing keyed by its ``fire_id`` (the trigger topic)."""
        if self.outputs.trigger_topic is None:
            return op.flat_map_batch(f"{step.name}_triggers_encode", fires, lambda xs: [
                (k, encode_fires(f.fires)) for k, f in xs])
        from bytewax.connectors.kafka import KafkaSinkMessage

        return op.flat_map_batch(f"{step.name}_triggers_messages", fires, lambda xs: [
            KafkaSinkMessage(fire.fire_id.encode(), encode_fires([fire]).rstrip(b"\n"))
            for _, f in xs for fire in f.fires])

    def finish(self, written: Sequence[tuple[Step, StepSinks]], report: BuildReport) -> BuildReport:
        """Attach each sink once, fed by every step (one writer per log file), and the drops log. The counts
        come after the run, from the logs (:meth:`read_report`)."""
        out = self.outputs

        def merged(name: str, streams: list[Stream | None]) -> Stream | None:
            some = [s for s in streams if s is not None]
            return None if not some else some[0] if len(some) == 1 else op.merge(name, *some)

        changelog = merged("changelog_lines", [w.changelog for _, w in written])
        if changelog is not None and out.changelog_dir is not None:
            op.output("changelog", changelog, JsonlLogSink(out.changelog_dir, out.parts, by_part=True))
        online = merged("online_items", [w.online for _, w in written])
        if online is not None:
            op.output("online_store", online, OnlineStoreSink(self.settings, {v.name: v for v in self._views()},
                                                               out.online_parts))
        memory = merged("memory_items", [w.memory for _, w in written])
        if memory is not None and out.memory is not None:
            op.output("memory", memory, MemorySink(out.memory))
        op.output("drops_log", op.merge("drops", *self._drops), JsonlLogSink(out.drops_dir, out.parts))
        triggers = merged("trigger_items", [w.triggers for _, w in written])
        if triggers is not None and out.trigger_topic is not None:
            from bytewax.connectors.kafka import KafkaSink

            from pipelines.ingest.kafka import ensure_topic

            ensure_topic(",".join(out.trigger_brokers), out.trigger_topic)
            op.output("trigger_topic", triggers, KafkaSink(out.trigger_brokers, out.trigger_topic))
        elif triggers is not None and out.triggers_dir is not None:
            op.output("trigger_log", triggers, JsonlLogSink(out.triggers_dir, out.parts))
        return report

    def _step(self, name: str) -> Step | None:
        return next((s for s in self._steps if s.name == name), None)

    def _views(self) -> list[FeatureView]:
        return [v for s in self._steps for v in s.views]

    # -- the dataflow ----------------------------------------------------------------------------
    def dataflow(self, source: Source | Stream | None = None, views: Sequence[FeatureView] | None = None) -> Dataflow:
        """The dataflow (:attr:`flow`) for every view (or ``views``), built once through :meth:`materialize`."""
        self.materialize(source if source is not None else self.default_source(), views)
        return self.flow

    def run(self, source: Source | None = None, *, workers: int | None = None,
            epoch_interval: timedelta | None = None, recovery: RecoveryConfig | None = None) -> BuildReport:
        """Build and run to the end of a finite source on ``workers`` threads (default: settings); the report is
        read from the logs."""
        from bytewax.run import cli_main  # only a run needs the runner

        t0 = time.perf_counter()
        flow = self.dataflow(source)
        with relaxed_gc():
            cli_main(flow, workers_per_process=workers or self.settings.stream.workers,
                     epoch_interval=epoch_interval or timedelta(seconds=10), recovery_config=recovery)
        report = self.read_report()
        report.seconds = time.perf_counter() - t0
        return report

    def read_report(self) -> BuildReport:
        """Rows per view (distinct change points) and drops per reason, from the logs on disk."""
        return read_report(self.outputs, self.registry)


def read_report(outputs: StreamOutputs, registry: Registry = REGISTRY) -> BuildReport:
    """Rows per view (distinct change points), drops per reason and collisions per kind, from a run's logs."""
    counts = read_drops(outputs.drops_dir)
    collisions = {c.value for c in Collision}
    report = BuildReport(dropped={k: v for k, v in counts.items() if k not in collisions},
                         collisions={k: v for k, v in counts.items() if k in collisions})
    if outputs.changelog_dir is not None:
        for (view, _key), points in timelines(read_changelog(outputs.changelog_dir, registry)).items():
            report.views[view] = report.views.get(view, 0) + len(points)
    return report
