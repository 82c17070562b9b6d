"""A behavioural-event simulator that stands in for real traffic.

Users carry latent traits that drive what they do, so labels carry real signal:

* ``purchase_intent`` (Beta(2, 5)) sets how often a session carts, checks out and
  buys; the true per-session conversion probability is written to the truth;
* churners have a ``churn_start`` after which their sessions (and logins) thin
  out while help searches and failed feature uses rise;
* new users go through a six-step onboarding flow and drop off at a step that
  depends on their engagement;
* each user has category affinities, 1-3 devices, a country and consent flags.

Delivery is imperfect on purpose, at configurable rates: duplicates (the same
``event_id`` re-sent later), out-of-order arrivals (delayed, but within the
allowed lateness) and late arrivals (beyond it). The latent truth (users,
sessions, injected anomalies) is written beside the events, so model quality can
be compared with the best possible.

Everything is reproducible from the seed: the same config gives the same events.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import multiprocessing as mp
import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conf.settings import Settings, load_settings
from features.events import EVENT_PROPERTIES, EventType
from pipelines.eventlog import EVENT_SCHEMA, encode_json, write_parquet

CATEGORIES = ("shoes", "bags", "hats", "tops", "jeans", "jackets", "watches", "beauty", "home", "toys")
COUNTRIES = ("DE", "FR", "GB", "NL", "ES", "IT", "US", "PL")
DEVICE_TYPES = ("desktop", "mobile", "tablet", "app")
PAGES = ("/", "/sale", "/new", "/account", "/help", "/cart", "/blog", "/stores")
FEATURES = ("wishlist", "compare", "size_guide", "price_alert", "reorder")
QUERIES = ("running shoes", "leather bag", "summer hat", "gift ideas", "black jeans", "smart watch")
HELP_QUERIES = ("cancel subscription", "refund", "delete account", "change password", "delivery late")
ONBOARDING_STEPS = 6
SESSION_GAP = timedelta(minutes=30)


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    seed: int = 7
    users: int = 2000
    start: datetime = datetime(2026, 10, 1, tzinfo=UTC)
    days: int = 14
    products: int = 500
    duplicate_rate: float = 0.01
    out_of_order_rate: float = 0.05
    late_rate: float = 0.01
    allowed_lateness: timedelta = timedelta(hours=1)
    sessions_per_day: float = 1.2  # mean for a fully engaged user
    churn_fraction: float = 0.2
    new_user_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware UTC")
        for name in ("duplicate_rate", "out_of_order_rate", "late_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.users < 1 or self.days < 1:
            raise ValueError("users and days must be positive")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SimulationConfig:
        s = settings.simulator
        base = cls(seed=s.seed, users=s.users, start=s.start, days=s.days, duplicate_rate=s.duplicate_rate,
                   out_of_order_rate=s.out_of_order_rate, late_rate=s.late_rate,
                   allowed_lateness=settings.events.allowed_lateness)
        return replace(base, **overrides)


@dataclass
class SimulationResult:
    events: pa.Table
    users: pa.Table
    sessions: pa.Table
    anomalies: pa.Table


@dataclass
class SimulationSummary:
    rows: int
    seconds: float
    rows_per_second: float
    users: int
    sessions: int
    by_type: dict[str, int] = field(default_factory=dict)
    anomalies: dict[str, int] = field(default_factory=dict)
    out_dir: str = ""


_PROPS = {et: req | opt for et, (req, opt) in EVENT_PROPERTIES.items()}
_COMMON = ("schema_version", "user_id", "session_id", "consent_analytics", "consent_personalization",
           "consent_marketing", "device_id", "device_type", "country")
_PROPERTY_COLUMNS = sorted({p for props in _PROPS.values() for p in props})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TS = pa.timestamp("us", tz="UTC")


class _Rows:
    """Events as compact tuples; columns are built once per chunk (much faster than a dict per event).

    A row is ``(common, props, event_id, event_type, event_time_s, ingest_time_s)`` with times
    as float seconds since the epoch, turned into microsecond timestamps in one Arrow call.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[tuple[Any, ...], dict[str, Any], str, str, float, float]] = []

    def table(self) -> pa.Table:
        rows = self.rows
        cols: dict[str, pa.Array] = {}
        for i, name in enumerate(_COMMON):
            cols[name] = pa.array([r[0][i] for r in rows], type=EVENT_SCHEMA.field(name).type)
        cols["event_id"] = pa.array([r[2] for r in rows], pa.string())
        cols["event_type"] = pa.array([r[3] for r in rows], pa.string())
        for name, idx in (("event_time", 4), ("ingest_time", 5)):
            micros = np.fromiter((r[idx] for r in rows), dtype=np.float64, count=len(rows))
            cols[name] = pa.array(np.round(micros * 1e6).astype(np.int64), type=pa.int64()).cast(_TS)
        for name in _PROPERTY_COLUMNS:
            cols[name] = pa.array([r[1].get(name) for r in rows], type=EVENT_SCHEMA.field(name).type)
        return pa.table({f.name: cols[f.name] for f in EVENT_SCHEMA}, schema=EVENT_SCHEMA)


