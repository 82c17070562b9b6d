"""``make demo``: the main job end to end on the embedded defaults.

Simulate -> validate (dead letters) -> reference features -> Feast apply ->
online write/read through a feature service. Each step prints what it did and how
long it took; later issues add the engines, training and serving to this story.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from conf.settings import Settings, load_settings
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from pipelines.eventlog import DeadLetterStore, read_parquet, table_to_records, validate_records

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
    from pipelines.simulator import SimulationConfig, simulate_to_dir

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

    with step("3. Features at three moments the seeds care about, from the reference implementation"):
        ref = Reference(good, rules=EventRules(allowed_lateness=settings.events.allowed_lateness))
        print("   not counted: " + ", ".join(f"{k} {v:,}" for k, v in sorted(ref.drops.items())))
        service = REGISTRY.service("purchase_propensity_v1")
        rows = []
        for label, (user, session, at) in pick_moments(ref).items():
            row = ref.service_row(service, {"user_id": user, "session_id": session}, at)
            rows.append({"who": label, "user_id": user, "session_id": session, "as_of": at, **row})
        print(f"   {'':40s} " + "  ".join(f"{r['who']:>22s}" for r in rows))
        print(f"   {'as of':40s} " + "  ".join(f"{fmt(r['as_of']):>22s}" for r in rows))
        for name in SHOWN_FEATURES:
            print(f"   {name:40s} " + "  ".join(f"{fmt(r[name]):>22s}" for r in rows))

    with step("4. Feast: generate the repo from the specs, apply, write and read online"):
        from pipelines import feast_repo

        store_ = feast_repo.apply(settings)
        print(f"   registered {len(store_.list_entities())} entities, {len(store_.list_feature_views())} feature "
              f"views, {len(store_.list_on_demand_feature_views())} on-demand views, "
              f"{len(store_.list_feature_services())} feature services")
        for view in REGISTRY.views:
            view_rows = []
            for r in rows:
                key = r[view.entity.join_key]
                view_rows.append({view.entity.join_key: key, "event_timestamp": r["as_of"],
                                  **ref.features(view, key, r["as_of"])})
            feast_repo.write_online(store_, view, view_rows)
        online = feast_repo.read_online(store_, service, [
            {"user_id": r["user_id"], "session_id": r["session_id"], "request_time": r["as_of"]} for r in rows])
        diffs = [(r["who"], n, r[n], o[n]) for r, o in zip(rows, online, strict=True) for n in o if r[n] != o[n]]
        for who, name, want, got in diffs:
            print(f"   MISMATCH {who} {name}: reference {want!r}, online {got!r}")
        mismatches = len(diffs)
        print(f"   online read of {len(service.feature_refs)} features x {len(rows)} users through "
              f"'{service.name}': {mismatches} mismatches against the reference")
        summary["online_mismatches"] = mismatches
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args(argv)
    settings = load_settings()
    print("Kairos demo: embedded defaults (SQLite online store, local parquet)")
    t0 = time.perf_counter()
    summary = run(settings, users=args.users, days=args.days)
    print(f"\nDone in {time.perf_counter() - t0:.1f}s: " + json.dumps(summary))
    if summary["online_mismatches"]:
        raise SystemExit("online values differ from the reference")


if __name__ == "__main__":
    main()
