"""``kairos demo`` (``make demo``): the main job end to end on the embedded defaults.

Simulate -> validate (dead letters) -> Spark backfill and a point-in-time training
set (checked against the reference) -> Bytewax replay into the Feast online store
and batch/stream parity -> an online read through a feature service -> training ->
the service in the background, used over HTTP (:mod:`kairos.demo_client`).
Each step reports what it did through a :class:`pipelines.progress.Progress` (bars
under ``kairos``), and :func:`run` returns a :class:`DemoSummary`: one row per step,
which :func:`render_summary` draws as the closing table.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from conf.settings import Settings
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from features.spec import Feature
from kairos import jobs
from kairos.progress import LOGS
from pipelines.ingest.eventlog import DeadLetterStore, read_parquet, table_to_records, validate_records
from pipelines.progress import Progress
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


@dataclass
class DemoSummary:
    """One row per step (what it did, how long it took) and the disagreements found on the way."""

    steps: list[tuple[str, str, float]] = field(default_factory=list)
    events: int = 0
    dead_lettered: int = 0
    training_mismatches: int = 0
    parity_mismatches: int = 0
    online_mismatches: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    served: dict[str, dict[str, float]] = field(default_factory=dict)  # who -> model -> score, from the service

    @property
    def agrees(self) -> bool:
        return not (self.training_mismatches or self.parity_mismatches or self.online_mismatches)


class Steps:
    """Numbered steps: a heading through ``progress``, and a summary row once the step has said what it did."""

    def __init__(self, progress: Progress, console: Console | None, summary: DemoSummary) -> None:
        self.progress, self.console, self.summary = progress, console, summary
        self.n = 0

    @contextmanager
    def step(self, title: str, name: str) -> Iterator[list[str]]:
        self.n += 1
        if self.console is not None:
            self.console.rule(f"[bold]{self.n}. {title}", align="left")
        else:
            self.progress.log(f"\n== {self.n}. {title}")
        result: list[str] = []
        t0 = time.perf_counter()
        yield result
        seconds = time.perf_counter() - t0
        self.progress.log(f"   ({seconds:.1f}s)")
        self.summary.steps.append((f"{self.n}. {name}", "; ".join(result), seconds))


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


def run(settings: Settings, *, users: int, days: int, fresh: bool = True, progress: Progress | None = None,
        console: Console | None = None) -> DemoSummary:
    """The demo's steps on ``settings`` (a fresh ``data_dir`` unless ``fresh`` is false); see the module docstring.

    ``progress`` shows the long steps (default: lines on stdout); ``console`` draws headings and tables."""
    progress = progress or Progress()
    say = progress.log
    summary = DemoSummary()
    steps = Steps(progress, console, summary)
    data = settings.data_path
    if fresh and data.exists():
        for child in data.iterdir():  # all but logs/, where the dependencies write during this run
            if child.name != LOGS:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    data.mkdir(parents=True, exist_ok=True)

    with steps.step(f"Simulate {users:,} users over {days} days", "simulate") as result:
        sim = jobs.simulate(settings, users=users, days=days)
        say(f"   {sim.rows:,} events -> {settings.events_path}  ({sim.rows_per_second:,.0f} events/s)")
        say("   by type: " + ", ".join(f"{k} {v:,}" for k, v in sorted(sim.by_type.items(), key=lambda kv: -kv[1])))
        say("   injected: " + ", ".join(f"{k} {v:,}" for k, v in sim.anomalies.items()))
        summary.events = sim.rows
        result.append(f"{sim.rows:,} events, {sim.sessions:,} sessions; injected "
                      + ", ".join(f"{v:,} {k}" for k, v in sim.anomalies.items()))

    with steps.step("Validate the log and a few broken client events", "validate") as result:
        records = table_to_records(read_parquet(settings.events_path))
        store = DeadLetterStore(path=settings.dead_letter_path / "demo.jsonl", source="demo")
        good, report = validate_records([*records, *corrupt_samples(records)], store)
        say(f"   accepted {report.accepted:,}, dead-lettered {report.rejected} -> {store.path}")
        for line in store.path.read_text().splitlines()[-3:]:
            entry = json.loads(line)
            errs = "; ".join(f"{e['field']}: {e['problem']}" for e in entry["errors"])
            say(f"     {entry['payload'].get('event_id')}: {errs}")
        summary.dead_lettered = report.rejected
        result.append(f"{report.accepted:,} accepted, {report.rejected} dead-lettered with the field named")

    with steps.step("Spark: backfill every feature view, then a point-in-time training set", "spark") as result:
        from pipelines.spark.retrieval import SparkRetrieval
        from pipelines.spark.schema import to_pandas
        from pipelines.spark.session import spark_session
        from validation.parity import parity_end

        ref = Reference(good, rules=EventRules(allowed_lateness=settings.events.allowed_lateness))
        end = parity_end(settings)
        say(f"   spark {settings.spark.master}: building [start of log, {end:%Y-%m-%d %H:%M}) into "
            f"{settings.offline_path}")
        spark = spark_session(settings)
        built = jobs.backfill(settings, end=end.date(), progress=progress, spark=spark).report
        say(f"   {sum(built.views.values()):,} change points in {built.seconds:.1f}s "
            f"({summary.events / built.seconds:,.0f} events/s)")
        service = REGISTRY.service("purchase_propensity_v1")
        moments = pick_moments(ref)
        entity_df = decision_points(ref, moments, n=2000)
        t0 = time.perf_counter()
        retrieval = SparkRetrieval(settings, spark=spark)
        training = to_pandas(retrieval.training_set(entity_df, service)).sort_values("qid").reset_index(drop=True)
        say(f"   training set: {len(training):,} decision points x {len(service.feature_refs)} features of "
            f"'{service.name}', as of each point, in {time.perf_counter() - t0:.1f}s")
        served = {f.name: f for v in service.views for f in v.features}
        checked = [spec_row(r, served) for r in training.head(len(moments) + 300).to_dict("records")]
        names = list(served)
        bad = [(r["who"], n, r[n], want[n]) for r in checked
               for want in [ref.service_row(service, {"user_id": r["user_id"], "session_id": r["session_id"]},
                                            r["event_timestamp"].to_pydatetime())]
               for n in names if not same(r[n], want[n], served[n].dtype)]
        for who, name, got, want in bad[:5]:
            say(f"   MISMATCH {who} {name}: spark {got!r}, reference {want!r}")
        say(f"   {len(checked)} rows x {len(names)} features checked: {len(bad)} mismatches against the reference")
        summary.training_mismatches = len(bad)
        rows = checked[:len(moments)]
        if console is not None:
            moments_table = Table(title="the seeds' moments, as of each (from the training set)", title_justify="left")
            moments_table.add_column("feature")
            for r in rows:
                moments_table.add_column(f"{r['who']}\n{fmt(r['event_timestamp'].to_pydatetime())}", justify="right")
            for name in SHOWN_FEATURES:
                moments_table.add_row(name, *(fmt(r[name]) for r in rows))
            console.print(moments_table)
        result.append(f"{sum(built.views.values()):,} change points over {len(built.views)} views "
                      f"({summary.events / built.seconds:,.0f} events/s); training set {len(training):,} x "
                      f"{len(service.feature_refs)}: {len(bad)} mismatches in {len(checked)} rows checked")

    with steps.step("Bytewax: replay the log into the Feast online store, then batch/stream parity",
                    "bytewax, parity") as result:
        from validation.parity import run_parity

        parity = run_parity(settings, spark=spark, built=built, workers=1, reference_keys=100,
                            feast_keys=200, progress=progress)
        by_view: dict[str, list[int]] = {}
        for f in parity.features:
            acc = by_view.setdefault(f.view, [0, 0, 0, 0, 0])
            acc[0] += 1
            acc[1] += f.compared
            acc[2] += f.mismatched + f.reference_mismatched
            acc[3] += f.missing
            acc[4] += f.extra
        if console is not None:
            console.print(parity_table(by_view))
        say("   " + "\n   ".join(parity.lines()[-6:]))
        say(f"   {parity.mismatches} disagreements between the reference, Spark, Bytewax and Feast "
            f"(full per-feature report: kairos parity)")
        summary.parity_mismatches = parity.mismatches
        compared = sum(v[1] for v in by_view.values())
        result.append(f"{parity.events:,} events replayed in {parity.seconds.get('bytewax', 0):.0f}s; "
                      f"{compared:,} values compared, {parity.mismatches} disagreements")

    with steps.step("Serving preview: Feast online read through a feature service, against the reference",
                    "online read") as result:
        from pipelines.store.online import read_online
        from pipelines.store.repo import feature_store

        store_ = feature_store(settings)
        say(f"   registered {len(store_.list_entities())} entities, {len(store_.list_feature_views())} feature "
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
            say(f"   MISMATCH {who} {name}: reference {want!r}, online {got!r}")
        say(f"   as of {at:%Y-%m-%d %H:%M:%S} (after the stream), " + ", ".join(
            f"{who}: spend_30d {fmt(o['user_total_spend_30d'])}, cart idle {fmt(o['session_cart_idle_seconds'])}s"
            for who, o in zip(moments, online, strict=True)))
        say(f"   online read of {len(service.feature_refs)} features x {len(keys)} users through "
            f"'{service.name}' in {ms:.0f} ms: {len(diffs)} mismatches against the reference")
        summary.online_mismatches = len(diffs)
        result.append(f"{len(service.feature_refs)} features x {len(keys)} users in {ms:.0f} ms; "
                      f"{len(diffs)} mismatches against the reference")

    with steps.step("Train purchase propensity and churn: XGBoost vs baselines, MLflow, champion/challenger",
                    "train") as result:
        trained = jobs.train(settings, spark=spark, progress=progress)
        say("   " + "\n   ".join(trained.lines()))
        for name, model in trained.models.items():
            summary.models[name] = {"auc": {k: round(v, 4) for k, v in model.auc.items()}, "version": model.version,
                                    "alias": model.alias, "beats_baselines": model.beats_baselines}
            result.append(f"{name} AUC {model.auc['xgboost']:.3f} (logreg {model.auc['logreg']:.3f}, heuristic "
                          f"{model.auc['heuristic']:.3f}) v{model.version} -> {model.alias}")

    with steps.step("Serve: bentoml serve in the background, events and scores over HTTP as a client sends them",
                    "serve") as result:
        from kairos.demo_client import run_client

        client = run_client(settings, moments, at, say)
        summary.served = {who: {m: round(s["score"], 4) for m, s in a.get("scores", {}).items()}
                          for who, a in client.scores.items()}
        result.append(client.summary())
    return summary


def parity_table(by_view: dict[str, list[int]]) -> Table:
    t = Table(title="batch/stream parity by view (reference, Spark, Bytewax)", title_justify="left")
    for c in ("view", "features", "values compared", "mismatched", "missing", "extra"):
        t.add_column(c, justify="left" if c == "view" else "right")
    for view, (n, compared, mismatched, missing, extra) in by_view.items():
        t.add_row(view, f"{n}", f"{compared:,}", f"{mismatched:,}", f"{missing:,}", f"{extra:,}")
    return t


def render_summary(summary: DemoSummary) -> Table:
    """The closing table: one row per step."""
    verdict = "every engine agrees with the reference" if summary.agrees else "ENGINES DISAGREE"
    total = sum(s for _, _, s in summary.steps)
    t = Table(title=f"Kairos demo: {verdict} ({total:.0f}s)", title_justify="left", show_lines=True)
    t.add_column("step", no_wrap=True)
    t.add_column("result")
    t.add_column("time", justify="right")
    for name, result, seconds in summary.steps:
        t.add_row(name, result, f"{seconds:.1f}s")
    return t


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
