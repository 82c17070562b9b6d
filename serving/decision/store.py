"""The decision layer's state, shared by every worker and surviving restarts.

Three things live here, on the backend of the settings' online store (``online_store.type``): a SQLite file
under ``data_dir`` (``decisions/state.db``), or the Redis server of ``online_store.connection_string``.

* **The bandit posteriors**: the outcome counts (successes, failures) per (bucket, action), what
  :class:`~serving.decision.bandit.BanditState` holds. An outcome adds to them atomically: on Redis two
  ``HINCRBYFLOAT`` inside one Lua script (which also joins the outcome, below), on SQLite one
  ``BEGIN IMMEDIATE`` transaction with an upsert that adds in SQL. Concurrent updates from any number of
  threads and processes are never lost.
* **Each user's decision history** (:class:`UserHistory`, a :class:`~serving.decision.context.HistoryLike`):
  what caps and cool-downs read. Kept for ``horizon`` (:func:`history_horizon`: the longest cap window or
  cool-down of the policy) after each decision; on Redis a sorted set per user, scored by the decision time.
* **The pending decisions** an outcome is joined to: an outcome whose ``time`` is within the attribution
  ``window`` after its decision is joined (once) and updates the bandit; an unknown decision, one whose
  window has ended, a second outcome for the same decision and an outcome before its decision are refused
  with the reason (:class:`Join`). A decision is kept ``2 × window`` (at least ``horizon``) after it was
  made, so a late outcome is told "expired" for a while rather than "unknown".

Times are decision (data) times: a replay with request times in the past joins and caps in data time. Redis
expiries are wall-clock (``PEXPIRE``) with the same durations. The history read and the record of a decision
are two steps (two concurrent decisions for one user may both pass a cap); the bandit update is atomic.
Only one Redis server is supported (like the online reader); the Lua script names every key it touches.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from conf.settings import Settings
from serving.decision.bandit import BanditState
from serving.decision.config import Channel, PolicyConfig
from serving.decision.context import Decision, PastDecision

JoinStatus = Literal["joined", "unknown", "expired", "duplicate", "before_decision"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(t: datetime) -> int:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"a timezone-aware time is needed, got {t!r}")
    return (t.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)


def _from_us(us: int | float | str | bytes) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _check_reward(reward: float) -> float:
    r = float(reward)
    if not 0.0 <= r <= 1.0:  # NaN fails too
        raise ValueError(f"a reward is in [0, 1], got {reward}")
    return r


def history_horizon(config: PolicyConfig) -> timedelta:
    """How far back caps and cool-downs look: the longest cap window or cool-down of ``config`` (1 day if none)."""
    spans = [c.window for c in config.caps] + [t.cooldown for t in config.triggers.values() if t.cooldown]
    if config.default_cooldown is not None:
        spans.append(config.default_cooldown)
    return max(spans, default=timedelta(days=1))


@dataclass(frozen=True)
class Pending:
    """What the store keeps of a decision to join its outcome."""

    decision_id: str
    user_id: str
    at: datetime
    expires: datetime  # the end of the attribution window
    bucket: str
    action: str
    propensity: float
    policy_version: str
    outcome_at: datetime | None = None  # set once an outcome is joined
    reward: float | None = None


@dataclass(frozen=True)
class Join:
    """The answer to an outcome: joined (the bandit was updated) or refused, with the reason in words."""

    status: JoinStatus
    decision_id: str
    detail: str
    decision: Pending | None = None

    @property
    def joined(self) -> bool:
        return self.status == "joined"


@dataclass(frozen=True)
class UserHistory:
    """A user's recent decisions as the store holds them (implements ``HistoryLike``)."""

    user_id: str
    decisions: tuple[PastDecision, ...] = ()

    def since(self, start: datetime) -> Iterable[PastDecision]:
        return (d for d in self.decisions if d.at >= start)

    def __len__(self) -> int:
        return len(self.decisions)


