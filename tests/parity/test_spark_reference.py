"""Spark against the reference, on adversarial logs: every row, every drop count, every training value.

The Spark session is the session-scoped ``spark`` fixture of ``tests/conftest.py``
(one JVM for the whole run); full builds are shared per module.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf.settings import Settings, load_settings
from features.events import EventType
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import Collision, Drop, EventRules, tile_expiry, tile_start
from features.spec import FeatureView
from pipelines.ingest.eventlog import records_to_table, write_parquet
from pipelines.spark.backfill import DEAD_LETTER_TABLE, SparkBackfill
from pipelines.spark.retrieval import SparkRetrieval
from pipelines.spark.schema import to_pandas
from pipelines.store.offline import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from pipelines.store.repo import apply_repo
from pipelines.store.retrieval import FeastRetrieval
from tests.adversarial import START, adversarial_log, minimal_logs
from tests.builders import make_event
from tests.compare import same

LATENESS = timedelta(hours=1)
RULES = EventRules(allowed_lateness=LATENESS)
DAY1 = datetime(2026, 10, 31, tzinfo=UTC)
DAY2, DAY3 = DAY1 + timedelta(days=1), DAY1 + timedelta(days=2)
AFTER_ALL = DAY3 + timedelta(days=400)  # past every timer of the log, the 365-day windows' too



def plain(value: Any, dtype: str) -> Any:
    """A pandas cell as the reference's Python value (UTC datetimes, lists, None)."""
    if dtype == "array<string>":
        return list(value)
    if value is None or (not isinstance(value, list) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        assert value.tzinfo is not None, "timestamps must come back timezone-aware"
        return value.tz_convert("UTC").to_pydatetime()
    return value.item() if hasattr(value, "item") else value


def settings_for(path: Path) -> Settings:
    return load_settings(data_dir=path, online_store={"type": "sqlite", "path": str(path / "online.db")},
                         spark={"master": "local[2]", "shuffle_partitions": 2})


def offline_rows(builder: SparkBackfill, view: FeatureView) -> list[dict[str, Any]]:
    pdf = to_pandas(builder.offline_table(view))
    assert isinstance(pdf[EVENT_TIMESTAMP].dtype, pd.DatetimeTZDtype), "offline timestamps must be UTC-aware"
    rows = []
    for r in pdf.to_dict("records"):
        row = {f.name: plain(r[f.name], f.dtype) for f in view.features}
        row[view.entity.join_key] = r[view.entity.join_key]
        row[EVENT_TIMESTAMP] = plain(r[EVENT_TIMESTAMP], "timestamp")
        row[CREATED_TIMESTAMP] = plain(r[CREATED_TIMESTAMP], "timestamp")
        rows.append(row)
    return rows


def table_rows(builder: SparkBackfill, view: FeatureView) -> list[tuple[str, ...]]:
    pdf = to_pandas(builder.offline_table(view))
    return sorted(tuple(str(x) for x in r) for r in pdf.itertuples(index=False))


class Built:
    def __init__(self, root: Path, spark: SparkSession, events: list[dict[str, Any]]) -> None:
        self.settings = settings_for(root)
        self.events = events
        self.ref = Reference(events, rules=RULES)
        write_parquet(records_to_table(events), self.settings.events_path)
        self.builder = SparkBackfill(self.settings, spark=spark)
        self.report = self.builder.backfill()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, spark: SparkSession) -> Callable[[int, int, int], Built]:
    """Full builds of adversarial logs, one per (seed, users, events), shared by the module's tests."""
    cache: dict[tuple[int, int, int], Built] = {}

    def get(seed: int, users: int, events: int) -> Built:
        if (seed, users, events) not in cache:
            root = tmp_path_factory.mktemp(f"built-{seed}")
            cache[(seed, users, events)] = Built(root, spark, adversarial_log(seed, users=users, events=events))
        return cache[(seed, users, events)]

    return get


