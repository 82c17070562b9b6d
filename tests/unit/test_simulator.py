"""The simulator: reproducible, valid, imperfect on purpose, and carrying real signal.

Every test runs on a few hundred users, so each takes well under ten seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conf.settings import load_settings
from features.events import EVENT_PROPERTIES, PROPERTY_NAMES, EventType, validate_event
from pipelines.ingest.eventlog import EVENT_SCHEMA, decode_json, read_parquet
from pipelines.ingest.simulator import (
    SESSION_GAP,
    SimulationConfig,
    SimulationResult,
    replay,
    replay_batches,
    simulate,
    simulate_blocks,
    simulate_to_dir,
)

CFG = SimulationConfig(seed=11, users=600, days=10, duplicate_rate=0.02, out_of_order_rate=0.05, late_rate=0.02,
                       block_users=250)


@pytest.fixture(scope="module")
def sim() -> SimulationResult:
    return simulate(CFG)


@pytest.fixture(scope="module")
def events(sim: SimulationResult) -> pd.DataFrame:
    return sim.events.to_pandas()


@pytest.fixture(scope="module")
def churn_sim() -> SimulationResult:
    return simulate(SimulationConfig(seed=3, users=800, days=21, churn_fraction=0.5, block_users=400))


def auc(scores: Any, labels: Any) -> float:
    """Mann-Whitney AUC (ties count half)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    ranks = pd.Series(s).rank().to_numpy()
    pos = int(y.sum())
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def first_deliveries(events: pd.DataFrame) -> pd.DataFrame:
    return events.sort_values(["event_id", "ingest_time"]).drop_duplicates("event_id")


# ----------------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_the_same_events_and_truth_another_seed_does_not(sim: SimulationResult) -> None:
    again = simulate(CFG)
    for name in ("events", "users", "sessions", "anomalies", "catalogue"):
        assert getattr(again, name).equals(getattr(sim, name)), name
    other = simulate(SimulationConfig(**{**CFG.__dict__, "seed": 12}))
    assert not other.events.equals(sim.events)
    assert other.users.column("purchase_intent") != sim.users.column("purchase_intent")


def test_a_block_does_not_depend_on_the_others(sim: SimulationResult) -> None:
    """Users are simulated in blocks with their own random streams: chunks and workers compose exactly."""
    second = simulate_blocks(CFG, [1])
    users = sim.users.to_pandas()
    n_before = int((users.index < CFG.block_users).sum())
    assert second.users.equals(sim.users.slice(n_before, CFG.block_users))
    expected = sim.events.filter(pa.compute.is_in(sim.events.column("user_id"), second.users.column("user_id")))
    assert second.events.equals(expected)


# ----------------------------------------------------------------------------------- validity
def test_every_event_is_valid_has_only_its_properties_and_arrives_after_it_happened(sim: SimulationResult) -> None:
    assert sim.events.schema.equals(EVENT_SCHEMA)
    records = sim.events.to_pylist()
    assert len(records) > 30_000
    for r in records:
        record, errors = validate_event({k: v for k, v in r.items() if v is not None})
        assert errors == [], (r, errors)
        assert record == r  # nothing to normalise or clamp: event_time <= ingest_time already
        required, optional = EVENT_PROPERTIES[EventType(r["event_type"])]
        present = {k for k in PROPERTY_NAMES if r[k] is not None}
        assert required <= present <= required | optional, r
        assert r["ingest_time"] >= r["event_time"]
        assert r["event_time"].tzinfo is not None and r["event_time"].utcoffset() == timedelta(0)
        assert CFG.start <= r["event_time"] < CFG.end
    assert {r["event_type"] for r in records} == {t.value for t in EventType}
    for optional_prop in ("product_id", "page"):  # some optional properties are used, not only required ones
        assert any(r[optional_prop] is not None for r in records if r["event_type"] == "share")


def test_the_event_mix_is_plausible(events: pd.DataFrame) -> None:
    share = events["event_type"].value_counts(normalize=True)
    assert share["product_view"] > share["add_to_cart"] > share["checkout_start"] >= share["purchase"] > 0
    assert share["page_view"] > share["scroll"] > 0
    assert 0.1 < share["product_view"] < 0.5
    purchases = events[events["event_type"] == "purchase"]
    assert (purchases["amount"] > 0).all() and (purchases["quantity"] >= 1).all()
    views = events[events["event_type"] == "page_view"]
    assert views["dwell_seconds"].between(0, 25 * 60).all() and views["dwell_seconds"].median() > 5