def _judge(decision_id: str, p: Pending | None, at: datetime) -> Join | None:
    """The refusal of an outcome at ``at`` for ``p``, or ``None`` if it joins."""
    if p is None:
        return Join("unknown", decision_id, f"decision_id: no decision {decision_id!r} is known (never made, or "
                    "older than the store keeps decisions)")
    if at < p.at:
        return Join("before_decision", decision_id, f"time: the outcome at {at.isoformat()} is before its decision "
                    f"at {p.at.isoformat()}", p)
    if at > p.expires:
        return Join("expired", decision_id, f"decision_id: the attribution window of decision {decision_id!r} "
                    f"(made at {p.at.isoformat()}) ended at {p.expires.isoformat()}; the outcome at "
                    f"{at.isoformat()} is too late", p)
    if p.outcome_at is not None:
        return Join("duplicate", decision_id, f"decision_id: decision {decision_id!r} already has its outcome "
                    f"(at {p.outcome_at.isoformat()})", p)
    return None


class DecisionStore(ABC):
    """The shared state of the decision layer (see the module docstring). Thread-safe; fork-safe."""

    backend: str

    def __init__(self, *, window: timedelta, horizon: timedelta) -> None:
        if window <= timedelta(0) or horizon <= timedelta(0):
            raise ValueError("the attribution window and the history horizon must be positive")
        self.window = window
        self.horizon = horizon
        self.keep = max(2 * window, horizon)  # how long a decision is kept after it was made

    # -- the bandit ------------------------------------------------------------------------------------------
    @abstractmethod
    def state(self, bucket: str | None = None) -> BanditState:
        """The bandit counts (of one bucket, or of all)."""

    @abstractmethod
    def add(self, bucket: str, action: str, reward: float) -> None:
        """Add one outcome (``reward`` in [0, 1]) to (bucket, action), atomically."""

    # -- decisions -------------------------------------------------------------------------------------------
    @abstractmethod
    def history(self, user_id: str, since: datetime) -> UserHistory:
        """The user's decisions at or after ``since``."""

    def snapshot(self, user_id: str, bucket: str | None, since: datetime) -> tuple[BanditState, UserHistory]:
        """What one decision reads: the bucket's counts and the user's history (one round trip on Redis)."""
        return self.state(bucket), self.history(user_id, since)

    @abstractmethod
    def record(self, decision: Decision) -> None:
        """Keep ``decision``: in the user's history, and pending its outcome. Recording it again changes nothing."""

    @abstractmethod
    def pending(self, decision_id: str) -> Pending | None:
        """What is kept of a decision (``None``: unknown, or no longer kept)."""

    @abstractmethod
    def join(self, decision_id: str, at: datetime, reward: float) -> Join:
        """Join an outcome at ``at`` to its decision and, if it joins, add it to the bandit: one atomic step."""

    @abstractmethod
    def ping(self) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> DecisionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pending_of(self, d: Decision) -> Pending:
        return Pending(decision_id=d.decision_id, user_id=d.user_id, at=d.at, expires=d.at + self.window,
                       bucket=d.bucket, action=d.action, propensity=d.propensity, policy_version=d.policy_version)


# ------------------------------------------------------------------------------------------------------ SQLite
_SCHEMA = """
CREATE TABLE IF NOT EXISTS bandit (bucket TEXT NOT NULL, action TEXT NOT NULL, successes REAL NOT NULL,
    failures REAL NOT NULL, PRIMARY KEY (bucket, action));
CREATE TABLE IF NOT EXISTS decisions (decision_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, at_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL, bucket TEXT NOT NULL, action TEXT NOT NULL, channel TEXT NOT NULL, trigger TEXT,
    holdout INTEGER NOT NULL, propensity REAL NOT NULL, policy_version TEXT NOT NULL, outcome_us INTEGER,
    reward REAL);
CREATE INDEX IF NOT EXISTS decisions_user ON decisions (user_id, at_us);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at_us);
"""
_PENDING_COLS = ("decision_id, user_id, at_us, expires_us, bucket, action, propensity, policy_version, outcome_us, "
                 "reward")
_UPSERT = ("INSERT INTO bandit (bucket, action, successes, failures) VALUES (?, ?, ?, ?) ON CONFLICT (bucket, action) "
           "DO UPDATE SET successes = successes + excluded.successes, failures = failures + excluded.failures")