@pytest.mark.parametrize(("seed", "users"), [(21, 3), (23, 5)])
def test_every_spark_row_equals_the_reference(built: Callable[[int, int, int], Built], seed: int,
                                              users: int) -> None:
    b = built(seed, users, 300)
    ref = b.ref
    assert b.report.dropped == {"invalid": 0, "late": 0, "duplicate": 0, "no_consent": 0,
                                **{d.value: n for d, n in ref.drops.items()}}
    assert set(ref.drops) == set(Drop), "the log must exercise every drop reason"
    for view in REGISTRY.views:
        key = view.entity.join_key
        rows = offline_rows(b.builder, view)
        assert b.report.views[view.name] == len(rows)
        got_points = sorted((r[key], r[EVENT_TIMESTAMP]) for r in rows)
        want_points = sorted((k, t) for k in ref.keys(view) for t in ref.change_points(view, k))
        assert got_points == want_points, view.name
        for r in rows:
            assert r[CREATED_TIMESTAMP] == r[EVENT_TIMESTAMP]
            want = ref.features(view, r[key], r[EVENT_TIMESTAMP])
            bad = {n: (r[n], want[n]) for n in want if not same(r[n], want[n])}
            assert not bad, (view.name, r[key], r[EVENT_TIMESTAMP], bad)


@pytest.mark.parametrize("name", sorted(minimal_logs()))
def test_the_independent_oracles_minimal_logs(tmp_path: Path, spark: SparkSession, name: str) -> None:
    """Each class the independent oracle found, as its minimal log: Spark's rows, drops and collisions equal the
    reference's (ids are unique per user: an id under a second user counts there and is an ``id_collision``)."""
    b = Built(tmp_path, spark, minimal_logs()[name])
    ref = b.ref
    assert b.report.collisions == {c.value: ref.collisions.get(c, 0) for c in Collision}
    assert {k: v for k, v in b.report.dropped.items() if k != "invalid"} == {d.value: ref.drops.get(d, 0)
                                                                              for d in Drop}
    if name == "id_under_two_users":
        assert b.report.collisions["id_collision"] == 1
    if name == "session_of_two_users":  # b's two events under a's live session; two days later b owns it, so a's
        assert b.report.collisions["session_collision"] == 3  # event then is the collision
    for view in REGISTRY.views:
        key = view.entity.join_key
        rows = offline_rows(b.builder, view)
        assert sorted((r[key], r[EVENT_TIMESTAMP]) for r in rows) == sorted(
            (k, t) for k in ref.keys(view) for t in ref.change_points(view, k)), view.name
        for r in rows:
            want = ref.features(view, r[key], r[EVENT_TIMESTAMP])
            assert not {n for n in want if not same(r[n], want[n])}, (view.name, r[key], r[EVENT_TIMESTAMP])


def _queries(ref: Reference) -> pd.DataFrame:
    """Cold start, exactly on arrivals, just before them, exactly on tile expiries, random times, unknown keys."""
    rng = random.Random(5)
    admitted = ref.events
    sessions = sorted({(e["user_id"], e["session_id"]) for e in admitted if e["session_id"]})
    queries: list[tuple[str | None, str | None, datetime]] = []
    windows = {a.window for v in REGISTRY.views for a in v.aggregations if not a.window.lifetime}  # these expire
    for user, session in sessions:
        queries.append((user, session, START - timedelta(hours=2)))  # before anything: cold start
        e = rng.choice([x for x in admitted if x["session_id"] == session])
        queries.append((user, session, e["ingest_time"]))  # exactly on an arrival
        queries.append((user, session, e["ingest_time"] - timedelta(microseconds=1)))  # just before it
        for w in windows:  # exactly on a tile expiry, and just before it
            queries.append((user, session, tile_expiry(tile_start(e["event_time"], w), w)))
            queries.append((user, session, tile_expiry(tile_start(e["event_time"], w), w) - timedelta(microseconds=1)))
        for _ in range(3):
            queries.append((user, session, START + timedelta(seconds=rng.uniform(0, 8 * 3600))))
        queries.append((user, session, START + timedelta(days=rng.uniform(1, 45))))
    queries.append(("nobody", "no-session", START + timedelta(hours=1)))
    queries.append((sessions[0][0], None, START + timedelta(hours=3)))  # a user row without a session
    return pd.DataFrame({"qid": range(len(queries)), "user_id": [q[0] for q in queries],
                         "session_id": [q[1] for q in queries],
                         "event_timestamp": pd.to_datetime([q[2] for q in queries], utc=True),
                         "label": [i % 2 for i in range(len(queries))]})