def _eid(seed: int, user: int, n: int) -> str:
    return f"e{seed:x}-{user:x}-{n:x}"


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; lam is small here (sessions per day, events per session)."""
    if lam <= 0:
        return 0
    limit, k, prod = math.exp(-lam), 0, rng.random()
    while prod > limit:
        k += 1
        prod *= rng.random()
    return k


def _ts(seconds: float) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


class _UserSim:
    """Generates one user's events from a generator seeded by (seed, user): chunks compose exactly."""

    def __init__(self, cfg: SimulationConfig, idx: int, catalogue: dict[str, Any]) -> None:
        rng = self.rng = random.Random(cfg.seed * 1_000_003 + idx)
        self.cfg, self.idx, self.cat = cfg, idx, catalogue
        self.user_id = f"u{idx:07d}"
        self.intent = rng.betavariate(2.0, 5.0)
        self.engagement = rng.betavariate(2.5, 2.0)
        self.churner = rng.random() < cfg.churn_fraction
        self.t_start = (cfg.start - _EPOCH).total_seconds()
        span = cfg.days * 86400.0
        self.churn_start = self.t_start + rng.uniform(0.2, 0.7) * span if self.churner else None
        self.is_new = rng.random() < cfg.new_user_fraction
        self.signup = self.t_start + rng.uniform(0, 0.5) * span if self.is_new else None
        p_continue = 0.55 + 0.4 * self.engagement  # onboarding: each step continues with this probability
        done = 0
        while done < ONBOARDING_STEPS and rng.random() < p_continue:
            done += 1
        self.onboarding_completed_steps = done if self.is_new else ONBOARDING_STEPS
        gammas = [rng.gammavariate(0.4, 1.0) + 1e-12 for _ in CATEGORIES]
        total = sum(gammas)
        self.affinity = [g / total for g in gammas]
        self.cum_affinity = list(itertools.accumulate(self.affinity))
        self.devices = [(f"{self.user_id}-d{k}", DEVICE_TYPES[int(rng.random() * 4)])
                        for k in range(1 + int(rng.random() * 3))]
        self.country = COUNTRIES[int(rng.random() * len(COUNTRIES))]
        self.consent_analytics = rng.random() < 0.95
        self.consent_personalization = self.consent_analytics and rng.random() < 0.9
        self.consent_marketing = rng.random() < 0.6
        self.n_events = 0
        self.sessions: list[dict[str, Any]] = []

    def truth(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id, "purchase_intent": self.intent, "engagement": self.engagement,
            "churner": self.churner, "churn_start": _ts(self.churn_start) if self.churn_start else None,
            "is_new": self.is_new, "signup": _ts(self.signup) if self.signup else None,
            "onboarding_completed_steps": self.onboarding_completed_steps, "devices": len(self.devices),
            "country": self.country, "consent_analytics": self.consent_analytics,
            "consent_personalization": self.consent_personalization, "consent_marketing": self.consent_marketing,
            "top_category": CATEGORIES[max(range(len(CATEGORIES)), key=self.affinity.__getitem__)],
        }

    def activity(self, day_start: float) -> float:
        """Mean sessions on a day: engagement, decaying after churn starts, none before signup."""
        if self.signup is not None and day_start + 86400.0 <= self.signup:
            return 0.0
        rate = self.cfg.sessions_per_day * (0.2 + self.engagement)
        if self.churn_start is not None and day_start >= self.churn_start:
            rate *= 0.45 * math.exp(-(day_start - self.churn_start) / 86400.0 / 3.0)
        return rate

    def p_convert(self) -> float:
        """The true probability that a session with a cart buys: the best any model can know."""
        return float(min(0.95, 0.05 + 0.9 * self.intent**1.3))

    def run(self, out: _Rows, anomalies: list[tuple[str, str]]) -> None:
        rng = self.rng
        for day in range(self.cfg.days):
            day_start = self.t_start + day * 86400.0
            n_sessions = _poisson(rng, self.activity(day_start))
            if self.signup is not None and day_start <= self.signup < day_start + 86400.0:
                n_sessions = max(n_sessions, 1)
            starts = sorted(rng.uniform(0, 86400.0 - 3600.0) for _ in range(n_sessions))
            last_end = day_start - SESSION_GAP.total_seconds()
            for s in starts:
                t = max(day_start + s, last_end + SESSION_GAP.total_seconds() + 1.0)
                if self.signup is not None and t < self.signup:
                    t = self.signup
                last_end = self.session(t, out, anomalies)

    def _product(self) -> tuple[str, str, float]:
        rng, cat = self.rng, self.cat
        c = min(bisect.bisect(self.cum_affinity, rng.random()), len(CATEGORIES) - 1)
        pids = cat["by_category"][c]
        pid = pids[int(rng.random() * len(pids))]
        return f"p{pid:05d}", CATEGORIES[c], cat["price"][pid]

    def session(self, t0: float, out: _Rows, anomalies: list[tuple[str, str]]) -> float:
        rng = self.rng
        sid = f"{self.user_id}-s{len(self.sessions):04d}"
        device_id, device_type = self.devices[int(rng.random() * len(self.devices))]
        churning = self.churn_start is not None and t0 >= self.churn_start
        common = (1, self.user_id, sid, self.consent_analytics, self.consent_personalization,
                  self.consent_marketing, device_id, device_type, self.country)
        t = t0
        events: list[tuple[float, EventType, dict[str, Any]]] = []

        def emit(etype: EventType, props: dict[str, Any]) -> None:
            nonlocal t
            events.append((t, etype, props))
            t += rng.expovariate(1 / 25.0) + 1.0

        if self.signup is not None and t0 == self.signup:
            for step in range(min(self.onboarding_completed_steps + 1, ONBOARDING_STEPS)):
                emit(EventType.ONBOARDING_STEP, {"flow": "signup", "step_index": step,
                                                 "completed": step < self.onboarding_completed_steps})
        if rng.random() < (0.35 if churning else 0.7):
            emit(EventType.LOGIN, {"success": rng.random() < 0.97})
        n_browse = _poisson(rng, 2 + 10 * self.engagement * (0.4 if churning else 1.0)) + 1
        cart_qty, cart_value, had_cart = 0, 0.0, False
        p_cart = 0.08 + 0.5 * self.intent
        for _ in range(n_browse):
            r = rng.random()
            if r < 0.40:
                pid, cat, price = self._product()
                emit(EventType.PRODUCT_VIEW, {"product_id": pid, "category": cat, "price": price})
                if rng.random() < p_cart:
                    qty = 1 + int(rng.random() * 2)
                    emit(EventType.ADD_TO_CART, {"product_id": pid, "category": cat, "price": price, "quantity": qty})
                    cart_qty += qty
                    cart_value += price * qty
                    had_cart = True
                    if rng.random() < 0.1:
                        emit(EventType.REMOVE_FROM_CART,
                             {"product_id": pid, "category": cat, "price": price, "quantity": 1})
                        cart_qty -= 1
                        cart_value -= price
            elif r < 0.62:
                emit(EventType.PAGE_VIEW, {"page": PAGES[int(rng.random() * len(PAGES))],
                                           "dwell_seconds": round(rng.gammavariate(2.0, 20.0 * (0.5 + self.engagement)),
                                                                  2)})
            elif r < 0.72:
                depth = min(100.0, rng.betavariate(2, 2) * 100 * (0.5 + self.engagement))
                emit(EventType.SCROLL, {"page": PAGES[int(rng.random() * len(PAGES))], "scroll_pct": round(depth, 1)})
            elif r < 0.78:
                emit(EventType.VIDEO_PROGRESS, {"video_id": f"v{int(rng.random() * 40):03d}",
                                                "progress_pct": (25.0, 50.0, 75.0, 100.0)[int(rng.random() * 4)]})
            elif r < 0.86:
                emit(EventType.SEARCH, {"query": QUERIES[int(rng.random() * len(QUERIES))]})
            elif r < 0.89:
                emit(EventType.SHARE, {"channel": ("email", "whatsapp", "link")[int(rng.random() * 3)]})
            elif r < 0.95:
                emit(EventType.FEATURE_USE, {"feature_name": FEATURES[int(rng.random() * len(FEATURES))],
                                             "success": rng.random() < (0.6 if churning else 0.95)})
            else:
                emit(EventType.FORM_STEP, {"flow": "address", "step_index": int(rng.random() * 3),
                                           "completed": rng.random() < 0.8})
            if rng.random() < (0.25 if churning else 0.01):
                emit(EventType.HELP_SEARCH, {"query": HELP_QUERIES[int(rng.random() * len(HELP_QUERIES))]})
        p_conv = self.p_convert() if cart_qty > 0 else 0.0
        converted = False
        if cart_qty > 0 and rng.random() < min(1.0, p_conv / 0.87):
            emit(EventType.CHECKOUT_START, {"amount": round(cart_value, 2), "quantity": cart_qty})
            if rng.random() < 0.87:
                emit(EventType.PURCHASE, {"amount": round(cart_value, 2), "quantity": cart_qty})
                converted = True
        self.sessions.append({"session_id": sid, "user_id": self.user_id, "start": _ts(events[0][0]),
                              "end": _ts(events[-1][0]), "events": len(events), "had_cart": had_cart,
                              "converted": converted, "abandoned": cart_qty > 0 and not converted,
                              "p_convert": p_conv, "churning": churning})
        for et, etype, props in events:
            self._deliver(et, etype, props, common, out, anomalies)
        return events[-1][0]

    def _deliver(self, et: float, etype: EventType, props: dict[str, Any], common: tuple[Any, ...],
                 out: _Rows, anomalies: list[tuple[str, str]]) -> None:
        cfg, rng = self.cfg, self.rng
        eid = _eid(cfg.seed, self.idx, self.n_events)
        self.n_events += 1
        r = rng.random()
        lateness = cfg.allowed_lateness.total_seconds()
        if r < cfg.late_rate:
            delay = lateness + rng.uniform(60.0, 5 * 3600.0)
            anomalies.append((eid, "late"))
        elif r < cfg.late_rate + cfg.out_of_order_rate:
            delay = rng.uniform(30.0, 0.9 * lateness)
            anomalies.append((eid, "out_of_order"))
        else:
            delay = rng.uniform(0.2, 3.0)
        out.rows.append((common, props, eid, etype.value, et, et + delay))
        if rng.random() < cfg.duplicate_rate:
            out.rows.append((common, props, eid, etype.value, et, et + delay + rng.uniform(1.0, 600.0)))
            anomalies.append((eid, "duplicate"))


