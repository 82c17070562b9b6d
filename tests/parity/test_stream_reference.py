"""The Bytewax stream against the reference, on adversarial logs: every row at every change point, every drop.

The dataflow replays a log in arrival order (JSON lines, as a topic or the replay file
would deliver it) on one worker (``run_main``), on two worker threads
(``cluster_main``) and as ``python -m bytewax.run -w 2``. Its changelog must hold, for
every view and key, exactly the rows of :func:`features.state.sweep` (same change
points, same values), which must equal :class:`features.reference.Reference` at every
change point; its drops log must count what the reference drops.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSource, cluster_main, run_main

from conf.settings import Settings
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import Collision, Drop, EventRules, arrival_order_key
from features.state import sweep
from kairos.server import free_port
from pipelines.ingest.eventlog import encode_json, write_jsonl
from pipelines.stream.changelog import read_changelog, read_drops
from pipelines.stream.engine import BytewaxEngine
from pipelines.stream.logic import KeyLogic, StepPlan, UserLogic
from pipelines.stream.types import Admitted, DropRecord, Drops, FeatureRow, Row, StreamClock, StreamOutputs
from tests.adversarial import adversarial_log, minimal_logs
from tests.builders import T0, make_event, minutes
from tests.compare import same_typed as same
from tests.conftest import settings_in

LATENESS = timedelta(hours=1)
RULES = EventRules(allowed_lateness=LATENESS)
REPO = Path(__file__).resolve().parents[2]



def diff(got: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {n: (got.get(n), w) for n, w in want.items() if not same(got.get(n), w)}


def in_arrival_order(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=arrival_order_key)


def replay_items(events: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The log as a source delivers it: JSON lines in arrival order, named by position."""
    return [(f"log:{i}", encode_json(e)) for i, e in enumerate(in_arrival_order(events), 1)]


def per_key(rows: Sequence[FeatureRow]) -> dict[tuple[str, str], list[tuple[datetime, dict[str, Any]]]]:
    """Each key's rows in emission order; a change point emitted twice in a row (tied arrivals split
    across batches, or a replay after a resume) is one upsert, so consecutive repeats collapse to the last."""
    out: dict[tuple[str, str], list[tuple[datetime, dict[str, Any]]]] = defaultdict(list)
    for r in rows:
        timeline = out[(r.view, r.key)]
        if timeline and timeline[-1][0] == r.event_timestamp:
            timeline[-1] = (r.event_timestamp, r.values)
        else:
            timeline.append((r.event_timestamp, r.values))
    return out


def assert_matches_reference(rows: Sequence[FeatureRow], events: Sequence[dict[str, Any]], *,
                             oracle: bool = True, until: datetime | None = None) -> int:
    """Every key's emitted rows equal sweep's rows (and, with ``oracle``, the reference at each point).

    Returns the number of change points checked.
    """
    ref = Reference(events, rules=RULES)
    emitted = per_key(rows)
    checked = 0
    for view in REGISTRY.views:
        keys = ref.keys(view)
        stray = {k for (v, k) in emitted if v == view.name} - set(keys)
        assert not stray, f"{view.name}: rows for keys the reference never saw: {sorted(stray)[:5]}"
        for key in keys:
            want = list(sweep(view, ref.entity_events(view, key), until=until))
            got = emitted.get((view.name, key), [])
            assert [t for t, _ in got] == [t for t, _ in want], f"{view.name} {key}: change points differ"
            if until is None:
                assert [t for t, _ in got] == ref.change_points(view, key)
            for (t, values), (_, expected) in zip(got, want, strict=True):
                assert not diff(values, expected), f"{view.name} {key} at {t}: {diff(values, expected)}"
                if oracle:
                    truth = ref.features(view, key, t)
                    assert not diff(values, truth), f"{view.name} {key} at {t} vs reference: {diff(values, truth)}"
            checked += len(got)
    assert checked > 0
    return checked