# ----------------------------------------------------------------------------------- imperfect delivery
def test_injected_anomalies_are_at_the_configured_rates_and_as_described(sim: SimulationResult,
                                                                          events: pd.DataFrame) -> None:
    anomalies = sim.anomalies.to_pandas()
    distinct = events["event_id"].nunique()
    kinds = anomalies["kind"].value_counts()
    for kind, rate in (("duplicate", CFG.duplicate_rate), ("late", CFG.late_rate),
                       ("out_of_order", CFG.out_of_order_rate)):
        assert kinds[kind] / distinct == pytest.approx(rate, rel=0.15), kind

    # duplicates: the same event_id and payload, re-sent later; exactly the ids listed as duplicates
    copies = events[events.duplicated("event_id", keep=False)].sort_values(["event_id", "ingest_time"])
    assert set(copies["event_id"]) == set(anomalies.loc[anomalies["kind"] == "duplicate", "event_id"])
    assert copies.groupby("event_id").size().eq(2).all()
    payload = [c for c in events.columns if c != "ingest_time"]
    first, second = copies.iloc[0::2], copies.iloc[1::2]
    assert first[payload].reset_index(drop=True).equals(second[payload].reset_index(drop=True))
    assert (second["ingest_time"].to_numpy() > first["ingest_time"].to_numpy()).all()

    lateness = pd.Timedelta(CFG.allowed_lateness)
    delay = first_deliveries(events).set_index("event_id").eval("ingest_time - event_time")
    late_ids = anomalies.loc[anomalies["kind"] == "late", "event_id"]
    ooo_ids = anomalies.loc[anomalies["kind"] == "out_of_order", "event_id"]
    assert (delay[late_ids] > lateness).all() and (delay[late_ids] < lateness + pd.Timedelta(hours=5, minutes=1)).all()
    assert (delay[ooo_ids] >= pd.Timedelta(seconds=20)).all() and (delay[ooo_ids] <= lateness).all()
    normal = delay.drop(pd.Index(late_ids).union(pd.Index(ooo_ids)))
    assert normal.between(pd.Timedelta(seconds=0.2), pd.Timedelta(seconds=3)).all()
    recorded = anomalies.eval("ingest_time - event_time").dt.total_seconds()
    assert np.allclose(recorded, anomalies["delay_seconds"], rtol=0, atol=1e-6)


def test_out_of_order_events_arrive_after_later_events_of_the_same_user(sim: SimulationResult,
                                                                         events: pd.DataFrame) -> None:
    ooo = set(sim.anomalies.filter(pa.compute.equal(sim.anomalies.column("kind"), "out_of_order"))
              .column("event_id").to_pylist())
    arrivals = events.sort_values(["user_id", "ingest_time", "event_id"])
    overtaken = set()
    for _, group in arrivals.groupby("user_id", sort=False):
        times = group["event_time"].to_numpy()
        later_seen = np.maximum.accumulate(times)  # the latest event_time that arrived so far
        behind = np.concatenate([[False], times[1:] < later_seen[:-1]])
        overtaken.update(group["event_id"].to_numpy()[behind])
    assert len(ooo & overtaken) > 0.6 * len(ooo)  # the others were the last events of their sessions


# ----------------------------------------------------------------------------------- the truth
def test_sessions_follow_the_30_minute_rule(events: pd.DataFrame) -> None:
    """Re-sessionising each user's events by a 30-minute inactivity gap gives back the simulated sessions."""
    ev = first_deliveries(events).sort_values(["user_id", "event_time"])
    gap = ev.groupby("user_id")["event_time"].diff()
    new_session = gap.isna() | (gap > pd.Timedelta(SESSION_GAP))
    derived = new_session.cumsum()
    assert (ev.groupby(derived)["session_id"].nunique() == 1).all()
    assert (ev.groupby("session_id").apply(lambda g: derived[g.index].nunique(), include_groups=False) == 1).all()