def _catalogue(cfg: SimulationConfig) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    cats = [int(rng.random() * len(CATEGORIES)) for _ in range(cfg.products)]
    price = [round(math.exp(rng.gauss(3.5, 0.8)), 2) for _ in range(cfg.products)]
    by_category = [[p for p in range(cfg.products) if cats[p] == c] or [0] for c in range(len(CATEGORIES))]
    return {"price": price, "by_category": by_category}


def simulate_users(cfg: SimulationConfig, first: int, count: int) -> SimulationResult:
    """Users ``first .. first+count-1``; each user's randomness is seeded by (seed, user) so chunks compose."""
    catalogue = _catalogue(cfg)
    out = _Rows()
    anomalies: list[tuple[str, str]] = []
    users, sessions = [], []
    for idx in range(first, first + count):
        sim = _UserSim(cfg, idx, catalogue)
        sim.run(out, anomalies)
        users.append(sim.truth())
        sessions.extend(sim.sessions)
    return SimulationResult(
        events=out.table(),
        users=pa.Table.from_pylist(users),
        sessions=pa.Table.from_pylist(sessions) if sessions else pa.table({"session_id": pa.array([], pa.string())}),
        anomalies=pa.table({"event_id": [a for a, _ in anomalies], "kind": [k for _, k in anomalies]}),
    )