def _pending_row(r: tuple[Any, ...] | None) -> Pending | None:
    if r is None:
        return None
    return Pending(decision_id=r[0], user_id=r[1], at=_from_us(r[2]), expires=_from_us(r[3]), bucket=r[4],
                   action=r[5], propensity=float(r[6]), policy_version=r[7],
                   outcome_at=None if r[8] is None else _from_us(r[8]), reward=None if r[9] is None else float(r[9]))


class SqliteDecisionStore(DecisionStore):
    """The embedded store: one SQLite file (WAL), a connection per thread and process, writes in
    ``BEGIN IMMEDIATE`` transactions (so a read-modify-write never interleaves with another writer's)."""

    backend = "sqlite"

    def __init__(self, path: Path | str, *, window: timedelta, horizon: timedelta, busy_timeout: float = 10.0) -> None:
        super().__init__(window=window, horizon=horizon)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._records = 0
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self._busy, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: object, *_: object) -> None:
            self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")

    def _tx(self) -> SqliteDecisionStore._Tx:
        return SqliteDecisionStore._Tx(self._conn())

    def state(self, bucket: str | None = None) -> BanditState:
        if bucket is None:
            rows = self._conn().execute("SELECT bucket, action, successes, failures FROM bandit").fetchall()
        else:
            rows = self._conn().execute("SELECT bucket, action, successes, failures FROM bandit WHERE bucket = ?",
                                        (bucket,)).fetchall()
        return BanditState({(b, a): (float(s), float(f)) for b, a, s, f in rows})

    def add(self, bucket: str, action: str, reward: float) -> None:
        r = _check_reward(reward)
        with self._tx() as c:
            c.execute(_UPSERT, (bucket, action, r, 1.0 - r))

    def history(self, user_id: str, since: datetime) -> UserHistory:
        rows = self._conn().execute(
            "SELECT at_us, action, channel, trigger, holdout FROM decisions WHERE user_id = ? AND at_us >= ? "
            "ORDER BY at_us", (user_id, _us(since))).fetchall()
        return UserHistory(user_id, tuple(PastDecision(at=_from_us(t), action=a, channel=ch, trigger=tr,
                                                       holdout=bool(h)) for t, a, ch, tr, h in rows))

    def record(self, decision: Decision) -> None:
        p = self._pending_of(decision)
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO decisions (decision_id, user_id, at_us, expires_us, bucket, action, "
                      "channel, trigger, holdout, propensity, policy_version) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (p.decision_id, p.user_id, _us(p.at), _us(p.expires), p.bucket, p.action, decision.channel,
                       decision.reasons.trigger, int(decision.holdout), p.propensity, p.policy_version))
            self._records += 1
            if self._records % 500 == 1:  # now and then, forget decisions older than the store keeps them
                c.execute("DELETE FROM decisions WHERE at_us < ?", (_us(decision.at - self.keep),))

    def pending(self, decision_id: str) -> Pending | None:
        return _pending_row(self._conn().execute(f"SELECT {_PENDING_COLS} FROM decisions WHERE decision_id = ?",
                                                 (decision_id,)).fetchone())

    def join(self, decision_id: str, at: datetime, reward: float) -> Join:
        r = _check_reward(reward)
        with self._tx() as c:
            p = _pending_row(c.execute(f"SELECT {_PENDING_COLS} FROM decisions WHERE decision_id = ?",
                                       (decision_id,)).fetchone())
            refused = _judge(decision_id, p, at)
            if refused is not None:
                return refused
            assert p is not None
            c.execute("UPDATE decisions SET outcome_us = ?, reward = ? WHERE decision_id = ?",
                      (_us(at), r, decision_id))
            c.execute(_UPSERT, (p.bucket, p.action, r, 1.0 - r))
        return Join("joined", decision_id, f"joined to decision {decision_id!r} ({p.action})",
                    Pending(**{**p.__dict__, "outcome_at": at, "reward": r}))

    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


