"""An open-loop HTTP/1.1 load generator: a fixed arrival schedule, latency from each request's intended send time.

    KAIROS_BENCH_KEY=<key> python -m bench.loadgen --url http://127.0.0.1:3000/v1/score --rate 300 --seconds 30 \
        --users 100000 --out run.json [--watch server=PID ...]

Open loop
    The send times are drawn before the run starts (``--arrivals poisson``: exponential gaps at ``--rate``, seeded;
    ``uniform``: one every ``1/rate`` s) and each request goes out at its time whatever the server is doing: the
    generator never waits for a response before sending the next request. A request's latency is measured from its
    **intended** send time to the last byte of its response, so queueing anywhere (in the server, in the kernel,
    for a free connection here) is in the figure rather than hidden by a client that slowed down (coordinated
    omission).

Connections
    HTTP/1.1 keep-alive over a pool: ``--connections`` are opened before the schedule starts; a request takes an
    idle one, or opens another while the pool is under ``--max-connections``, or waits for the next to come free
    (that wait counts in its latency). One request at a time per connection (no pipelining).

The generator's own lag
    ``scheduler_lag_ms`` = the moment the generator got to a request minus its intended time: a clock thread sleeps
    to each intended time (nanosleep, about 0.1 ms late; the event loop's own timers have 1 ms resolution) and wakes
    the loop, so the lag is that, the wake-up, and any time this process was busy or descheduled. A lag that is large
    next to the latencies means the generator, not the server, was the limit. ``connection_wait_ms`` = write time minus
    that moment: the wait for a free connection (the server holding them all), part of the server's latency.

Only the standard library, numpy, psutil and (if installed) uvloop: this process starts quickly and spends its
CPU on sockets. Raw asyncio protocols with the requests pre-formatted keep it at a few per cent of a core per
1,000 requests/s. The first ``--warmup`` seconds of the schedule are sent but not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import psutil

USER_ID = "bench-u{:06d}"  # the users the benchmark writes to the online store and the generator asks for
SESSION_ID = "bench-u{:06d}-s1"  # each user's one session
PENDING, TRANSPORT_ERROR = 0, -1
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
_SAMPLES = 3  # bodies kept per error status
_REASONS = 10  # distinct reasons of degraded answers counted


def user_id(i: int) -> str:
    return USER_ID.format(i)


def session_id(i: int) -> str:
    return SESSION_ID.format(i)


def schedule(rate: float, seconds: float, *, arrivals: str = "poisson", seed: int = 1) -> npt.NDArray[np.float64]:
    """Intended send times (seconds from the start) of every request in ``[0, seconds)``, fixed in advance."""
    if arrivals == "uniform":
        return np.arange(0.0, seconds, 1.0 / rate)
    rng = np.random.default_rng(seed)
    n = int(rate * seconds * 1.2 + 100)
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    while times[-1] < seconds:  # not reached for any sane rate; kept so the schedule always covers the run
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return times[times < seconds]


def percentiles_ms(seconds: npt.NDArray[np.float64]) -> dict[str, float | None]:
    """p50, p90, p99, p99.9, max and mean of durations in seconds, as milliseconds (linear interpolation)."""
    if seconds.size == 0:
        return {"p50": None, "p90": None, "p99": None, "p99_9": None, "max": None, "mean": None}
    ms = seconds * 1000.0
    p50, p90, p99, p999 = np.percentile(ms, [50, 90, 99, 99.9])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "p99_9": round(float(p999), 3), "max": round(float(ms.max()), 3), "mean": round(float(ms.mean()), 3)}


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return float("nan")
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class CpuSnapshot:
    at: float  # perf_counter
    trees: dict[str, float]  # watched name -> CPU seconds of its tree
    me: float  # this process's CPU seconds


def snapshot(watch: dict[str, int]) -> CpuSnapshot:
    mine = psutil.Process().cpu_times()
    return CpuSnapshot(time.perf_counter(), {n: tree_cpu(pid) for n, pid in watch.items()}, mine.user + mine.system)


@dataclass
class Plan:
    host: str
    port: int
    path: str
    key: str
    users: int
    session: bool
    rate: float
    seconds: float
    warmup: float
    arrivals: str
    seed: int
    connections: int
    max_connections: int
    drain: float
    watch: dict[str, int] = field(default_factory=dict)


class Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses the response (Content-Length or chunked)."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: Any = None  # uvloop's TCPTransport is not an asyncio.Transport subclass
        self.buf = bytearray()
        self.current = -1  # the request in flight on it, -1 when idle
        self.alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.alive = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            try:
                status = int(head[9:12])
            except ValueError:
                self.gen.fail(self, f"unparsable status line {head[:40]!r}")
                return
            m = _CONTENT_LENGTH.search(head)
            if m is not None:
                total = end + 4 + int(m.group(1))
                if len(self.buf) < total:
                    return
                body = bytes(self.buf[end + 4:total])
                del self.buf[:total]
            elif b"\r\ntransfer-encoding: chunked" in head:
                got = _dechunk(self.buf, end + 4)
                if got is None:
                    return
                body, total = got
                del self.buf[:total]
            else:  # no length: the body runs to the close (the server is then closing this connection)
                self.gen.fail(self, f"a {status} response without Content-Length")
                return
            self.gen.complete(self, status, body, keep=b"\r\nconnection: close" not in head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.gen.lost(self, exc)


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked body from ``buf[start:]``: (body, bytes consumed from 0), or ``None`` if not all there yet."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            trailer = buf.find(b"\r\n\r\n", pos - 2)
            return (bytes(out), trailer + 4) if trailer >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


class Generator:
    """Sends ``plan``'s schedule; records intended, dispatched, sent and answered times and statuses."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.offsets = schedule(plan.rate, plan.warmup + plan.seconds, arrivals=plan.arrivals, seed=plan.seed)
        n = len(self.offsets)
        self.users = np.random.default_rng(plan.seed + 1).integers(0, plan.users, n)
        self.intended = np.zeros(n)
        self.dispatched = np.full(n, np.nan)
        self.sent = np.full(n, np.nan)
        self.done = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int32)
        self.idle: list[Connection] = []
        self.conns: set[Connection] = set()
        self.connecting = 0
        self.opened = 0
        self.waiting: deque[int] = deque()
        self.outstanding = 0
        self.max_outstanding = 0
        self.transport_errors: Counter[str] = Counter()
        self.bodies: dict[int, list[str]] = {}
        self.degraded = 0
        self.degraded_reasons: Counter[str] = Counter()
        self.finished = asyncio.Event()
        self.scheduled = asyncio.Event()
        self.scheduling = True
        self.next = 0  # the next request to send
        self.measured_from = 0  # requests before it are the warm-up
        self.first: asyncio.Future[CpuSnapshot] | None = None
        head = (f"POST {plan.path} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\nAuthorization: Bearer {plan.key}\r\n"
                "Content-Type: application/json\r\nAccept: application/json\r\n")
        self._head = head.encode()

    # -- requests ---------------------------------------------------------------------------------------------
    def request(self, i: int) -> bytes:
        u = int(self.users[i])
        body = (f'{{"user_id":"{user_id(u)}","session_id":"{session_id(u)}"}}' if self.plan.session
                else f'{{"user_id":"{user_id(u)}"}}').encode()
        return self._head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body

    def dispatch(self, i: int) -> None:
        self.dispatched[i] = time.perf_counter()
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        if self.idle:
            self.write(self.idle.pop(), i)
            return
        self.waiting.append(i)
        if len(self.conns) + self.connecting < self.plan.max_connections:
            self.open()

    def write(self, conn: Connection, i: int) -> None:
        conn.current = i
        self.sent[i] = time.perf_counter()
        conn.transport.write(self.request(i))

    # -- connections ------------------------------------------------------------------------------------------
    def open(self) -> None:
        self.connecting += 1
        self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: Connection(self), self.plan.host, self.plan.port)
        except OSError as e:
            self.connecting -= 1
            self.transport_errors[f"connect: {type(e).__name__}: {e}"] += 1
            if self.waiting:  # the request that asked for this connection fails; the others keep waiting
                self.finish(self.waiting.popleft(), TRANSPORT_ERROR)
            return
        self.connecting -= 1
        self.opened += 1
        self.conns.add(conn)
        self.release(conn)

    def release(self, conn: Connection) -> None:
        if self.waiting:
            self.write(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def drop(self, conn: Connection) -> None:
        self.conns.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if self.waiting and len(self.conns) + self.connecting < self.plan.max_connections:
            self.open()

    # -- answers ----------------------------------------------------------------------------------------------
    def finish(self, i: int, status: int) -> None:
        self.done[i] = time.perf_counter()
        self.status[i] = status
        self.outstanding -= 1
        if not self.scheduling and self.outstanding == 0:
            self.finished.set()

    def complete(self, conn: Connection, status: int, body: bytes, *, keep: bool) -> None:
        i, conn.current = conn.current, -1
        if i < 0:
            self.transport_errors["a response with no request in flight"] += 1
            return
        self.finish(i, status)
        if i >= self.measured_from:  # measured: look at the answer
            if 200 <= status < 300:
                if b'"degraded":true' in body:
                    self.degraded += 1
                    try:
                        reason = str(json.loads(body).get("reason"))
                    except ValueError:
                        reason = body[:300].decode(errors="replace")
                    if reason in self.degraded_reasons or len(self.degraded_reasons) < _REASONS:
                        self.degraded_reasons[reason] += 1
            else:
                kept = self.bodies.setdefault(status, [])
                if len(kept) < _SAMPLES:
                    kept.append(body[:500].decode(errors="replace"))
        if keep and conn.alive:
            self.release(conn)
        else:
            conn.transport.close()
            self.drop(conn)

    def fail(self, conn: Connection, why: str) -> None:
        self.transport_errors[why] += 1
        conn.transport.close()  # connection_lost fails the request in flight

    def lost(self, conn: Connection, exc: Exception | None) -> None:
        i, conn.current = conn.current, -1
        if i >= 0:
            self.transport_errors[f"connection lost: {type(exc).__name__ if exc else 'closed by the server'}"] += 1
            self.finish(i, TRANSPORT_ERROR)
        self.drop(conn)

    # -- the run ----------------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        p = self.plan
        for _ in range(p.connections):
            self.open()
        deadline = time.monotonic() + 30
        while len(self.conns) < p.connections and time.monotonic() < deadline and not self.transport_errors:
            await asyncio.sleep(0.01)
        start = time.perf_counter() + 0.05
        self.intended = start + self.offsets  # the warm-up, then the measured window from start + warmup
        self.measured_from = int(np.searchsorted(self.offsets, p.warmup))
        ticker = threading.Thread(target=self._tick, name="loadgen-ticker", daemon=True)
        ticker.start()
        await self.scheduled.wait()
        ticker.join()
        last_intended = float(self.intended[-1]) if len(self.intended) else start
        self.scheduling = False
        if self.outstanding == 0:
            self.finished.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), p.drain)
        end = await self.loop.run_in_executor(None, snapshot, p.watch)
        begin = await self.first if self.first is not None else end
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        return self.summary(self.measured_from, begin, end, last_intended)

    def _tick(self) -> None:
        """The clock, in a thread: sleeps (nanosleep, ~0.1 ms precise, where the event loop's timers have 1 ms
        resolution) to each intended time, then wakes the loop to send what is due."""
        intended, perf, sleep, wake = self.intended, time.perf_counter, time.sleep, self.loop.call_soon_threadsafe
        for t in intended:
            delay = t - perf()
            if delay > 0:
                sleep(delay)
            wake(self._due)  # behind, a wake-up finds nothing left to send: a few microseconds

    def _due(self) -> None:
        """Send every request whose intended time has come (in the event loop)."""
        now, n = time.perf_counter(), len(self.intended)
        while self.next < n and self.intended[self.next] <= now:
            i = self.next
            self.next += 1
            if i == self.measured_from:  # in a thread: psutil's reads must not delay the sends
                self.first = self.loop.run_in_executor(None, snapshot, self.plan.watch)
            self.dispatch(i)
        if self.next >= n:
            self.scheduled.set()

    def summary(self, measured_from: int, begin: CpuSnapshot, end: CpuSnapshot, last_intended: float
                ) -> dict[str, Any]:
        p = self.plan
        sl = slice(measured_from, None)
        intended, dispatched, sent = self.intended[sl], self.dispatched[sl], self.sent[sl]
        done, status = self.done[sl], self.status[sl]
        n = len(intended)
        answered = status > 0
        ok = (status >= 200) & (status < 300)
        unanswered = int((status == PENDING).sum())
        transport = int((status == TRANSPORT_ERROR).sum())
        by_status = {str(s): int(c) for s, c in zip(*np.unique(status[answered], return_counts=True), strict=True)}
        errors = n - int(ok.sum())
        window = max(last_intended - float(intended[0]), 1e-9) if n else 0.0
        t0 = float(intended[0]) if n else 0.0
        last_ok = float(np.nanmax(done[ok])) if ok.any() else t0
        wall = max(end.at - begin.at, 1e-9)
        return {
            "rate_target": p.rate, "seconds": p.seconds, "warmup_seconds": p.warmup, "arrivals": p.arrivals,
            "requests": n, "sent_per_s": round(n / window, 1) if n else 0.0,
            "throughput_per_s": round(int(ok.sum()) / max(last_ok - t0, 1e-9), 1) if ok.any() else 0.0,
            "latency_ms": percentiles_ms(done[answered] - intended[answered]),
            "latency_ok_ms": percentiles_ms(done[ok] - intended[ok]),
            "ok": int(ok.sum()), "errors": errors, "error_rate": round(errors / n, 6) if n else None,
            "by_status": by_status, "transport_errors": transport, "unanswered_after_drain": unanswered,
            "transport_error_kinds": dict(self.transport_errors), "error_bodies": {str(k): v for k, v in
                                                                                 self.bodies.items()},
            "degraded": self.degraded, "degraded_reasons": dict(self.degraded_reasons),
            "generator": {
                "scheduler_lag_ms": percentiles_ms(dispatched - intended),
                "connection_wait_ms": percentiles_ms(sent[~np.isnan(sent)] - dispatched[~np.isnan(sent)]),
                "connections_opened": self.opened, "max_in_flight": self.max_outstanding,
                "cpu_s_per_s": round((end.me - begin.me) / wall, 3),
            },
            "cpu_s_per_s": {name: round((end.trees[name] - begin.trees[name]) / wall, 3) for name in p.watch},
            "cpu_window_s": round(wall, 2),
        }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="e.g. http://127.0.0.1:3000/v1/score")
    ap.add_argument("--rate", type=float, required=True, help="requests per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds sent first at the same rate, not measured")
    ap.add_argument("--users", type=int, required=True, help="user ids bench-u000000 .. bench-u<users-1>")
    ap.add_argument("--session", action="store_true", help="also send each user's session_id")
    ap.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--connections", type=int, default=32, help="connections opened before the schedule starts")
    ap.add_argument("--max-connections", type=int, default=512)
    ap.add_argument("--drain", type=float, default=15.0, help="seconds to wait for answers after the last send")
    ap.add_argument("--watch", action="append", default=[], metavar="NAME=PID",
                    help="report CPU seconds per wall second of this process tree during the measured window")
    ap.add_argument("--out", type=Path, required=True, help="the summary as JSON")
    a = ap.parse_args(argv)
    url = urlsplit(a.url)
    key = os.environ.get("KAIROS_BENCH_KEY", "")  # not an argument: it would show in the process list
    plan = Plan(host=url.hostname or "127.0.0.1", port=url.port or 80, path=url.path or "/", key=key, users=a.users,
                session=a.session, rate=a.rate, seconds=a.seconds, warmup=a.warmup, arrivals=a.arrivals, seed=a.seed,
                connections=a.connections, max_connections=a.max_connections, drain=a.drain,
                watch={n: int(pid) for n, pid in (w.split("=", 1) for w in a.watch)})
    try:
        import uvloop

        runner: Any = uvloop.run
        loop_name = "uvloop"
    except ImportError:  # pragma: no cover - uvloop is in the environment
        runner, loop_name = asyncio.run, "asyncio"

    async def go() -> dict[str, Any]:
        return await Generator(plan).run()

    result = runner(go())
    result["generator"]["event_loop"] = loop_name
    a.out.write_text(json.dumps(result, indent=1))
    lat = result["latency_ms"]
    print(f"  {a.rate:>6,.0f}/s: {result['requests']:,} requests, p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
          f"max {lat['max']} ms, errors {result['errors']}, generator lag p99 "
          f"{result['generator']['scheduler_lag_ms']['p99']} ms", flush=True)


if __name__ == "__main__":
    main()
