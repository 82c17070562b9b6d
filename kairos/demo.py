"""``make demo``: the main job end to end on the embedded defaults.

Simulate -> validate (dead letters) -> Spark backfill and a point-in-time training
set (checked against the reference) -> Bytewax replay into the Feast online store
and batch/stream parity -> an online read through a feature service -> training.
Each step prints what it did and how long it took.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from conf.settings import Settings, load_settings
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from features.spec import Feature
from pipelines.ingest.eventlog import DeadLetterStore, read_parquet, table_to_records, validate_records
from pipelines.store.values import nullable_spec_value
from validation.parity import same

SHOWN_FEATURES = (
    "user_total_spend_30d",
    "user_purchases_30d",
    "user_top3_categories_24h",
    "user_items_in_cart_not_purchased_24h",
    "user_logins_7d",
    "user_login_freq_change_7d",
    "user_help_searches_7d",
    "user_distinct_devices_24h",
    "user_seconds_since_last_login",
    "session_engagement_score_5m",
    "session_top3_categories_24h",
    "session_cart_idle_seconds",
)


@contextmanager
def step(title: str) -> Iterator[None]:
    print(f"\n== {title}")
    t0 = time.perf_counter()
    yield
    print(f"   ({time.perf_counter() - t0:.1f}s)")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def corrupt_samples(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Three events as a broken client might send them, to show the dead-letter path."""
    purchase = next(r for r in records if r["event_type"] == "purchase")
    base = {k: v for k, v in purchase.items() if v is not None}
    return [
        {**base, "event_id": "bad-1", "amount": -12.5},
        {**base, "event_id": "bad-2", "event_time": "2026-10-01 12:00:00", "quantity": "two"},
        {**{k: v for k, v in base.items() if k != "user_id"}, "event_id": "bad-3", "coupon": "FREE"},
    ]