def assert_drops_match(dropped: dict[str, int], events: Sequence[dict[str, Any]], invalid: int = 0) -> None:
    ref = Reference(events, rules=RULES)
    assert dropped == {**{d.value: ref.drops.get(d, 0) for d in Drop}, "invalid": invalid,
                       **{c.value: ref.collisions.get(c, 0) for c in Collision}}


def rows_of(emitted: Sequence[Any]) -> list[Row]:
    """The rows among what the admission step emitted (each kind is its own item)."""
    return [r for x in emitted if type(x) is list for r in x]


def drops_of(emitted: Sequence[Any]) -> list[DropRecord]:
    return [d for x in emitted if isinstance(x, Drops) for d in x.records]


def admitted_of(emitted: Sequence[Any]) -> list[Any]:
    """The admitted events the admission step emitted for the views routed on."""
    return [e for x in emitted if isinstance(x, Admitted) for e in x.events]


def run_flow(settings: Settings, items: Sequence[Any], *, workers: int = 1, batch_size: int = 50,
             clock: StreamClock | None = None) -> tuple[BytewaxEngine, list[FeatureRow]]:
    memory: list[FeatureRow] = []
    builder = BytewaxEngine(settings, clock=clock,
                                    outputs=StreamOutputs.from_settings(settings, memory=memory))
    flow = builder.dataflow(TestingSource(items, batch_size=batch_size))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return builder, memory


# ------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_rows_equal_sweep_and_reference_at_every_change_point(tmp_settings: Settings, seed: int,
                                                                     workers: int) -> None:
    events = adversarial_log(seed)
    builder, memory = run_flow(tmp_settings, replay_items(events), workers=workers, batch_size=7 * seed)
    assert builder.outputs.changelog_dir is not None
    changelog = read_changelog(builder.outputs.changelog_dir)
    checked = assert_matches_reference(changelog, events)
    assert len(changelog) == checked, "the changelog holds each change point once"
    assert sorted(memory) == sorted(changelog), "the memory sink saw what the changelog holds"
    assert_drops_match(read_drops(builder.outputs.drops_dir), events)
    report = builder.read_report()
    assert sum(report.views.values()) == checked


@pytest.mark.parametrize("name", sorted(minimal_logs()))
def test_the_independent_oracles_minimal_logs(tmp_settings: Settings, name: str) -> None:
    """Each class the independent oracle found, as its minimal log: rows, drops and collisions as the rules say."""
    events = minimal_logs()[name]
    builder, memory = run_flow(tmp_settings, replay_items(events), batch_size=1)
    assert_matches_reference(memory, events)
    assert_drops_match(read_drops(builder.outputs.drops_dir), events)
    report = builder.read_report()
    logins = {r.event_timestamp: r.values["user_logins_7d"] for r in memory
              if r.view == "user_account" and r.key in ("u1", "b")}
    if name == "clock_ahead_retry":  # the retry at 13:02 is a duplicate: one login, stamped with the clamped time
        assert report.dropped["duplicate"] == 1
        assert max(logins.values()) == 1
        seen = {r.values["user_last_login_at_30d"] for r in memory if r.view == "user_account"} - {None}
        assert seen == {events[0]["event_time"]}
    elif name == "id_under_two_users":  # ids are unique per user: b's login counts, and is reported as a collision
        assert report.collisions["id_collision"] == 1
        assert logins and max(logins.values()) == 1
    else:  # b's two events under a's live session are left out of it; two days later b owns s1, and a's is out
        assert report.collisions == {"id_collision": 0, "session_collision": 3}
        carts = [r.values["session_cart_adds_5m"] for r in memory if r.view == "session_activity"]
        assert max(carts) == 1