def simulate(cfg: SimulationConfig) -> SimulationResult:
    """Everything in memory (for tests and small demos)."""
    return simulate_users(cfg, 0, cfg.users)


def _simulate_chunk(cfg: SimulationConfig, out: Path, first: int, count: int) -> dict[str, Any]:
    """One chunk of users -> its own parquet parts; returns counts and truth tables."""
    res = simulate_users(cfg, first, count)
    write_parquet(res.events, out / "events", part=f"u{first:08d}")
    types = pc.value_counts(res.events.column("event_type")).flatten()
    return {
        "rows": res.events.num_rows,
        "by_type": dict(zip(types[0].to_pylist(), types[1].to_pylist(), strict=True)),
        "kinds": Counter(res.anomalies.column("kind").to_pylist()),
        "users": res.users, "sessions": res.sessions, "anomalies": res.anomalies,
    }


def simulate_to_dir(cfg: SimulationConfig, out_dir: str | Path, *, chunk_users: int = 500, workers: int = 1,
                    jsonl: bool = False) -> SimulationSummary:
    """Write ``events/`` (day-partitioned parquet), ``truth/`` and optionally ``stream.jsonl``.

    Users are simulated in chunks (bounded memory), on ``workers`` processes; each
    user's randomness depends only on (seed, user), so the output does not depend on
    the chunking or the number of workers.
    """
    out = Path(out_dir)
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    by_type: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    rows = n_sessions = 0
    writers: dict[str, pq.ParquetWriter] = {}
    chunks = [(first, min(chunk_users, cfg.users - first)) for first in range(0, cfg.users, chunk_users)]
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) if workers > 1 else None
    try:
        results: Iterator[dict[str, Any]] = (
            pool.map(_simulate_chunk, *zip(*[(cfg, out, f, c) for f, c in chunks], strict=True)) if pool
            else (_simulate_chunk(cfg, out, f, c) for f, c in chunks))
        for res in results:
            rows += res["rows"]
            n_sessions += res["sessions"].num_rows
            by_type.update(res["by_type"])
            kinds.update(res["kinds"])
            for name in ("users", "sessions", "anomalies"):
                table = res[name]
                if table.num_rows:
                    if name not in writers:
                        writers[name] = pq.ParquetWriter(truth / f"{name}.parquet", table.schema,
                                                         coerce_timestamps="us", allow_truncated_timestamps=True)
                    writers[name].write_table(table.cast(writers[name].schema))
    finally:
        for w in writers.values():
            w.close()
        if pool:
            pool.shutdown()
    seconds = time.perf_counter() - t0
    if jsonl:
        from pipelines.eventlog import read_parquet

        with open(out / "stream.jsonl", "w", encoding="utf-8") as fh:
            for rec in replay(read_parquet(out / "events")):
                fh.write(encode_json(rec) + "\n")
    summary = SimulationSummary(rows=rows, seconds=seconds, rows_per_second=rows / seconds if seconds else 0.0,
                                users=cfg.users, sessions=n_sessions, by_type=dict(by_type.most_common()),
                                anomalies=dict(kinds), out_dir=str(out))
    (truth / "config.json").write_text(json.dumps(asdict(cfg), default=str, indent=1))
    return summary