def _check_training_set(ref: Reference, entity_df: pd.DataFrame, got: pd.DataFrame, names: list[str]) -> int:
    got = got.sort_values("qid").reset_index(drop=True)
    assert list(got["qid"]) == list(entity_df["qid"]) and list(got["label"]) == list(entity_df["label"])
    assert list(got.columns) == [*entity_df.columns, *names]
    service = REGISTRY.service("purchase_propensity_v1")
    checked = 0
    for q, row in zip(entity_df.itertuples(index=False), got.to_dict("records"), strict=True):
        t = q.event_timestamp.to_pydatetime()
        want = ref.service_row(service, {"user_id": q.user_id, "session_id": q.session_id}, t)
        for n in names:
            v = plain(row[n], REGISTRY.feature(n).dtype)
            assert same(v, want[n]), (q.user_id, q.session_id, t, n, v, want[n])
            checked += 1
    return checked


def test_training_set_is_point_in_time_correct(built: Callable[[int, int, int], Built]) -> None:
    b = built(23, 5, 300)
    entity_df = _queries(b.ref)
    service = REGISTRY.service("purchase_propensity_v1")
    got = to_pandas(SparkRetrieval(b.settings, spark=b.builder.spark).training_set(entity_df, service))
    assert _check_training_set(b.ref, entity_df, got, [r.split(":")[1] for r in service.feature_refs]) > 1000
    # a Spark frame and feature references (an on-demand feature alone brings its sources as inputs only)
    refs = ["session_context:session_cart_idle_seconds", "user_account:user_logins_7d",
            "user_commerce:user_top3_categories_24h", "user_recency:user_seconds_since_last_login"]
    sdf = b.builder.spark.createDataFrame(entity_df)
    got = to_pandas(SparkRetrieval(b.settings, spark=b.builder.spark).training_set(sdf, refs))
    _check_training_set(b.ref, entity_df, got, [r.split(":")[1] for r in refs])


def test_training_set_rejects_naive_timestamps_and_missing_keys(built: Callable[[int, int, int], Built]) -> None:
    b = built(23, 5, 300)
    service = REGISTRY.service("churn_v1")
    naive = pd.DataFrame({"user_id": ["u1"], "event_timestamp": [datetime(2026, 11, 1)]})
    with pytest.raises(ValueError, match="timezone-aware"):
        SparkRetrieval(b.settings, spark=b.builder.spark).training_set(naive, service)
    no_key = pd.DataFrame({"event_timestamp": pd.to_datetime([START], utc=True)})
    with pytest.raises(ValueError, match="'user_id'"):
        SparkRetrieval(b.settings, spark=b.builder.spark).training_set(no_key, service)


def test_feast_get_historical_features_equals_the_reference(built: Callable[[int, int, int], Built]) -> None:
    """Feast's file offline store over the same offline tables gives the same training set."""
    b = built(23, 5, 300)
    store = apply_repo(b.settings)
    entity_df = _queries(b.ref)
    service = REGISTRY.service("purchase_propensity_v1")
    got = FeastRetrieval(store).training_set(entity_df, service)
    names = [r.split(":")[1] for r in service.feature_refs]
    assert _check_training_set(b.ref, entity_df, got, names) > 1000


