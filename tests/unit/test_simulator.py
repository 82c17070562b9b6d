"""The simulator: reproducible, valid, imperfect on purpose, and carrying real signal."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.events import EventType, validate_event
from pipelines.eventlog import read_parquet
from pipelines.simulator import SimulationConfig, replay, simulate, simulate_to_dir

CFG = SimulationConfig(seed=11, users=150, days=10, duplicate_rate=0.02, out_of_order_rate=0.05, late_rate=0.02)


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    return simulate(CFG)


def test_same_seed_same_events_other_seed_other_events(sim) -> None:  # type: ignore[no-untyped-def]
    again = simulate(CFG)
    assert again.events.equals(sim.events)
    other = simulate(SimulationConfig(seed=12, users=150, days=10))
    assert not other.events.equals(sim.events)


def test_every_event_is_valid_and_arrives_after_it_happened(sim) -> None:  # type: ignore[no-untyped-def]
    records = sim.events.to_pylist()
    assert len(records) > 5_000
    for r in records:
        _, errors = validate_event({k: v for k, v in r.items() if v is not None})
        assert errors == [], (r, errors)
        assert r["ingest_time"] >= r["event_time"]
    assert {r["event_type"] for r in records} == {t.value for t in EventType}


def test_anomaly_rates_are_roughly_the_configured_ones(sim) -> None:  # type: ignore[no-untyped-def]
    events = sim.events.to_pylist()
    originals = len({e["event_id"] for e in events})
    kinds = Counter(sim.anomalies.column("kind").to_pylist())
    for kind, rate in (("duplicate", CFG.duplicate_rate), ("late", CFG.late_rate),
                       ("out_of_order", CFG.out_of_order_rate)):
        assert kinds[kind] / originals == pytest.approx(rate, rel=0.25), kind
    by_id = defaultdict(list)
    for e in events:
        by_id[e["event_id"]].append(e)
    dups = [v for v in by_id.values() if len(v) > 1]
    assert len(dups) == kinds["duplicate"]
    assert all(a["event_time"] == b["event_time"] and a["ingest_time"] != b["ingest_time"] for a, b in dups)
    lateness = CFG.allowed_lateness
    late_ids = {i for i, k in zip(sim.anomalies.column("event_id").to_pylist(), sim.anomalies.column("kind")
                                  .to_pylist(), strict=True) if k == "late"}
    ooo_ids = {i for i, k in zip(sim.anomalies.column("event_id").to_pylist(), sim.anomalies.column("kind")
                                 .to_pylist(), strict=True) if k == "out_of_order"}
    first = {i: v[0] for i, v in by_id.items()}
    assert all(first[i]["ingest_time"] - first[i]["event_time"] > lateness for i in late_ids)
    assert all(timedelta(seconds=30) <= first[i]["ingest_time"] - first[i]["event_time"] <= lateness
               for i in ooo_ids)


def test_truth_is_consistent_with_events(sim) -> None:  # type: ignore[no-untyped-def]
    sessions = sim.sessions.to_pylist()
    types_by_session: dict[str, set[str]] = defaultdict(set)
    for e in sim.events.to_pylist():
        types_by_session[e["session_id"]].add(e["event_type"])
    converted = [s for s in sessions if s["converted"]]
    abandoned = [s for s in sessions if s["abandoned"]]
    assert converted and abandoned
    assert all("purchase" in types_by_session[s["session_id"]] for s in converted)
    assert all("add_to_cart" in types_by_session[s["session_id"]] and "purchase" not in
               types_by_session[s["session_id"]] for s in abandoned)
    # every active user is in the truth (some simulated users never show up, as in real traffic)
    assert {u["user_id"] for u in sim.users.to_pylist()} >= {e["user_id"] for e in sim.events.to_pylist()}


def test_purchase_intent_carries_signal(sim) -> None:  # type: ignore[no-untyped-def]
    intent = {u["user_id"]: u["purchase_intent"] for u in sim.users.to_pylist()}
    carts = [s for s in sim.sessions.to_pylist() if s["had_cart"]]
    high = [s["converted"] for s in carts if intent[s["user_id"]] > 0.35]
    low = [s["converted"] for s in carts if intent[s["user_id"]] < 0.2]
    assert sum(high) / len(high) > 2 * sum(low) / len(low)


def test_churners_log_in_less_and_search_help_more_after_churn_start() -> None:
    res = simulate(SimulationConfig(seed=3, users=400, days=14, churn_fraction=0.5))
    churn = {u["user_id"]: u["churn_start"] for u in res.users.to_pylist() if u["churner"]}
    before = Counter[str]()
    after = Counter[str]()
    for e in res.events.to_pylist():
        cs = churn.get(e["user_id"])
        if cs is None:
            continue
        side = after if e["event_time"] >= cs else before
        side[e["event_type"]] += 1
        side["all"] += 1
    assert after["help_search"] / after["all"] > 5 * before["help_search"] / before["all"]
    assert after["all"] < before["all"]  # activity falls
    assert after["login"] / after["all"] < before["login"] / before["all"]


def test_onboarding_drop_off(sim) -> None:  # type: ignore[no-untyped-def]
    new = [u for u in sim.users.to_pylist() if u["is_new"]]
    assert new and len({u["onboarding_completed_steps"] for u in new}) > 2
    steps = [e for e in sim.events.to_pylist() if e["event_type"] == "onboarding_step"]
    assert any(not e["completed"] for e in steps) and any(e["completed"] for e in steps)


def test_written_log_truth_and_replay(tmp_path: Path) -> None:
    cfg = SimulationConfig(seed=5, users=60, days=3)
    summary = simulate_to_dir(cfg, tmp_path, chunk_users=25, jsonl=True)
    table = read_parquet(tmp_path / "events")
    assert table.num_rows == summary.rows and summary.rows_per_second > 0
    assert sum(summary.by_type.values()) == summary.rows
    assert pq.read_schema(next((tmp_path / "events").rglob("*.parquet"))).field("event_time").type == \
        pa.timestamp("us", tz="UTC")
    for name in ("users", "sessions", "anomalies"):
        assert pq.read_table(tmp_path / "truth" / f"{name}.parquet").num_rows > 0
    in_memory = simulate(cfg).events
    key = [("event_id", "ascending"), ("ingest_time", "ascending")]
    assert table.sort_by(key).equals(in_memory.sort_by(key))  # chunking does not change the events
    order = [(r["ingest_time"], r["event_id"]) for r in replay(table)]
    assert order == sorted(order)
    assert len((tmp_path / "stream.jsonl").read_text().splitlines()) == summary.rows


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="late_rate must be within"):
        SimulationConfig(late_rate=2.0)