def test_session_truth_matches_the_events(sim: SimulationResult, events: pd.DataFrame) -> None:
    sessions = sim.sessions.to_pandas().set_index("session_id")
    ev = first_deliveries(events)
    by_session = ev.groupby("session_id")
    assert set(sessions.index) == set(ev["session_id"])
    assert (by_session.size() == sessions["events"]).all()
    assert (by_session["event_time"].min() == sessions["start"]).all()
    assert (by_session["event_time"].max() == sessions["end"]).all()
    types: dict[str, set[str]] = defaultdict(set)
    for sid, etype in zip(ev["session_id"], ev["event_type"], strict=True):
        types[sid].add(etype)
    converted = sessions[sessions["converted"]]
    abandoned = sessions[sessions["abandoned"]]
    assert len(converted) > 50 and len(abandoned) > 50
    assert all({"add_to_cart", "checkout_start", "purchase"} <= types[s] for s in converted.index)
    assert all("add_to_cart" in types[s] and "purchase" not in types[s] for s in abandoned.index)
    assert all(("add_to_cart" in types[s]) == had for s, had in sessions["had_cart"].items())
    assert all("purchase" not in types[s] for s in sessions.index[~sessions["converted"]])
    purchases = ev[ev["event_type"] == "purchase"].set_index("session_id")
    assert (purchases["amount"] == converted.loc[purchases.index, "cart_value"]).all()
    assert (purchases["quantity"] == converted.loc[purchases.index, "cart_items"]).all()
    # the purchase is the sum of the cart: added lines minus removed lines
    carts = ev[ev["event_type"].isin(["add_to_cart", "remove_from_cart"])].copy()
    carts["sign"] = np.where(carts["event_type"] == "add_to_cart", 1, -1)
    qty = (carts["sign"] * carts["quantity"]).groupby(carts["session_id"]).sum()
    value = (carts["sign"] * carts["quantity"] * carts["price"]).groupby(carts["session_id"]).sum()
    assert (qty[purchases.index] == purchases["quantity"]).all()
    assert np.allclose(value[purchases.index], purchases["amount"], atol=0.005)
    # a removal follows its add in the same session and the cart never goes negative
    assert (qty >= 0).all()


def test_user_truth_matches_the_events(sim: SimulationResult, events: pd.DataFrame) -> None:
    users = sim.users.to_pandas().set_index("user_id")
    assert len(users) == CFG.users and users.index.is_unique
    assert set(events["user_id"]) <= set(users.index)
    per_user = events.groupby("user_id")
    for flag in ("consent_analytics", "consent_personalization", "consent_marketing", "country"):
        assert (per_user[flag].nunique() == 1).all(), flag
        assert (per_user[flag].first() == users.loc[per_user[flag].first().index, flag]).all(), flag
    assert users["consent_analytics"].mean() > 0.85 and 0.5 < users["consent_personalization"].mean() < 0.95
    devices = per_user["device_id"].nunique()
    assert (devices <= users.loc[devices.index, "devices"]).all() and devices.max() == 3
    assert (per_user["device_id"].apply(lambda d: d.str.len().eq(16).all())).all()
    assert events.groupby("device_id")["user_id"].nunique().eq(1).all()  # a device belongs to one user
    # new users: nothing before signup, and their first session starts with the onboarding flow
    new = users[users["is_new"]]
    first_seen = per_user["event_time"].min()
    seen_new = new.index.intersection(first_seen.index)
    assert (first_seen[seen_new] == new.loc[seen_new, "signup"]).all()
    assert users.loc[~users["is_new"], "signup"].isna().all()


def test_onboarding_steps_and_drop_off(sim: SimulationResult, events: pd.DataFrame) -> None:
    users = sim.users.to_pandas().set_index("user_id")
    steps = first_deliveries(events[events["event_type"] == "onboarding_step"])
    assert set(steps["user_id"]) <= set(users.index[users["is_new"]])
    assert (steps["flow"] == "signup").all()
    for user, group in steps.sort_values("event_time").groupby("user_id"):
        truth = users.loc[user]
        assert group["step_index"].tolist() == list(range(len(group)))
        if pd.isna(truth["onboarding_dropoff_step"]):
            assert len(group) == CFG.onboarding_steps and group["completed"].all()
        else:
            assert len(group) == truth["onboarding_dropoff_step"] + 1
            assert group["completed"].tolist() == [True] * (len(group) - 1) + [False]
    new = users[users["is_new"]]
    completed_all = new["onboarding_dropoff_step"].isna()
    assert 0.1 < completed_all.mean() < 0.7
    assert new.loc[completed_all, "engagement"].mean() > new.loc[~completed_all, "engagement"].mean() + 0.05