# ------------------------------------------------------------------------------------------------------- Redis
# KEYS[1]: the decision's hash, KEYS[2]: the bandit hash. ARGV: outcome time (us), reward, 1 - reward.
_JOIN_LUA = """
local p = redis.call('HMGET', KEYS[1], 'at_us', 'expires_us', 'bucket', 'action', 'outcome_us')
if not p[1] then return 'unknown' end
local t = tonumber(ARGV[1])
if t < tonumber(p[1]) then return 'before_decision' end
if t > tonumber(p[2]) then return 'expired' end
if p[5] then return 'duplicate' end
redis.call('HSET', KEYS[1], 'outcome_us', ARGV[1], 'reward', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[2], p[3] .. '\\t' .. p[4] .. '\\ts', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[2], p[3] .. '\\t' .. p[4] .. '\\tf', ARGV[3])
return 'joined'
"""
_PENDING_FIELDS = ("decision_id", "user_id", "at_us", "expires_us", "bucket", "action", "propensity",
                   "policy_version", "outcome_us", "reward")


def _field(bucket: str, action: str, which: str) -> str:
    if "\t" in bucket or "\t" in action:
        raise ValueError("bucket and action names hold no tab")
    return f"{bucket}\t{action}\t{which}"


def _pending_hash(h: Mapping[bytes, bytes]) -> Pending | None:
    if not h:
        return None
    v = {k.decode(): b.decode() for k, b in h.items()}
    return Pending(decision_id=v["decision_id"], user_id=v["user_id"], at=_from_us(v["at_us"]),
                   expires=_from_us(v["expires_us"]), bucket=v["bucket"], action=v["action"],
                   propensity=float(v["propensity"]), policy_version=v["policy_version"],
                   outcome_at=_from_us(v["outcome_us"]) if "outcome_us" in v else None,
                   reward=float(v["reward"]) if "reward" in v else None)


def _state_of(h: Mapping[bytes, bytes], bucket: str | None) -> BanditState:
    counts: dict[tuple[str, str], list[float]] = {}
    for k, val in h.items():
        b, a, which = k.decode().rsplit("\t", 2)
        if bucket is None or b == bucket:
            counts.setdefault((b, a), [0.0, 0.0])[0 if which == "s" else 1] = float(val)
    return BanditState({key: (s, f) for key, (s, f) in counts.items()})