@pytest.mark.parametrize("batch_size", [2, 64])
def test_a_shared_session_is_decided_in_arrival_order_whatever_the_batches(tmp_settings: Settings,
                                                                            batch_size: int) -> None:
    """The users step emits a batch's events user by user, so one session's events from two users reach the
    session's state grouped by user: its step folds them in arrival order, and the owner rule (with the handover
    two days later, when b owns ``s1`` and a's event is the collision) gives the reference's rows on one worker."""
    events = minimal_logs()["session_of_two_users"]
    builder, memory = run_flow(tmp_settings, replay_items(events), batch_size=batch_size)
    assert_matches_reference(memory, events)
    assert_drops_match(read_drops(builder.outputs.drops_dir), events)
    assert builder.read_report().collisions["session_collision"] == 3


def test_bigger_log_on_two_workers_with_tiny_batches(tmp_settings: Settings) -> None:
    """Many keys and every batch boundary: order per key survives the exchanges between workers."""
    events = adversarial_log(11, users=12, events=2500)
    builder, memory = run_flow(tmp_settings, replay_items(events), workers=2, batch_size=1)
    assert_matches_reference(memory, events, oracle=False)
    assert_drops_match(read_drops(builder.outputs.drops_dir), events)




@pytest.mark.parametrize("scale", ["-w 2", "2 processes"])
def test_bytewax_run_cli_on_two_workers_replays_the_file(tmp_settings: Settings, scale: str) -> None:
    """``python -m bytewax.run pipelines.stream.flow:flow`` over the default replay file, as two worker
    threads of one process or as two processes (``-i/-a``): items and state cross a process boundary."""
    events = adversarial_log(4, users=5, events=800)
    path = tmp_settings.data_path / "stream.jsonl"  # the settings' default replay file
    write_jsonl(in_arrival_order(events), path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"event_id": "broken"\n{"schema_version": 1, "event_type": "teleport"}\n')
    cmd = [sys.executable, "-m", "bytewax.run", "pipelines.stream.flow:flow"]
    if scale == "-w 2":
        commands = [[*cmd, "-w", "2"]]
    else:
        addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
        commands = [[*cmd, "-i", str(i), "-a", addresses] for i in range(2)]
    procs = [subprocess.Popen(c, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    root = tmp_settings.data_path / "stream"
    assert_matches_reference(read_changelog(root / "changelog"), events, oracle=False)
    dropped = read_drops(root / "drops")
    assert_drops_match(dropped, events, invalid=2)
    dead = (tmp_settings.dead_letter_path / "bytewax-0.jsonl").read_text().splitlines()
    assert len(dead) == 2 and "stream.jsonl:" in dead[0]


# ------------------------------------------------------------------------------------------- edges
def test_sessions_have_a_keyed_step_of_their_own_and_give_the_same_rows_on_one_worker_and_two(
        tmp_path: Path) -> None:
    """Every user's events of a session id meet in one state (the owner rule needs them together), in a second
    keyed step: one worker and two give exactly the same rows, drops and collisions. (Events of one session from
    two users come from two users' workers, whose order within an epoch Bytewax does not fix: the shared-session
    log is held to the rules on one worker, in the minimal-logs test.)"""
    events = adversarial_log(2, users=4, events=600)
    results = []
    for workers in (1, 2):
        settings = settings_in(tmp_path / f"w{workers}")
        memory: list[FeatureRow] = []
        builder = BytewaxEngine(settings, outputs=StreamOutputs.from_settings(settings, memory=memory))
        flow = builder.dataflow(TestingSource(replay_items(events), batch_size=40))
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
        assert "keys" in {step.step_name for step in flow.substeps}
        results.append((sorted(memory), read_drops(builder.outputs.drops_dir)))
    (one, one_drops), (two, two_drops) = results
    assert any(r.view == "session_activity" for r in one)
    assert one == two and one_drops == two_drops
    assert_matches_reference(one, events, oracle=False)


def test_invalid_events_go_to_dead_letters_and_are_counted(tmp_settings: Settings) -> None:
    good = [make_event("purchase", user_id="u1", event_time=T0)]
    items: list[Any] = [*replay_items(good), ("log:bad-json", "{nope"), ("log:not-object", "[1, 2]"),
                        ("log:bad-event", encode_json({**good[0], "event_id": "x", "amount": -5}))]
    builder, memory = run_flow(tmp_settings, items)
    assert read_drops(builder.outputs.drops_dir) == {"late": 0, "duplicate": 0, "no_consent": 0, "invalid": 3,
                                                     "id_collision": 0, "session_collision": 0}
    dead = (tmp_settings.dead_letter_path / "bytewax-0.jsonl").read_text()
    assert "log:bad-json" in dead and "amount" in dead and "must be >= 0" in dead
    assert {r.view for r in memory} == {"user_commerce", "user_account", "session_activity", "user_value"}


def test_cold_start_a_key_is_at_its_defaults_until_its_first_row(tmp_settings: Settings) -> None:
    events = adversarial_log(5)
    _, memory = run_flow(tmp_settings, replay_items(events))
    ref = Reference(events, rules=RULES)
    timelines = per_key(memory)
    for view in REGISTRY.views:
        cold = view.finalize_row({})
        for key in ref.keys(view):
            first = timelines[(view.name, key)][0][0]
            assert ref.features(view, key, first - timedelta(microseconds=1)) == cold
        assert (view.name, "never-seen") not in timelines


def test_window_expiry_without_new_events_is_written_at_the_expiry_time(tmp_settings: Settings) -> None:
    """Data-time timers: after one page view, the session's 5-minute values fall back at the tile expiry."""
    view = REGISTRY.view("session_activity")
    events = [make_event("page_view", user_id="u1", session_id="s1", event_time=T0, ingest_delay=timedelta(0))]
    _, memory = run_flow(tmp_settings, replay_items(events))
    rows = per_key(memory)[(view.name, "s1")]
    assert [t for t, _ in rows] == [t for t, _ in sweep(view, events)]
    at = dict(rows)
    assert at[T0]["session_page_views_5m"] == 1
    assert at[T0 + minutes(6)]["session_page_views_5m"] == 0 and at[T0 + minutes(6)]["session_events_1h"] == 1
    assert rows[-1][1] == view.finalize_row({})


def test_tied_arrivals_and_an_arrival_at_an_expiry_make_one_row_each(tmp_settings: Settings) -> None:
    """Two events arriving at once, and one arriving exactly when a tile expires: one row per change point."""
    view = REGISTRY.view("session_activity")
    at = T0 + minutes(6)  # the expiry of the first page view's 5-minute tile
    events = [
        make_event("page_view", user_id="u1", session_id="s1", event_time=T0, ingest_delay=timedelta(0)),
        make_event("page_view", user_id="u1", session_id="s1", event_time=at - minutes(1), ingest_delay=minutes(1)),
        make_event("scroll", user_id="u1", session_id="s1", event_time=at - minutes(2), ingest_delay=minutes(2)),
    ]
    _, memory = run_flow(tmp_settings, replay_items(events))
    raw = [(r.event_timestamp, r.values) for r in memory if (r.view, r.key) == (view.name, "s1")]
    assert raw == list(sweep(view, in_arrival_order(events)))
    assert [t for t, _ in raw].count(at) == 1
    assert dict(raw)[at]["session_page_views_5m"] == 1 and dict(raw)[at]["session_max_scroll_pct_5m"] == 50.0


def test_until_bounds_the_timers_at_eof(tmp_settings: Settings) -> None:
    events = adversarial_log(6)
    until = max(e["ingest_time"] for e in events)
    _, memory = run_flow(tmp_settings, replay_items(events), clock=StreamClock(until=until))
    assert max(r.event_timestamp for r in memory) <= until
    assert_matches_reference(memory, events, oracle=False, until=until)


def test_live_timers_fire_on_the_wall_clock_and_stamp_the_expiry(tmp_settings: Settings) -> None:
    """Live: no event follows, no EOF flush, yet the 5-minute window expires, stamped with data time."""
    view = REGISTRY.view("session_activity")
    event = make_event("page_view", user_id="u1", session_id="s1", event_time=T0, ingest_delay=timedelta(0))
    expiry = T0 + minutes(6)
    grace = timedelta(milliseconds=200)
    offset = datetime.now(UTC) + timedelta(seconds=1.5) - expiry - grace  # the expiry is due in 1.5 s of wall time
    clock = StreamClock(offset=offset, grace=grace, flush_at_eof=False)
    items: list[Any] = [*replay_items([event]), TestingSource.PAUSE(timedelta(seconds=4))]
    _, memory = run_flow(tmp_settings, items, clock=clock)
    rows = per_key(memory)[(view.name, "s1")]
    assert [t for t, _ in rows] == [T0, expiry], "one row at arrival, one at the 5-minute expiry, nothing after"
    assert rows[1][1] == dict(sweep(view, [event]))[expiry]


# ------------------------------------------------------------------------------------------- state
def test_view_state_snapshot_round_trips_and_continues_identically() -> None:
    view = REGISTRY.view("user_commerce")
    events = [e for e in in_arrival_order(adversarial_log(7)) if e["user_id"] == "u1"]
    head, tail = events[: len(events) // 2], events[len(events) // 2:]
    views = {view.name: view}
    a = KeyLogic(views, StreamClock(), None)
    a.on_batch([(view.name, e) for e in head])
    assert a.stepper is not None
    snap, at_head = a.snapshot(), a.stepper.state.values()
    b = KeyLogic(views, StreamClock(), pickle.loads(pickle.dumps(snap)))
    assert b.stepper is not None and b.stepper.state.values() == at_head
    rest_a = a.on_batch([(view.name, e) for e in tail])[0] + a.on_eof()[0]
    rest_b = b.on_batch([(view.name, e) for e in tail])[0] + b.on_eof()[0]
    assert rest_a and rest_a == rest_b
    c = KeyLogic(views, StreamClock(), snap)  # the snapshot is a copy: the logic's later progress left it alone
    assert c.stepper is not None and c.stepper.state.values() == at_head
    assert c.stepper.now == head[-1]["ingest_time"]


def test_a_session_snapshot_keeps_its_owner_and_continues_identically() -> None:
    """A session's state is restored with its owner: after a resume, the other user's events are still
    collisions, and the rows and collision records are those of the original."""
    views = {v.name: v for v in REGISTRY.views}
    view = REGISTRY.view("session_activity")
    events = [(view.name, e) for e in in_arrival_order(minimal_logs()["session_of_two_users"])[:5]]
    head, tail = events[:2], events[2:]
    a = KeyLogic(views, StreamClock(), None)
    assert rows_of(a.on_batch(head)[0])
    b = KeyLogic(views, StreamClock(), pickle.loads(pickle.dumps(a.snapshot())))
    rest_a, rest_b = a.on_batch(tail)[0] + a.on_eof()[0], b.on_batch(tail)[0] + b.on_eof()[0]
    assert rest_a == rest_b
    assert [d.reason for d in drops_of(rest_b)] == ["session_collision", "session_collision"]


def test_snapshots_are_copied_on_write_only_while_something_holds_them() -> None:
    """Bytewax asks each key touched in an epoch for a snapshot, recovery or not: a held snapshot keeps the state
    of its moment however the logic goes on, and one nobody holds any more is never pickled."""
    view = REGISTRY.view("user_commerce")
    plan = StepPlan(
        own=((view, view.event_types()),),
        forward=False,
        views={view.name: view},
        rules=RULES,
        clock=StreamClock(),
    )
    events = [e for e in in_arrival_order(adversarial_log(7)) if e["user_id"] == "u1"]
    head, tail = events[: len(events) // 2], events[len(events) // 2 :]
    dumps = 0

    class Counting(UserLogic):
        def dump(self) -> bytes:
            nonlocal dumps
            dumps += 1
            return super().dump()

    logic = Counting(plan, None)
    logic.on_batch([(f"p{i}", e) for i, e in enumerate(head)])
    held = logic.snapshot()
    assert logic.snapshot() is held and dumps == 0, "unchanged since: the same handle, nothing copied yet"
    at_head = pickle.dumps(held)
    rest = logic.on_batch([(f"q{i}", e) for i, e in enumerate(tail)])[0] + logic.on_eof()[0]
    assert dumps == 1, "the held snapshot was copied once, before the first change"
    assert pickle.dumps(held) == at_head and dumps == 1
    again = UserLogic(plan, pickle.loads(at_head))  # resumes from the head: the same rows as the original
    assert again.on_batch([(f"q{i}", e) for i, e in enumerate(tail)])[0] + again.on_eof()[0] == rest

    dropped = Counting(plan, None)
    dumps = 0
    dropped.on_batch([(f"p{i}", e) for i, e in enumerate(head)])
    dropped.snapshot()  # not kept, as Bytewax does without recovery
    dropped.on_batch([(f"q{i}", e) for i, e in enumerate(tail)])
    assert dumps == 0, "a snapshot nobody holds is never pickled"


def test_at_eof_a_flushed_user_forgets_its_ids_and_is_discarded() -> None:
    """With the EOF flush the key's clock runs to ``until``: ids whose lateness has run out by then go, so a user
    with nothing left is discarded rather than snapshotted."""
    session = REGISTRY.view("session_activity")
    plan = StepPlan(
        own=(),
        forward=True,
        views={session.name: session},
        rules=RULES,
        clock=StreamClock(),
    )
    logic = UserLogic(plan, None)
    e = make_event("login", user_id="u1", event_time=T0, ingest_delay=timedelta(0))
    assert logic.on_batch([("p1", e)])[1] is False
    assert logic.on_eof() == ([], True) and not logic.admission.seen
    bounded = UserLogic(
        StepPlan(own=(), forward=plan.forward, views=plan.views, rules=RULES,
                 clock=StreamClock(until=T0 + LATENESS / 2)),
        None,
    )
    bounded.on_batch([("p1", e)])
    assert bounded.on_eof() == ([], False) and set(bounded.admission.seen) == {e["event_id"]}, (
        "until the lateness runs out, a copy is still a duplicate"
    )


def test_admission_forgets_ids_after_the_allowed_lateness_and_is_discarded_when_empty() -> None:
    session = REGISTRY.view("session_activity")  # admission alone, routing to a view keyed by session
    plan = StepPlan(own=(), forward=True, views={session.name: session}, rules=RULES, clock=StreamClock())
    logic = UserLogic(plan, None)
    first = make_event("login", user_id="u1", event_time=T0, ingest_delay=timedelta(0))
    copy = dict(first, ingest_time=T0 + LATENESS)  # exactly at the limit: still a duplicate
    out, discard = logic.on_batch([("p1", first), ("p2", copy)])
    assert [e["event_id"] for e in admitted_of(out)] == [first["event_id"]], "admitted once, routed on"
    assert [d.reason for d in drops_of(out)] == ["duplicate"] and drops_of(out)[0].id == "p2" and not discard
    later = make_event("login", user_id="u1", event_time=T0 + 2 * LATENESS, ingest_delay=timedelta(0))
    logic.on_batch([("p3", later)])
    assert set(logic.admission.seen) == {later["event_id"]}, "ids past their lateness are forgotten"
    late_copy = dict(first, ingest_time=T0 + 2 * LATENESS)
    out, _ = logic.on_batch([("p4", late_copy)])
    assert [d.reason for d in drops_of(out)] == ["late"] and not admitted_of(out)
    no_consent = make_event("login", user_id="u1", event_time=T0 + 5 * LATENESS, ingest_delay=timedelta(0),
                            consent=False)
    out, discard = logic.on_batch([("p5", no_consent)])
    assert [d.reason for d in drops_of(out)] == ["no_consent"] and discard, \
        "nothing left to remember: the user's state is dropped"
