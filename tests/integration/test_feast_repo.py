"""The generated Feast repo: `feast apply` registers every spec, and values round-trip through Feast.

Online values are checked against the reference oracle (``features.reference``),
through the real SQLite online store, Feast's own write and read APIs and the
on-demand udfs as Feast rebuilds them from its registry.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dill
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore, FeatureView, Field, FileSource
from feast.transformation.python_transformation import PythonTransformation
from feast.transformation.udf_rehydrate import resolve_udf
from feast.types import Int64

from conf.settings import Settings
from features import catalog
from features.aggregations import Count
from features.expr import col, hour_of_day, lit
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from features.spec import (
    REQUEST_TIME,
    W5M,
    Aggregation,
    Derived,
    Entity,
    FeatureService,
    OnDemandFeature,
    OnDemandView,
)
from features.spec import FeatureView as ViewSpec
from pipelines.store.feast_types import FEAST_TYPES
from pipelines.store.offline import offline_schema, offline_table_path
from pipelines.store.on_demand import on_demand_source, on_demand_udf
from pipelines.store.online import read_online, to_frame, write_online
from pipelines.store.repo import apply_repo, feast_objects, repo_config, write_repo
from pipelines.store.values import spec_value
from tests.builders import T0, make_event, minutes
from tests.compare import same_typed as same
from tests.conftest import settings_in

FEAST = str(Path(sys.executable).with_name("feast"))
RULES = EventRules(allowed_lateness=timedelta(hours=1))
PURCHASE_PROPENSITY = REGISTRY.service("purchase_propensity_v1")



def mismatches(got: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {n: (got.get(n), w) for n, w in want.items() if not same(got.get(n), w)}


def small_log() -> list[dict[str, Any]]:
    """Two shoppers and a login history: every dtype gets a non-default value somewhere."""
    return [
        make_event("login", user_id="u1", session_id="s0", event_time=T0 - timedelta(days=3)),
        make_event("purchase", user_id="u1", session_id="s0", amount=19.99, event_time=T0 - timedelta(days=3)),
        make_event("product_view", user_id="u1", session_id="s1", category="bags", event_time=T0),
        make_event("product_view", user_id="u1", session_id="s1", category="shoes", event_time=T0 + minutes(1)),
        make_event("product_view", user_id="u1", session_id="s1", category="bags", event_time=T0 + minutes(2)),
        make_event("add_to_cart", user_id="u1", session_id="s1", quantity=2, event_time=T0 + minutes(3)),
        make_event("page_view", user_id="u1", session_id="s1", page="/cart", dwell_seconds=42.0,
                   event_time=T0 + minutes(4)),
        make_event("purchase", user_id="u2", session_id="s2", amount=80.0, event_time=T0),
        make_event("help_search", user_id="u2", session_id="s2", event_time=T0 + minutes(2)),
        make_event("login", user_id="u2", session_id="s2", event_time=T0 + minutes(3), device_id="d7"),
    ]


THING = Entity(name="thing", join_key="thing_id", description="A test entity")
THINGS = ViewSpec(
    name="things", entity=THING, source=catalog.EVENTS, description="A view whose derived default differs",
    aggregations=(Aggregation(name="things_5m", op=Count(), window=W5M, dtype="int64", default=0,
                              description="Events in 5 minutes"),),
    # cold, the reference computes 0 * 2.0 = 0.0 here: the declared default 7.0 is only for a null value
    derived=(Derived(name="things_double", dtype="float64", default=7.0, expr=col("things_5m") * 2.0,
                     description="Twice the count"),),
)
THING_CONTEXT = OnDemandView(
    name="thing_context", sources=(THINGS,), request_fields=(REQUEST_TIME,), description="Request-time things",
    features=(OnDemandFeature(name="thing_score", dtype="float64", default=-1.0, expr=col("things_double") + 1.0,
                              description="Twice the count, plus one"),
              OnDemandFeature(name="thing_hour", dtype="int64", default=0, expr=hour_of_day(col("request_time")),
                              description="Hour of the request")),
)


def test_generated_udf_computes_what_the_reference_computes_and_survives_both_serializations() -> None:
    udf, source = on_demand_udf(THING_CONTEXT)
    at = T0 + timedelta(minutes=3, microseconds=999_999)
    inputs = {"request_time": [at, at, at],
              "things_5m": [4, None, None], "things_double": [8.0, None, float("nan")]}
    want = [THING_CONTEXT.compute({"things_5m": 4, "things_double": 8.0, "request_time": at}),
            Reference([], rules=RULES).on_demand(THING_CONTEXT, {"thing_id": "nobody"}, {"request_time": at})]
    want.append(want[1])  # NaN (an offline join's null) is null
    expected = {n: [w[n] for w in want] for n in THING_CONTEXT.feature_names}
    assert expected == {"thing_score": [9.0, 1.0, 1.0], "thing_hour": [12, 12, 12]}
    assert udf(inputs) == expected
    # what Feast stores: the source text (rebuilt first) and the dill body (the fallback)
    proto = PythonTransformation(udf=udf, udf_string=source).to_proto()
    assert proto.body_text == source and proto.name == udf.__name__
    rebuilt = resolve_udf(udf_string=proto.body_text, body=proto.body, preferred_name=proto.name)
    assert rebuilt.__module__ == "feast_udf_rehydrate" and rebuilt(inputs) == expected
    assert resolve_udf(udf_string="", body=proto.body)(inputs) == expected
    assert dill.loads(dill.dumps(udf, recurse=True))(inputs) == expected


def test_a_spec_that_its_source_cannot_carry_is_refused() -> None:
    odv = OnDemandView(name="odd", sources=(THINGS,), request_fields=(REQUEST_TIME,), description="x",
                       features=(OnDemandFeature(name="odd_value", dtype="float64", default=0.0,
                                                 expr=col("things_double") + lit(float("nan")), description="x"),))
    with pytest.raises(ValueError, match="does not survive its generated source"):
        on_demand_udf(odv)


def test_feast_cli_apply_registers_every_spec(tmp_path: Path) -> None:
    # no KAIROS__ environment here: the generated definitions carry the settings the repo was written with
    settings = settings_in(tmp_path)
    repo = write_repo(settings)
    assert repo == settings.feature_repo_path
    assert sorted(p.name for p in repo.iterdir()) == ["definitions.py", "feature_store.yaml"]
    run = subprocess.run([FEAST, "apply"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Created feature service purchase_propensity_v1" in run.stdout, run.stdout

    store = FeatureStore(repo_path=str(repo))
    entities = {e.name: e for e in store.list_entities()}
    assert {n: (e.join_key, e.value_type.name) for n, e in entities.items()} == {
        e.name: (e.join_key, "STRING") for e in REGISTRY.entities}

    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {v.name for v in REGISTRY.views}
    for v in REGISTRY.views:
        fv = views[v.name]
        assert [(f.name, f.dtype) for f in fv.features] == [(f.name, FEAST_TYPES[f.dtype])
                                                            for f in v.features]
        assert {f.name: (f.description, f.tags) for f in fv.features} == {
            f.name: (f.description, v.tags_of(f)) for f in v.features}
        # a view with a lifetime window has no TTL: Feast's 0 ("none"); the others' is the longest window + hop
        assert (fv.ttl, fv.online, fv.entities, fv.description, fv.owner) == (
            timedelta(0) if v.lifetime else v.ttl, v.online, [v.entity.name], v.description, v.owner)
        assert fv.stream_source is not None and fv.stream_source.name == f"{v.name}_push"
        assert isinstance(fv.batch_source, FileSource)
        assert fv.batch_source.path == str(tmp_path / "offline" / v.name)  # the settings', not the defaults'

    odfvs = {o.name: o for o in store.list_on_demand_feature_views()}
    assert set(odfvs) == {o.name for o in REGISTRY.on_demand_views}
    for o in REGISTRY.on_demand_views:
        got = odfvs[o.name]
        assert [(f.name, f.dtype) for f in got.features] == [(f.name, FEAST_TYPES[f.dtype])
                                                             for f in o.features]
        assert set(got.source_feature_view_projections) == {s.name for s in o.sources}
        (request,) = got.source_request_sources.values()
        assert [(f.name, f.dtype) for f in request.schema] == [(r.name, FEAST_TYPES[r.dtype])
                                                               for r in o.request_fields]
        # Feast rebuilt the udf from the generated source text, not from the dill body
        transformation = got.feature_transformation
        assert transformation is not None
        assert transformation.udf_string == on_demand_source(o)
        assert transformation.udf.__module__ == "feast_udf_rehydrate"

    services = {s.name: s for s in store.list_feature_services()}
    assert set(services) == {s.name for s in REGISTRY.services}
    for s in REGISTRY.services:
        got_refs = [f"{p.name}:{f.name}" for p in services[s.name].feature_view_projections for f in p.features]
        assert got_refs == list(s.feature_refs)
        assert (services[s.name].description, services[s.name].tags) == (s.description, dict(s.tags))


def registered(store: FeatureStore) -> set[str]:
    return {o.name for o in [*store.list_entities(), *store.list_data_sources(), *store.list_feature_views(),
                             *store.list_on_demand_feature_views(), *store.list_feature_services()]}


def test_sdk_apply_mirrors_the_cli_and_removes_what_the_specs_dropped(tmp_settings: Settings) -> None:
    generated = {o.name for o in feast_objects(tmp_settings)}
    store = apply_repo(tmp_settings)
    assert registered(store) == generated
    obsolete = FeatureView(name="obsolete_view", entities=[store.get_entity("user")],
                           schema=[Field(name="x", dtype=Int64)],
                           source=FileSource(name="obsolete_source", path=str(tmp_settings.data_path / "x.parquet"),
                                             timestamp_field="event_timestamp"))
    store.apply([obsolete])
    assert registered(store) == generated | {"obsolete_view", "obsolete_source"}
    store = apply_repo(tmp_settings)
    assert registered(store) == generated
    assert registered(apply_repo(tmp_settings)) == generated  # idempotent


def test_spark_offline_store_gets_spark_sources_over_the_same_tables(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, offline_store={"type": "spark"},
                           spark={"master": "local[2]", "shuffle_partitions": 3, "conf": {"spark.ui.enabled": "false"}})
    config = repo_config(settings)
    assert type(config.offline_store).__name__ == "SparkOfflineStoreConfig"
    assert config.offline_store.spark_conf == {
        "spark.master": "local[2]", "spark.app.name": settings.spark.app_name, "spark.sql.shuffle.partitions": "3",
        "spark.driver.memory": settings.spark.driver_memory, "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false"}
    store = apply_repo(settings)  # registering needs no Spark session
    for v in REGISTRY.views:
        source = store.get_feature_view(v.name).batch_source
        assert type(source).__name__ == "SparkSource"
        assert (source.path, source.file_format, source.date_partition_column) == (
            str(tmp_path / "offline" / v.name), "parquet", "event_date")
        assert (source.timestamp_field, source.created_timestamp_column) == ("event_timestamp", "created_timestamp")


def test_online_round_trip_equals_the_reference(tmp_settings: Settings) -> None:
    ref = Reference(small_log(), rules=RULES)
    as_of = T0 + minutes(20)
    store = apply_repo(tmp_settings)
    written = {"user": ["u1", "u2"], "session": ["s1", "s2"]}
    for view in REGISTRY.views:
        rows = [{view.entity.join_key: k, "event_timestamp": as_of, **ref.features(view, k, as_of)}
                for k in written[view.entity.name]]
        assert write_online(store, view, rows) == 2

    keys = [("u1", "s1"), ("u2", "s2"), ("cold-user", "cold-session")]
    request_time = as_of + timedelta(seconds=7, microseconds=250_000)  # Feast sends whole seconds; so does the spec
    entity_rows = [{"user_id": u, "session_id": s, "request_time": request_time} for u, s in keys]
    # a fresh store reads the registry from disk: the on-demand udfs are the ones Feast rebuilds from it
    fresh = FeatureStore(repo_path=str(tmp_settings.feature_repo_path))
    online = read_online(fresh, PURCHASE_PROPENSITY, entity_rows)
    for (u, s), got in zip(keys, online, strict=True):
        want = ref.service_row(PURCHASE_PROPENSITY, {"user_id": u, "session_id": s}, as_of)
        # on-demand features are computed at request time, the rest were written as of `as_of`
        for odv in (v for v in PURCHASE_PROPENSITY.views if isinstance(v, OnDemandView)):
            want |= ref.on_demand(odv, {"user_id": u, "session_id": s}, {"request_time": request_time})
        assert not mismatches(got, want), (u, s, mismatches(got, want))

    u1, _, cold = online
    assert u1["user_top3_categories_24h"] == ["bags", "shoes"] and u1["user_last_viewed_category_24h"] == "bags"
    assert u1["session_cart_idle_seconds"] == 17 * 60.0 + 7  # 2 items in the cart since T0 + 3m
    assert u1["user_seconds_since_last_purchase"] == (request_time.replace(microsecond=0)
                                                      - (T0 - timedelta(days=3))).total_seconds()
    # cold start: Feast has nothing for these keys, the spec's documented defaults come back
    raw = fresh.get_online_features(features=["user_commerce:user_total_spend_30d",
                                              "user_commerce:user_last_purchase_at_30d"],
                                    entity_rows=[{"user_id": "cold-user"}]).to_dict()
    assert raw["user_total_spend_30d"] == [None] and raw["user_last_purchase_at_30d"] == [None]
    assert cold["user_total_spend_30d"] == 0.0 and cold["user_top3_categories_24h"] == []
    assert cold["user_last_purchase_at_30d"] is None and cold["user_onboarding_max_step_30d"] == -1
    assert cold["user_seconds_since_last_purchase"] == 30 * 86400.0 and cold["user_rfm_recency_score"] == 0.0
    assert cold["request_hour_of_day"] == request_time.hour

    # the other ways to name features: a service name and feature references
    assert read_online(fresh, "purchase_propensity_v1", entity_rows) == online
    refs = ["session_activity:session_top3_categories_24h", "session_context:session_seconds_inactive"]
    assert read_online(fresh, refs, entity_rows[:1]) == [
        {"session_top3_categories_24h": ["bags", "shoes"],
         "session_seconds_inactive": online[0]["session_seconds_inactive"]}]


def test_write_online_refuses_naive_timestamps(tmp_settings: Settings) -> None:
    store = apply_repo(tmp_settings)
    view = REGISTRY.view("session_activity")
    with pytest.raises(ValueError, match="no timezone"):
        write_online(store, view, [{"session_id": "s", "event_timestamp": datetime(2026, 10, 1)}])


def write_offline_table(settings: Settings, ref: Reference, view_name: str) -> pa.Table:
    """The view's offline table as the engines write it: a row per key and change point, microsecond UTC times."""
    view = REGISTRY.view(view_name)
    rows = [{view.entity.join_key: k, "event_timestamp": t, **ref.features(view, k, t)}
            for k in ref.keys(view) for t in ref.change_points(view, k)]
    table = pa.Table.from_pandas(to_frame(view, rows), schema=offline_schema(view),
                                 preserve_index=False)
    path = offline_table_path(settings, view) / "event_date=2026-10-01" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path, coerce_timestamps="us")
    return pq.read_table(path)