def run(settings: Settings, *, users: int, days: int, fresh: bool = True) -> dict[str, Any]:
    from pipelines.ingest.simulator import SimulationConfig, simulate_to_dir

    summary: dict[str, Any] = {}
    data = settings.data_path
    if fresh and data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)

    with step(f"1. Simulate {users} users over {days} days"):
        config = SimulationConfig.from_settings(settings, users=users, days=days)
        sim = simulate_to_dir(config, data)
        print(f"   {sim.rows:,} events -> {settings.events_path}  ({sim.rows_per_second:,.0f} events/s)")
        print("   by type: " + ", ".join(f"{k} {v:,}" for k, v in sorted(sim.by_type.items(), key=lambda kv: -kv[1])))
        print("   injected: " + ", ".join(f"{k} {v:,}" for k, v in sim.anomalies.items()))
        summary["events"] = sim.rows

    with step("2. Validate the log and a few broken client events"):
        records = table_to_records(read_parquet(settings.events_path))
        store = DeadLetterStore(path=settings.dead_letter_path / "demo.jsonl", source="demo")
        good, report = validate_records([*records, *corrupt_samples(records)], store)
        print(f"   accepted {report.accepted:,}, dead-lettered {report.rejected} -> {store.path}")
        for line in store.path.read_text().splitlines()[-3:]:
            entry = json.loads(line)
            errs = "; ".join(f"{e['field']}: {e['problem']}" for e in entry["errors"])
            print(f"     {entry['payload'].get('event_id')}: {errs}")
        summary["dead_lettered"] = report.rejected

    with step("3. Spark: backfill every feature view, then a point-in-time training set"):
        from pipelines.spark.backfill import SparkBackfill
        from pipelines.spark.retrieval import SparkRetrieval
        from pipelines.spark.schema import to_pandas
        from validation.parity import parity_end

        ref = Reference(good, rules=EventRules(allowed_lateness=settings.events.allowed_lateness))
        end = parity_end(settings)
        builder = SparkBackfill(settings)
        builder.progress = lambda message: print(f"   spark: {message}", flush=True)
        print(f"   spark {settings.spark.master}: building [start of log, {end:%Y-%m-%d %H:%M}) into "
              f"{settings.offline_path}", flush=True)
        built = builder.backfill(None, end)
        print(f"   {sum(built.views.values()):,} change points in {built.seconds:.1f}s "
              f"({summary['events'] / built.seconds:,.0f} events/s)")
        service = REGISTRY.service("purchase_propensity_v1")
        moments = pick_moments(ref)
        entity_df = decision_points(ref, moments, n=2000)
        t0 = time.perf_counter()
        retrieval = SparkRetrieval(settings, spark=builder.spark)
        training = to_pandas(retrieval.training_set(entity_df, service)).sort_values("qid").reset_index(drop=True)
        print(f"   training set: {len(training):,} decision points x {len(service.feature_refs)} features of "
              f"'{service.name}', as of each point, in {time.perf_counter() - t0:.1f}s")
        served = {f.name: f for v in service.views for f in v.features}
        checked = [spec_row(r, served) for r in training.head(len(moments) + 300).to_dict("records")]
        names = list(served)
        bad = [(r["who"], n, r[n], want[n]) for r in checked
               for want in [ref.service_row(service, {"user_id": r["user_id"], "session_id": r["session_id"]},
                                            r["event_timestamp"].to_pydatetime())]
               for n in names if not same(r[n], want[n], served[n].dtype)]
        for who, name, got, want in bad[:5]:
            print(f"   MISMATCH {who} {name}: spark {got!r}, reference {want!r}")
        print(f"   {len(checked)} rows x {len(names)} features checked: {len(bad)} mismatches against the reference")
        summary["training_mismatches"] = len(bad)
        rows = checked[:len(moments)]
        print(f"\n   {'':40s} " + "  ".join(f"{r['who']:>22s}" for r in rows))
        print(f"   {'as of':40s} " + "  ".join(f"{fmt(r['event_timestamp'].to_pydatetime()):>22s}" for r in rows))
        for name in SHOWN_FEATURES:
            print(f"   {name:40s} " + "  ".join(f"{fmt(r[name]):>22s}" for r in rows))

    with step("4. Bytewax: replay the log into the Feast online store, then batch/stream parity"):
        from validation.parity import run_parity

        parity = run_parity(settings, spark=builder.spark, built=built, workers=1, reference_keys=100,
                            feast_keys=200, progress=print)
        by_view: dict[str, list[int]] = {}
        for f in parity.features:
            acc = by_view.setdefault(f.view, [0, 0, 0, 0, 0])
            acc[0] += 1
            acc[1] += f.compared
            acc[2] += f.mismatched + f.reference_mismatched
            acc[3], acc[4] = f.missing, f.extra
        print(f"   {'view':18s} {'features':>8s} {'values compared':>16s} {'mismatched':>10s} {'missing':>8s} "
              f"{'extra':>6s}")
        for view, (n, compared, mismatched, missing, extra) in by_view.items():
            print(f"   {view:18s} {n:8d} {compared:16,d} {mismatched:10,d} {missing:8,d} {extra:6,d}")
        print("   " + "\n   ".join(parity.lines()[-6:]))
        print(f"   {parity.mismatches} disagreements between the reference, Spark, Bytewax and Feast "
              f"(full per-feature report: make parity)")
        summary["parity_mismatches"] = parity.mismatches

    with step("5. Serving preview: Feast online read through a feature service, against the reference"):
        from pipelines.store.online import read_online
        from pipelines.store.repo import feature_store

        store_ = feature_store(settings)
        print(f"   registered {len(store_.list_entities())} entities, {len(store_.list_feature_views())} feature "
              f"views, {len(store_.list_on_demand_feature_views())} on-demand views, "
              f"{len(store_.list_feature_services())} feature services")
        at = end - timedelta(microseconds=1)
        keys = [{"user_id": u, "session_id": s_} for u, s_, _ in moments.values()]
        t0 = time.perf_counter()
        online = read_online(store_, service, [{**k, "request_time": at} for k in keys])
        ms = (time.perf_counter() - t0) * 1000
        diffs = [(who, n, want[n], got[n]) for who, k, got in zip(moments, keys, online, strict=True)
                 for want in [ref.service_row(service, k, at)]
                 for n in got if not same(got[n], want[n], served[n].dtype)]
        for who, name, want, got in diffs:
            print(f"   MISMATCH {who} {name}: reference {want!r}, online {got!r}")
        print(f"   as of {at:%Y-%m-%d %H:%M:%S} (after the stream), " + ", ".join(
            f"{who}: spend_30d {fmt(o['user_total_spend_30d'])}, cart idle {fmt(o['session_cart_idle_seconds'])}s"
            for who, o in zip(moments, online, strict=True)))
        print(f"   online read of {len(service.feature_refs)} features x {len(keys)} users through "
              f"'{service.name}' in {ms:.0f} ms: {len(diffs)} mismatches against the reference")
        summary["online_mismatches"] = len(diffs)

    with step("6. Train purchase propensity and churn: XGBoost vs baselines, MLflow, champion/challenger"):
        from training.pipeline import train_all

        trained = train_all(settings, spark=builder.spark,
                            progress=lambda message: print(f"   {message}", flush=True))
        print("   " + "\n   ".join(trained.lines()))
        summary["models"] = {name: {"auc": {k: round(v, 4) for k, v in r.auc.items()}, "alias": r.alias,
                                    "beats_baselines": r.beats_baselines} for name, r in trained.models.items()}
    return summary