def test_churners_log_in_less_and_search_help_more_after_churn_start(churn_sim: SimulationResult) -> None:
    users = churn_sim.users.to_pandas().set_index("user_id")
    churners = users[users["churner"] & ~users["is_new"]]
    ev = churn_sim.events.to_pandas()
    ev = ev[ev["user_id"].isin(churners.index)].join(churners[["churn_start", "churn_stop"]], on="user_id")
    start, end = pd.Timestamp(CFG.start), pd.Timestamp(CFG.start) + pd.Timedelta(days=21)
    # per churner-day, before and after churn_start (within the simulated period)
    days_before = ((churners["churn_start"] - start) / pd.Timedelta(days=1)).sum()
    days_after = ((churners["churn_stop"].clip(upper=end) - churners["churn_start"]) / pd.Timedelta(days=1)).sum()
    after = ev["event_time"] >= ev["churn_start"]
    rate = {side: ev[mask]["event_type"].value_counts() / days for side, mask, days in
            (("before", ~after, days_before), ("after", after, days_after))}
    assert rate["after"]["login"] < 0.5 * rate["before"]["login"]
    assert rate["after"]["help_search"] > 2 * rate["before"]["help_search"]
    assert rate["after"].sum() < 0.5 * rate["before"].sum()  # activity falls
    churn_queries = {"cancel subscription", "delete account", "refund", "close account", "unsubscribe emails",
                     "complaint"}
    helps = ev[ev["event_type"] == "help_search"]
    assert helps[helps["event_time"] >= helps["churn_start"]]["query"].isin(churn_queries).mean() > 0.5
    assert not (ev["event_time"] >= ev["churn_stop"]).any()  # and eventually stops
    logins = ev[ev["event_type"] == "login"]
    failed_after = 1 - logins[logins["event_time"] >= logins["churn_start"]]["success"].mean()
    failed_before = 1 - logins[logins["event_time"] < logins["churn_start"]]["success"].mean()
    assert failed_after > failed_before
    # per session too: churning sessions start with a login less often
    sessions = churn_sim.sessions.to_pandas()
    n_logins = churn_sim.events.to_pandas().query("event_type == 'login'").groupby("session_id").size()
    sessions["logins"] = sessions["session_id"].map(n_logins).fillna(0)
    by_state = sessions[~sessions["onboarding"]].groupby("churning")["logins"].mean()
    assert by_state[True] < 0.7 * by_state[False]
    # the latent churn risk ranks churners above the others
    assert auc(users["churn_risk"], users["churner"]) > 0.7


def test_purchase_intent_carries_signal(sim: SimulationResult) -> None:
    users = sim.users.to_pandas().set_index("user_id")
    sessions = sim.sessions.to_pandas()
    carts = sessions[sessions["cart_items"] > 0].join(users["purchase_intent"], on="user_id")
    high = carts[carts["purchase_intent"] > 0.4]["converted"].mean()
    low = carts[carts["purchase_intent"] < 0.2]["converted"].mean()
    assert high > 2 * low
    bought = sessions.groupby("user_id")["converted"].any().reindex(users.index, fill_value=False)
    assert auc(users["purchase_intent"], bought) > 0.65
    # the truth's per-session probability is informative and calibrated
    assert auc(sessions["p_purchase"], sessions["converted"]) > 0.75
    assert sessions["p_purchase"].mean() == pytest.approx(sessions["converted"].mean(), rel=0.15)
    assert carts["p_convert"].mean() == pytest.approx(carts["converted"].mean(), rel=0.15)


def test_top_viewed_categories_follow_the_users_affinities(sim: SimulationResult, events: pd.DataFrame) -> None:
    users = sim.users.to_pandas().set_index("user_id")
    views = events[events["event_type"] == "product_view"]
    counts = views.groupby(["user_id", "category"]).size().unstack(fill_value=0)
    active = counts[counts.sum(axis=1) >= 20]
    assert len(active) > 50
    agree = (active.idxmax(axis=1) == users.loc[active.index, "top_category"]).mean()
    assert agree > 0.6
    catalogue = sim.catalogue.to_pandas().set_index("product_id")
    assert views["category"].eq(catalogue.loc[views["product_id"], "category"].to_numpy()).all()
    assert views["price"].eq(catalogue.loc[views["product_id"], "price"].to_numpy()).all()