def test_historical_features_are_point_in_time(tmp_settings: Settings) -> None:
    ref = Reference(small_log(), rules=RULES)
    for view in REGISTRY.views:
        written = write_offline_table(tmp_settings, ref, view.name)
        assert written.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")  # Spark 4 reads it
        assert written.num_rows > 0
    store = apply_repo(tmp_settings)

    # Feast 0.67's file offline store drops an entity row whose key has table rows but none within
    # [t - ttl, t] (e.g. t before the key's first row), so these queries sit inside the keys' activity,
    # plus a key no table has, which Feast does return (all nulls).
    queries = [("u1", "s1", T0 + minutes(1)), ("u1", "s1", T0 + minutes(2) + timedelta(seconds=30)),
               ("u1", "s1", T0 + minutes(4)), ("u1", "s1", T0 + minutes(9)), ("u1", "s1", T0 + timedelta(hours=2)),
               ("u2", "s2", T0 + minutes(3)), ("u2", "s2", T0 + timedelta(days=1)),
               ("cold-user", "cold-session", T0 + minutes(5))]
    times = pd.to_datetime([t for _, _, t in queries], utc=True)
    entity_df = pd.DataFrame({"row": range(len(queries)), "user_id": [u for u, _, _ in queries],
                              "session_id": [s for _, s, _ in queries], "event_timestamp": times})

    plain = FeatureService(name="plain", description="views only",
                           views=tuple(v for v in PURCHASE_PROPENSITY.views if v in REGISTRY.views))
    got = store.get_historical_features(entity_df=entity_df, features=list(plain.feature_refs)).to_df()
    got = got.sort_values("row").reset_index(drop=True)
    assert got["row"].tolist() == list(range(len(queries)))
    for (u, s, t), (_, row) in zip(queries, got.iterrows(), strict=True):
        want = ref.service_row(plain, {"user_id": u, "session_id": s}, t)
        values = {n: spec_value(REGISTRY.feature(n), row[n]) for n in want}
        assert not mismatches(values, want), (u, s, t, mismatches(values, want))
    assert spec_value(REGISTRY.feature("user_top3_categories_24h"), got.loc[2, "user_top3_categories_24h"]
                                 ) == ["bags", "shoes"]

    # the whole service, on-demand views included: Feast runs the generated udfs over the joined frame
    with_request = entity_df.assign(request_time=times)
    got = store.get_historical_features(entity_df=with_request, features=store.get_feature_service(
        PURCHASE_PROPENSITY.name)).to_df().sort_values("row").reset_index(drop=True)
    assert got["row"].tolist() == list(range(len(queries)))
    for (u, s, t), (_, row) in zip(queries, got.iterrows(), strict=True):
        want = ref.service_row(PURCHASE_PROPENSITY, {"user_id": u, "session_id": s}, t)
        values = {n: spec_value(REGISTRY.feature(n), row[n]) for n in want}
        assert not mismatches(values, want), (u, s, t, mismatches(values, want))