def pick_moments(ref: Reference) -> dict[str, tuple[str, str, datetime]]:
    """(user, session, moment) for a buyer, an abandoned cart and a help-seeker: the seeds' scenarios."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in ref.events:
        if e["session_id"] is not None:
            by_type.setdefault(e["event_type"], []).append(dict(e))
    purchases = Counter(e["user_id"] for e in by_type.get("purchase", []))
    buyer = max(purchases, key=lambda u: (purchases[u], u))
    last_buy = max((e for e in by_type["purchase"] if e["user_id"] == buyer), key=lambda e: e["ingest_time"])
    bought = {e["session_id"] for e in by_type.get("purchase", [])}
    carts = [e for e in by_type.get("add_to_cart", []) if e["session_id"] not in bought and e["user_id"] != buyer]
    last_cart = max(carts, key=lambda e: (e["event_time"], e["event_id"]))
    cart_session = [e for e in carts if e["session_id"] == last_cart["session_id"]]
    last_add = max(cart_session, key=lambda e: e["event_time"])
    # the cart-abandonment trigger moment: 15 minutes after the last add-to-cart
    abandon_at = max(last_add["event_time"] + timedelta(minutes=15), last_add["ingest_time"])
    helps = Counter(e["user_id"] for e in by_type.get("help_search", [])
                    if e["user_id"] not in {buyer, last_add["user_id"]})
    seeker = max(helps, key=lambda u: (helps[u], u))
    last_help = max((e for e in by_type["help_search"] if e["user_id"] == seeker), key=lambda e: e["ingest_time"])
    return {
        "buyer": (buyer, last_buy["session_id"], last_buy["ingest_time"] + timedelta(seconds=1)),
        "abandoned cart": (last_add["user_id"], last_add["session_id"], abandon_at),
        "help-seeker": (seeker, last_help["session_id"], last_help["ingest_time"] + timedelta(seconds=1)),
    }


def decision_points(ref: Reference, moments: dict[str, tuple[str, str, datetime]], *, n: int,
                    seed: int = 7) -> pd.DataFrame:
    """The seeds' three moments, then ``n`` moments inside sessions (an event's arrival plus up to 10 minutes)."""
    rng = random.Random(seed)
    in_sessions = [e for e in ref.events if e["session_id"] is not None]
    rows = [{"who": who, "user_id": u, "session_id": s, "event_timestamp": t} for who, (u, s, t) in moments.items()]
    for e in rng.sample(in_sessions, min(n, len(in_sessions))):
        at = e["ingest_time"] + timedelta(seconds=rng.uniform(0, 600))
        rows.append({"who": "sampled", "user_id": e["user_id"], "session_id": e["session_id"], "event_timestamp": at})
    frame = pd.DataFrame(rows)
    frame.insert(0, "qid", range(len(frame)))  # the join does not keep row order
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    return frame


def spec_row(record: dict[str, Any], features: dict[str, Feature]) -> dict[str, Any]:
    """A training-set row (pandas cells) with spec-typed Python values for ``features``."""
    return {**record, **{n: nullable_spec_value(f, record[n]) for n, f in features.items()}}


def main(argv: Sequence[str] | None = None) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module="dask")  # Feast's file store, not ours
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # the demo prints what MLflow recorded itself
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args(argv)
    settings = load_settings()
    print("Kairos demo: embedded defaults (SQLite online store, local parquet)")
    t0 = time.perf_counter()
    summary = run(settings, users=args.users, days=args.days)
    print(f"\nDone in {time.perf_counter() - t0:.1f}s: " + json.dumps(summary))
    if summary["online_mismatches"] or summary["training_mismatches"] or summary["parity_mismatches"]:
        raise SystemExit("the engines disagree with the reference")


if __name__ == "__main__":
    main()