class RedisDecisionStore(DecisionStore):
    """The production store, on one Redis (or valkey) server: keys under ``prefix``."""

    backend = "redis"

    def __init__(self, client: Any, *, window: timedelta, horizon: timedelta, prefix: str = "kairos:decision") -> None:
        super().__init__(window=window, horizon=horizon)
        self.redis = client
        self.prefix = prefix
        self.bandit_key = f"{prefix}:bandit"
        self._join = client.register_script(_JOIN_LUA)

    @classmethod
    def from_connection_string(cls, connection_string: str, **kw: Any) -> RedisDecisionStore:
        """``host:port[,db=0][,password=...]``, parsed by Feast's own parser, as the online store's."""
        import redis
        from feast.infra.online_stores.redis import RedisOnlineStore
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
        if len(nodes) != 1:
            raise ValueError(f"one Redis server expected, got {connection_string!r}")
        params = {k: v for k, v in dict(params).items() if k != "decode_responses"}
        params.setdefault("socket_timeout", 2.0)  # a hung or absent server must not hold a deciding thread for long
        params.setdefault("socket_connect_timeout", 1.0)
        params.setdefault("retry", Retry(ExponentialBackoff(cap=0.05, base=0.01), 1))  # redis-py's default: ~8 s
        return cls(redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params), **kw)

    def _pending_key(self, decision_id: str) -> str:
        return f"{self.prefix}:pending:{decision_id}"

    def _history_key(self, user_id: str) -> str:
        return f"{self.prefix}:history:{user_id}"

    def state(self, bucket: str | None = None) -> BanditState:
        return _state_of(self.redis.hgetall(self.bandit_key), bucket)

    def add(self, bucket: str, action: str, reward: float) -> None:
        r = _check_reward(reward)
        pipe = self.redis.pipeline(transaction=True)  # MULTI/EXEC: both counts or neither
        pipe.hincrbyfloat(self.bandit_key, _field(bucket, action, "s"), r)
        pipe.hincrbyfloat(self.bandit_key, _field(bucket, action, "f"), 1.0 - r)
        pipe.execute()

    @staticmethod
    def _history_of(user_id: str, members: list[bytes]) -> UserHistory:
        out = []
        for m in members:
            d = json.loads(m)
            out.append(PastDecision(at=_from_us(d["at"]), action=d["a"], channel=d["c"], trigger=d["t"],
                                    holdout=bool(d["h"])))
        return UserHistory(user_id, tuple(out))

    def history(self, user_id: str, since: datetime) -> UserHistory:
        return self._history_of(user_id, self.redis.zrangebyscore(self._history_key(user_id), _us(since), "+inf"))

    def snapshot(self, user_id: str, bucket: str | None, since: datetime) -> tuple[BanditState, UserHistory]:
        pipe = self.redis.pipeline(transaction=False)  # one round trip
        pipe.hgetall(self.bandit_key)
        pipe.zrangebyscore(self._history_key(user_id), _us(since), "+inf")
        counts, members = pipe.execute()
        return _state_of(counts, bucket), self._history_of(user_id, members)

    def record(self, decision: Decision) -> None:
        p = self._pending_of(decision)
        key, hist = self._pending_key(p.decision_id), self._history_key(p.user_id)
        channel: Channel = decision.channel
        member = json.dumps({"id": p.decision_id, "at": _us(p.at), "a": p.action, "c": channel,
                             "t": decision.reasons.trigger, "h": decision.holdout}, separators=(",", ":"))
        keep_ms = int(self.keep.total_seconds() * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(key, "decision_id", p.decision_id)  # a second record keeps the first (and its outcome)
        pipe.hset(key, mapping={"user_id": p.user_id, "at_us": _us(p.at), "expires_us": _us(p.expires),
                                "bucket": p.bucket, "action": p.action, "propensity": repr(p.propensity),
                                "policy_version": p.policy_version})
        pipe.pexpire(key, keep_ms)
        pipe.zadd(hist, {member: _us(p.at)})
        pipe.zremrangebyscore(hist, "-inf", f"({_us(p.at - self.horizon)}")
        pipe.pexpire(hist, keep_ms)
        pipe.execute()

    def pending(self, decision_id: str) -> Pending | None:
        return _pending_hash(self.redis.hgetall(self._pending_key(decision_id)))

    def join(self, decision_id: str, at: datetime, reward: float) -> Join:
        r = _check_reward(reward)
        key = self._pending_key(decision_id)
        raw = self._join(keys=[key, self.bandit_key], args=[_us(at), repr(r), repr(1.0 - r)])
        status = raw.decode() if isinstance(raw, bytes) else str(raw)
        p = self.pending(decision_id)
        if status == "joined":
            assert p is not None
            return Join("joined", decision_id, f"joined to decision {decision_id!r} ({p.action})", p)
        # the script decided, atomically; the words come from what is kept
        refused = _judge(decision_id, p, at)
        if refused is not None and refused.status == status:
            return refused
        return Join(cast(JoinStatus, status), decision_id,
                    f"decision_id: the outcome for decision {decision_id!r} was refused ({status})", p)

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except Exception:  # down is an answer
            return False

    def close(self) -> None:
        self.redis.close()


def open_store(settings: Settings, *, window: timedelta, horizon: timedelta) -> DecisionStore:
    """The store of the settings' online store type: ``<data_dir>/decisions/state.db``, or the Redis server."""
    if settings.online_store.type == "redis":
        if not settings.online_store.connection_string:
            raise ValueError("online_store.type is redis but online_store.connection_string is empty")
        return RedisDecisionStore.from_connection_string(settings.online_store.connection_string, window=window,
                                                         horizon=horizon, prefix=f"{settings.project}:decision")
    return SqliteDecisionStore(decision_state_path(settings), window=window, horizon=horizon)


def decision_state_path(settings: Settings) -> Path:
    return settings.data_path / "decisions" / "state.db"