def test_intervals_add_up_to_one_full_run_and_reruns_are_idempotent(built: Callable[[int, int, int], Built],
                                                                    tmp_path: Path, spark: SparkSession) -> None:
    full = built(21, 3, 300)
    settings = settings_for(tmp_path)
    write_parquet(records_to_table(full.events), settings.events_path)
    inc = SparkBackfill(settings, spark=spark)
    reports = [inc.backfill(start=a, end=z) for a, z in ((DAY1, DAY2), (DAY2, DAY3), (DAY3, AFTER_ALL))]
    for reason, n in full.report.dropped.items():  # every event is counted by exactly one interval
        assert sum(r.dropped[reason] for r in reports) == n, reason
    for view in REGISTRY.views:
        assert sum(r.views[view.name] for r in reports) == full.report.views[view.name]
        assert table_rows(inc, view) == table_rows(full.builder, view), view.name
    # a rerun replaces exactly its days: stale files on a day with rows and on a day without rows inside the
    # interval go (dynamic overwrite, then removal of empty days); a stale day outside the interval stays
    view = REGISTRY.view("user_commerce")
    root = settings.offline_path / view.name
    before = table_rows(inc, view)
    with_rows = sorted(p.name for p in root.glob("event_date=2026-12-*"))[0]
    stale = [root / with_rows, root / "event_date=2026-12-05", root / "event_date=2026-10-30"]
    sample = pq.read_table(next(root.glob("event_date=2026-10-31/*.parquet")))
    for d in stale:
        d.mkdir(exist_ok=True)
        pq.write_table(sample, d / "part-stale.parquet", coerce_timestamps="us")
    again = inc.backfill(start=DAY3, end=AFTER_ALL)
    assert again.views == reports[2].views and again.dropped == reports[2].dropped
    assert [(d / "part-stale.parquet").exists() for d in stale] == [False, False, True]
    assert not stale[1].exists()
    (stale[2] / "part-stale.parquet").unlink()
    assert table_rows(inc, view) == before


def test_session_collisions_of_intervals_add_up_to_one_full_run(tmp_path: Path, spark: SparkSession) -> None:
    """A collision is counted by the interval its arrival falls in: b's add-to-cart in a's live ``s1``, stamped
    before midnight and arriving after it, is counted once (by the second day), not lost between the two."""
    events = [make_event(EventType.PAGE_VIEW, user_id="a", session_id="s1", event_time=DAY2 - timedelta(minutes=5)),
              make_event(EventType.ADD_TO_CART, user_id="b", session_id="s1", event_time=DAY2 - timedelta(seconds=30),
                         ingest_delay=timedelta(minutes=1))]
    full = Built(tmp_path / "full", spark, events)
    assert full.ref.collisions == {Collision.SESSION_ID: 1}
    assert full.report.collisions[Collision.SESSION_ID.value] == 1
    settings = settings_for(tmp_path / "inc")
    write_parquet(records_to_table(events), settings.events_path)
    inc = SparkBackfill(settings, spark=spark)
    reports = [inc.backfill(start=a, end=z) for a, z in ((DAY1, DAY2), (DAY2, AFTER_ALL))]
    assert [r.collisions[Collision.SESSION_ID.value] for r in reports] == [0, 1]
    for view in REGISTRY.views:
        assert table_rows(inc, view) == table_rows(full.builder, view), view.name


def test_an_interval_without_change_points_succeeds_writes_nothing_and_clears_its_days(
        built: Callable[[int, int, int], Built], tmp_path: Path, spark: SparkSession) -> None:
    """The hourly DAG meets quiet intervals: a day after every window emptied, and a day before any event."""
    full = built(21, 3, 300)
    settings = settings_for(tmp_path)
    write_parquet(records_to_table(full.events), settings.events_path)
    builder = SparkBackfill(settings, spark=spark)
    builder.backfill()
    quiet = AFTER_ALL + timedelta(days=3)
    root = settings.offline_path / "user_commerce"
    stale = root / f"event_date={quiet.date().isoformat()}"
    stale.mkdir()
    pq.write_table(pq.read_table(next(root.glob("event_date=2026-10-31/*.parquet"))), stale / "part-stale.parquet",
                   coerce_timestamps="us")
    for start in (quiet, DAY1 - timedelta(days=60)):
        report = builder.backfill(start=start, end=start + timedelta(days=1))
        assert report.views == {v.name: 0 for v in REGISTRY.views}
        assert sum(report.dropped.values()) == 0 and sum(report.collisions.values()) == 0
    assert not stale.exists(), "the interval's days are cleared"
    assert table_rows(builder, REGISTRY.view("user_commerce")) == table_rows(full.builder, REGISTRY.view(
        "user_commerce"))