def replay(events: pa.Table, *, batch_size: int = 10_000) -> Iterator[dict[str, Any]]:
    """The events as a stream: in arrival order (ingest_time, then event_id), as records."""
    order = pc.sort_indices(events, sort_keys=[("ingest_time", "ascending"), ("event_id", "ascending")])
    ordered = events.take(order)
    for batch in ordered.to_batches(max_chunksize=batch_size):
        yield from batch.to_pylist()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Simulate Kairos behavioural events")
    settings = load_settings()
    p.add_argument("--users", type=int, default=settings.simulator.users)
    p.add_argument("--days", type=int, default=settings.simulator.days)
    p.add_argument("--seed", type=int, default=settings.simulator.seed)
    p.add_argument("--out", type=Path, default=settings.data_path)
    p.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    p.add_argument("--jsonl", action="store_true", help="also write stream.jsonl in arrival order")
    a = p.parse_args(argv)
    cfg = SimulationConfig.from_settings(settings, users=a.users, days=a.days, seed=a.seed)
    s = simulate_to_dir(cfg, a.out, jsonl=a.jsonl, workers=a.workers)
    print(f"{s.rows:,} events for {s.users:,} users ({s.sessions:,} sessions) in {s.seconds:.1f}s "
          f"= {s.rows_per_second:,.0f} events/s -> {s.out_dir}")
    print("injected:", s.anomalies)


if __name__ == "__main__":
    main()