# ----------------------------------------------------------------------------------- files and replay
def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_written_log_truth_stream_and_replay(tmp_path: Path) -> None:
    cfg = SimulationConfig(seed=5, users=300, days=3, block_users=100)
    summary = simulate_to_dir(cfg, tmp_path, chunk_users=200, jsonl=True)
    table = read_parquet(tmp_path / "events")
    assert table.num_rows == summary.rows and summary.rows_per_second > 0 and summary.chunks == 2
    assert sum(summary.by_type.values()) == summary.rows
    in_memory = simulate(cfg)
    key = [("event_id", "ascending"), ("ingest_time", "ascending")]
    assert table.sort_by(key).equals(in_memory.events.sort_by(key))  # the parquet round trip is exact
    assert summary.anomalies == dict(Counter(in_memory.anomalies.column("kind").to_pylist()))
    files = sorted((tmp_path / "events").rglob("*.parquet"))
    assert {f.parent.name for f in files} == {f"event_date={(cfg.start + timedelta(days=d)).date()}" for d in range(3)}
    assert pq.read_schema(files[0]).field("event_time").type == pa.timestamp("us", tz="UTC")
    for name, rows in (("users", cfg.users), ("sessions", summary.sessions),
                       ("anomalies", in_memory.anomalies.num_rows), ("catalogue", cfg.products)):
        assert pq.read_table(tmp_path / "truth" / f"{name}.parquet").num_rows == rows, name
    assert pq.read_table(tmp_path / "truth" / "users.parquet").equals(in_memory.users)
    assert json.loads((tmp_path / "truth" / "config.json").read_text())["seed"] == 5

    # the replay: arrival order, the same from a table and from the directory, and as JSON lines
    from_table = list(replay(table))
    from_dir = list(replay(tmp_path / "events", batch_size=777))
    assert from_dir == from_table and len(from_dir) == table.num_rows
    order = [(r["ingest_time"], r["event_id"]) for r in from_dir]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert [r["event_time"] for r in from_dir] != sorted(r["event_time"] for r in from_dir)  # out of order exists
    lines = (tmp_path / "stream.jsonl").read_text().splitlines()
    assert len(lines) == summary.rows
    for line, record in zip(lines[:2000], from_dir, strict=False):
        parsed, errors = validate_event(decode_json(line))
        assert errors == [] and parsed == record


def test_the_same_config_writes_byte_identical_files_whatever_the_workers(tmp_path: Path) -> None:
    cfg = SimulationConfig(seed=9, users=1200, days=2, block_users=300)
    first = simulate_to_dir(cfg, tmp_path / "a", chunk_users=600)
    simulate_to_dir(cfg, tmp_path / "b", chunk_users=600, workers=2)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert first.chunks == 2 and len(a) > 5 and a == b
    simulate_to_dir(replace(cfg, users=300), tmp_path / "a", chunk_users=600)  # overwrites: no stale parts
    assert read_parquet(tmp_path / "a" / "events").num_rows < first.rows / 2
    with pytest.raises(FileExistsError):
        simulate_to_dir(cfg, tmp_path / "a", overwrite=False)


def test_replay_is_a_lazy_iterator_in_arrival_order(sim: SimulationResult) -> None:
    stream = replay(sim.events, batch_size=100)
    head = [next(stream) for _ in range(500)]
    assert [r["ingest_time"] for r in head] == sorted(r["ingest_time"] for r in head)
    batches = replay_batches(sim.events, batch_size=1000)
    ingest = np.concatenate([b.column("ingest_time").to_numpy() for b in batches])
    assert len(ingest) == sim.events.num_rows and (np.diff(ingest) >= np.timedelta64(0)).all()


# ----------------------------------------------------------------------------------- config and CLI
def test_config_from_settings_and_bad_configs() -> None:
    settings = load_settings(events={"allowed_lateness": "2h"}, simulator={"late_rate": 0.03, "users": 10})
    cfg = SimulationConfig.from_settings(settings, days=3)
    assert (cfg.late_rate, cfg.users, cfg.days, cfg.allowed_lateness) == (0.03, 10, 3, timedelta(hours=2))
    with pytest.raises(ValueError, match="late_rate must be within"):
        SimulationConfig(late_rate=2.0)
    with pytest.raises(ValueError, match="timezone"):
        SimulationConfig(start=datetime(2026, 10, 1))
    with pytest.raises(ValueError, match="must not exceed 1"):
        SimulationConfig(late_rate=0.6, out_of_order_rate=0.6)
    assert SimulationConfig(start=datetime(2026, 10, 1, 2, tzinfo=UTC)).start.tzinfo is UTC


def test_late_events_respect_a_configured_lateness() -> None:
    cfg = SimulationConfig(seed=1, users=100, days=2, allowed_lateness=timedelta(minutes=10), late_rate=0.05,
                           out_of_order_rate=0.1)
    res = simulate(cfg)
    anomalies = res.anomalies.to_pandas()
    delay = anomalies.set_index("kind")["delay_seconds"]
    assert (delay.loc["late"] > 600).all() and (delay.loc["out_of_order"] <= 600).all()