def test_interval_bounds_must_be_midnights(tmp_path: Path, spark: SparkSession) -> None:
    builder = SparkBackfill(settings_for(tmp_path), spark=spark)
    with pytest.raises(ValueError, match="UTC midnights"):
        builder.backfill(start=datetime(2026, 10, 31, 6, tzinfo=UTC))
    with pytest.raises(ValueError, match="UTC midnights"):
        builder.backfill(end=datetime(2026, 11, 1))  # naive
    with pytest.raises(ValueError, match="empty interval"):
        builder.backfill(start=DAY2, end=DAY1)


def test_validation_names_bad_columns_and_dead_letters_rows(tmp_path: Path, spark: SparkSession) -> None:
    settings = settings_for(tmp_path)
    events = adversarial_log(41, users=2, events=120)
    bad = [dict(events[0], event_id=None), dict(events[1], user_id=None), dict(events[2], ingest_time=None),
           dict(events[3], event_time=events[3]["ingest_time"] + timedelta(minutes=5, microseconds=1)),
           dict(events[4], event_time=None, ingest_time=None)]
    # a client clock 2 minutes ahead is clamped to the arrival, as the event model and the stream do
    ahead = dict(events[5], event_time=events[5]["ingest_time"] + timedelta(minutes=2))
    good = [dict(ahead, event_time=ahead["ingest_time"]), *events[6:]]
    write_parquet(records_to_table([ahead, *events[6:], *bad]), settings.events_path)
    builder = SparkBackfill(settings, spark=spark)
    report = builder.backfill()
    assert report.dropped["invalid"] == len(bad)
    assert builder.dead_letters == {"event_id is null": 1, "user_id is null": 1, "ingest_time is null": 2,
                                    "event_time is null": 1,
                                    "event_time is more than 300s after ingest_time (max clock skew)": 1}
    letters = spark.read.parquet(str(settings.dead_letter_path / DEAD_LETTER_TABLE)).toPandas()
    assert len(letters) == len(bad) and letters["_problem"].notna().all()
    builder.backfill()  # idempotent: the dead letters are replaced, not appended
    assert spark.read.parquet(str(settings.dead_letter_path / DEAD_LETTER_TABLE)).count() == len(bad)
    ref = Reference(good, rules=RULES)  # the bad rows never reach a feature
    assert {k: v for k, v in report.dropped.items() if k != "invalid"} == {
        "late": 0, "duplicate": 0, "no_consent": 0, **{d.value: n for d, n in ref.drops.items()}}
    for view in REGISTRY.views:  # the clamped event counts at its arrival, in its arrival's tile
        key = view.entity.join_key
        rows = offline_rows(builder, view)
        assert sorted((r[key], r[EVENT_TIMESTAMP]) for r in rows) == sorted(
            (k, t) for k in ref.keys(view) for t in ref.change_points(view, k)), view.name
        for r in rows:
            want = ref.features(view, r[key], r[EVENT_TIMESTAMP])
            assert not {n for n in want if not same(r[n], want[n])}, (view.name, r[key], r[EVENT_TIMESTAMP])
    view = REGISTRY.view("user_account")
    got = sorted((r["user_id"], r[EVENT_TIMESTAMP]) for r in offline_rows(builder, view))
    assert got == sorted((k, t) for k in ref.keys(view) for t in ref.change_points(view, k))

    source = builder.read_events()
    with pytest.raises(ValueError, match="no column 'ingest_time'"):
        builder.validate(source.drop("ingest_time"), report)
    with pytest.raises(ValueError, match="column 'amount' is string, expected double"):
        builder.validate(source.withColumn("amount", F.col("amount").cast("string")), report)
