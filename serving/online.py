"""Fast online reads for serving: Feast's online-store layout, read directly.

Why this exists
---------------
``FeatureStore.get_online_features`` (what :func:`pipelines.store.online.read_online` calls) costs 10 ms and
more per call here: it resolves the registry, reads each feature view with a statement of its own, builds a
response proto feature by feature, converts it back to Python and runs the on-demand udfs through its dict
plumbing. Feast's Go and Java feature servers do not go through it either: they read the online store's layout
directly. :class:`OnlineReader` does the same for the serving layer and returns what ``read_online`` returns,
value for value (``tests/integration/test_online_reader.py`` checks every feature of every service, on SQLite and
on a real valkey server, for cold starts and after the stream's partial writes).

Why not Feast's pre-computed vectors (``FeatureService(precompute_online=True)``, Feast >= 0.64)
-------------------------------------------------------------------------------------------------
Measured on Feast 0.67.0 (``tests/integration/test_feast_precompute.py`` pins it): they do not serve Kairos.
A service with request-time features cannot be pre-computed (Feast refuses an on-demand view not written to
the online store, and ``request_time`` features cannot be written ahead); pre-computing needs entity scans,
which only Redis offers; and the vectors are rebuilt by ``materialize`` and ``push`` (each time for every entity
of the service), not by the ``online_write_batch`` the stream writes through, so under the stream they go stale.

The layout it reads (Feast 0.67.0; each dependency is named again where the code uses it)
----------------------------------------------------------------------------------------------
* Entity key: ``serialize_entity_key`` (``feast/infra/key_encoding_utils.py``) of an ``EntityKey`` proto holding
  the view's one join key and its value (``string_val`` for a string entity), at the repo's
  ``entity_key_serialization_version`` (3, from :func:`pipelines.store.repo.store_config`).
* Values: ``Value`` protos (``feast/protos/feast/types/Value_pb2``), serialized; a null is an empty proto (or
  an empty string of bytes); a null timestamp is ``unix_timestamp_val = NULL_TIMESTAMP_INT_VALUE``. They read
  back as ``feast.type_map.feast_value_type_to_python_type`` reads them, then as
  :func:`pipelines.store.values.spec_value` types them.
* SQLite (``feast/infra/online_stores/sqlite.py``): a table per feature view named ``<project>_<view>``
  (``_table_id`` -> ``helpers.compute_table_id``, without feature-view versioning), one row per
  (entity_key BLOB, feature_name TEXT) with ``value`` (the proto bytes), ``event_ts`` and ``created_ts``;
  ``event_ts`` holds ``int(naive_utc.timestamp())`` (Feast's ``adapt_datetime_epoch`` adapter) and Feast reads
  it back as ``datetime.fromtimestamp(int(v))`` labelled UTC (``convert_timestamp`` and ``online_read``).
* Redis (``feast/infra/online_stores/redis.py``): one hash per entity key, named the serialized key followed by
  the project's UTF-8 bytes (``helpers._redis_key``); a feature's field is ``_mmh3("<view>:<feature>")``
  (``helpers._mmh3``: 4 bytes of murmur3), and ``_ts:<view>`` holds a ``google.protobuf.Timestamp`` of the view's
  latest write (``online_write_batch`` skips a write not newer than it; ``_get_features_for_entity`` reads it).
  Only ``redis_type: redis`` (one server) is supported, as the settings configure it.

Feast 0.67 does not filter online reads by the view's TTL, so neither does this reader.

Event timestamps
----------------
A view's ``event_ts`` is the time of the latest write of the entity's row: on Redis the ``_ts:<view>`` field,
exactly what Feast reports; on SQLite the largest ``event_ts`` of the entity's rows. Feast's SQLite
``online_read`` reports instead the ``event_ts`` of the last row its query happens to return (in insertion
order through the ``<table>_ek`` index): the same value while every write carries every feature, but after the
stream's partial writes (:func:`pipelines.store.online.write_online_rows` writes only changed features) it can
be an older write's time. The reader keeps the latest write, the same answer on both stores; the test pins
Feast's SQLite behaviour so an upgrade that changes it is noticed. ``event_ts`` is ``None`` when the entity was
never written (cold start; its values are then the view's ``finalize_row({})``).

One round trip
--------------
One :meth:`OnlineReader.read` (and so one :meth:`OnlineReader.feature_vector`) is one request to the store, for
every stored view of the service: on SQLite one SQL statement, a ``UNION ALL`` of one ``SELECT`` per view table;
on Redis one send of one ``HMGET`` per view, then their replies (a pipeline without a transaction).
:meth:`OnlineReader.aread` is the same read for an event loop (``redis.asyncio``; the whole read bounded by
the reader's ``timeout``). ``trace`` (a constructor argument) is
called by the drivers themselves for each request they send: SQLite's trace callback with each statement it
runs, and the Redis connection with the names of the commands it writes in one send (a new connection's
handshake is a send of its own), so a caller (and the test) can count round trips.

Thread safety
-------------
An :class:`OnlineReader` may be shared by the service's threads. SQLite: one read-only connection per thread
(opened on the thread's first read, and again after a fork), never shared, so threads read concurrently without
a lock; SQLite itself serialises them against the writer (the stream) with its file locks, and a read sees the
last committed write. Redis: one redis-py connection pool for the reader (and one asyncio pool per event loop
for :meth:`OnlineReader.aread`); each read takes a connection from it and gives it back, or drops it if the
read failed part way. The caches of query plans and udfs are filled under the GIL and never
change once filled. :meth:`OnlineReader.close` closes every connection (of every thread).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import feast
import redis
import redis.asyncio as aredis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.type_map import NULL_TIMESTAMP_INT_VALUE, feast_value_type_to_python_type
from google.protobuf.timestamp_pb2 import Timestamp

from conf.settings import Settings
from features import spec
from features.registry import REGISTRY, Registry
from pipelines.store.on_demand import on_demand_udf
from pipelines.store.repo import repo_config

FEAST_LAYOUT_VERSION: Final = "0.67.0"  # the Feast version whose online-store layout this module mirrors

Trace = Callable[[str], None]
Backend = Literal["sqlite", "redis"]
KeyValues = Mapping[str, Any]  # join key -> value, e.g. {"user_id": "u1", "session_id": "s1"}


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One stored view's row for one entity.

    ``values``: the view's features, spec-typed, in spec order (what ``read_online`` returns for them).
    ``feast_values``: the same features as Feast's online response holds them before Kairos types them
    (``None`` where the store has no value): what the on-demand udfs read.
    ``event_ts``: the latest write of the row (timezone-aware UTC), ``None`` if the entity was never written.
    """

    values: dict[str, Any]
    feast_values: dict[str, Any]
    event_ts: datetime | None

    @property
    def written(self) -> bool:
        return self.event_ts is not None


# ------------------------------------------------------------------------------------ values (Feast 0.67.0)
_NULL_TIMESTAMP: Final = int(NULL_TIMESTAMP_INT_VALUE)  # feast.type_map: a null timestamp's unix_timestamp_val
_PLAIN: Final = frozenset({"double_val", "int64_val", "string_val", "bool_val", "float_val", "int32_val",
                           "bytes_val"})


def feast_value(blob: bytes | None) -> Any:
    """Serialized ``Value`` proto bytes as Feast 0.67.0's ``feast_value_type_to_python_type`` reads them.

    A missing or empty blob, an unset proto and the null timestamp are ``None``; timestamps are UTC datetimes;
    string lists are lists. The spec's dtypes take the fast branches; any other kind goes to Feast's function.
    """
    if not blob:
        return None
    proto = ValueProto.FromString(blob)
    kind = proto.WhichOneof("val")
    if kind is None:
        return None
    if kind in _PLAIN:
        return getattr(proto, kind)
    if kind == "unix_timestamp_val":
        seconds = proto.unix_timestamp_val
        return None if seconds == _NULL_TIMESTAMP else datetime.fromtimestamp(seconds, tz=UTC)
    if kind == "string_list_val":
        return list(proto.string_list_val.val)
    return feast_value_type_to_python_type(proto)


def spec_converter(feature: spec.Feature) -> Callable[[Any], Any]:
    """:func:`pipelines.store.values.spec_value` of ``feature``, specialised for the values Feast's response holds
    (:func:`feast_value`, or an on-demand udf's output): nulls (``None``, NaN) take the default, timestamps become
    UTC (a naive one is UTC, as Feast transmits it) at whole seconds, everything else the spec's dtype."""
    cast, default = feature.caster(), feature.default
    if feature.dtype == "timestamp":
        def timestamp(v: Any) -> Any:
            if v is None:
                return default
            return cast(v.astimezone(UTC) if v.utcoffset() is not None else v.replace(tzinfo=UTC))

        return timestamp

    def value(v: Any) -> Any:
        if v is None or (v.__class__ is float and v != v):
            return default
        return cast(v)

    return value


def _entity_value(entity: spec.Entity, value: Any) -> ValueProto:
    """The join key's value proto, as Feast converts an entity row's value for the entity's value type."""
    if entity.dtype == "string":
        if not isinstance(value, str):
            raise TypeError(f"{entity.join_key} must be a str, got {value!r}")
        return ValueProto(string_val=value)
    if entity.dtype == "int64":
        return ValueProto(int64_val=int(value))
    raise ValueError(f"entity {entity.name!r}: join keys of dtype {entity.dtype!r} are not supported")


def _request_value(field: spec.RequestField, value: Any) -> Any:
    """A request field as Feast transmits it to the udfs: a timestamp as whole Unix seconds, back in UTC."""
    if field.dtype == "timestamp" and value is not None:
        spec.as_utc(value)
        # feast.type_map._python_datetime_to_int_timestamp, then feast_value_type_to_python_type (Feast 0.67.0)
        return datetime.fromtimestamp(int(value.timestamp()), tz=UTC)
    return value


# ------------------------------------------------------------------------------------------------ plans
@dataclass(frozen=True, slots=True)
class _ViewPlan:
    view: spec.FeatureView
    names: tuple[str, ...]
    position: dict[str, int]  # feature name -> position in names
    converters: tuple[Callable[[Any], Any], ...]
    cold: dict[str, Any]  # finalize_row({}): the row of an entity never written
    table: str  # SQLite: the quoted table name
    fields: list[bytes]  # Redis: the hash fields of the features, then the view's _ts field (never changed)


@dataclass(frozen=True, slots=True)
class _Plan:
    views: tuple[_ViewPlan, ...]
    entities: tuple[spec.Entity, ...]  # the distinct entities of the views, in first-seen order
    entity_of: tuple[int, ...]  # per view, its entity's index in entities
    sql: str


def _view_plan(project: str, view: spec.FeatureView) -> _ViewPlan:
    if not view.online:
        raise ValueError(f"view {view.name!r} is not online")
    names = view.feature_names
    # Feast 0.67.0 feast/infra/online_stores/sqlite.py _table_id -> helpers.compute_table_id (no versioning) and
    # _quote_id: the table of a view is "<project>_<view>", double-quoted
    table = '"' + f"{project}_{view.name}".replace('"', '""') + '"'
    # Feast 0.67.0 feast/infra/online_stores/redis.py _generate_hset_keys_for_features: a feature's hash field is
    # helpers._mmh3("<view>:<feature>"), the view's timestamp field "_ts:<view>"
    fields = [*(_mmh3(f"{view.name}:{n}") for n in names), f"_ts:{view.name}".encode()]
    return _ViewPlan(view=view, names=names, position={n: i for i, n in enumerate(names)},
                     converters=tuple(spec_converter(f) for f in view.features), cold=view.finalize_row({}),
                     table=table, fields=fields)


def _plan(project: str, views: Sequence[spec.FeatureView]) -> _Plan:
    entities: list[spec.Entity] = []
    for v in views:
        if v.entity not in entities:
            entities.append(v.entity)
    entity_of = tuple(entities.index(v.entity) for v in views)
    plans = tuple(_view_plan(project, v) for v in views)
    # one statement for every view: SELECT <view index>, feature_name, value, event_ts of each view table
    sql = " UNION ALL ".join(f"SELECT {i}, feature_name, value, event_ts FROM {p.table} WHERE entity_key = ?{e + 1}"
                             for i, (p, e) in enumerate(zip(plans, entity_of, strict=True)))
    return _Plan(views=plans, entities=tuple(entities), entity_of=entity_of, sql=sql)


# ------------------------------------------------------------------------------------------------ Redis
def _command_name(arg: Any) -> str:
    return arg.decode() if isinstance(arg, bytes) else str(arg)


class _TracedConnection(redis.Connection):
    """A redis-py connection that reports each send to ``trace``: the names of the commands it writes at once."""

    def __init__(self, *, trace: Trace | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._trace = trace
        self._sending: list[str] = []

    def pack_commands(self, commands: Any) -> Any:
        self._sending = [_command_name(args[0]) for args in commands]
        return super().pack_commands(commands)  # type: ignore[no-untyped-call]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._sending = [_command_name(args[0])]
        super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        names, self._sending = self._sending, []
        if self._trace is not None:
            self._trace(" ".join(names))
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class _TracedSSLConnection(_TracedConnection, redis.SSLConnection):
    pass


class _AsyncTracedConnection(aredis.Connection):
    """:class:`_TracedConnection` for ``redis.asyncio``."""

    def __init__(self, *, trace: Trace | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trace = trace
        self._sending: list[str] = []

    def pack_commands(self, commands: Any) -> Any:
        self._sending = [_command_name(args[0]) for args in commands]
        return super().pack_commands(commands)

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._sending = [_command_name(args[0])]
        await super().send_command(*args, **kwargs)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        names, self._sending = self._sending, []
        if self._trace is not None:
            self._trace(" ".join(names))
        await super().send_packed_command(command, check_health)


class _AsyncTracedSSLConnection(_AsyncTracedConnection, aredis.SSLConnection):
    pass


def _redis_pool(connection_string: str, trace: Trace | None, timeout: float | None = None, *,
                asynchronous: bool = False) -> Any:
    """A connection pool (``redis.asyncio``'s if ``asynchronous``) to the one server of ``connection_string``.

    Feast 0.67.0 RedisOnlineStore._parse_connection_string ("host:port,key=value,..."): Feast's own parser, so
    the reader connects where Feast writes, with the same options (db, password, ssl, ...)."""
    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
    if len(nodes) != 1:
        raise ValueError(f"one Redis server expected, got {connection_string!r}")
    params = dict(params)
    ssl = params.pop("ssl", False)
    params.pop("decode_responses", None)  # values are proto bytes
    if timeout is not None:  # a hung server must not hold a reading thread for long
        params.setdefault("socket_timeout", timeout)
        params.setdefault("socket_connect_timeout", timeout)
    if asynchronous:
        return aredis.ConnectionPool(connection_class=_AsyncTracedSSLConnection if ssl else _AsyncTracedConnection,
                                     host=nodes[0]["host"], port=int(nodes[0]["port"]), trace=trace, **params)
    return redis.ConnectionPool(connection_class=_TracedSSLConnection if ssl else _TracedConnection,
                                host=nodes[0]["host"], port=int(nodes[0]["port"]), trace=trace, **params)


def _decode_replies(replies: list[list[bytes | None]]) -> list[tuple[list[Any] | None, datetime | None]]:
    """Each HMGET reply (the features' blobs, then the view's ``_ts`` field) as values and the write time."""
    out: list[tuple[list[Any] | None, datetime | None]] = []
    for reply in replies:
        ts_blob = reply[-1]
        values = reply[:-1]
        if ts_blob is None and all(b is None for b in values):
            out.append((None, None))
        else:
            out.append(([feast_value(b) for b in values], None if ts_blob is None else _redis_ts(ts_blob)))
    return out


def _redis_ts(blob: bytes) -> datetime:
    # Feast 0.67.0 RedisOnlineStore._get_features_for_entity: "_ts:<view>" is a serialized Timestamp
    ts = Timestamp.FromString(blob)
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1_000_000_000.0, tz=UTC)


def _sqlite_ts(raw: Any) -> datetime:
    # Feast 0.67.0 sqlite.py: event_ts is written by adapt_datetime_epoch (int(naive_utc.timestamp()), which reads
    # the naive UTC time as local) and read by convert_timestamp (datetime.fromtimestamp(int(v)), local again),
    # then labelled UTC by online_read: the same two steps give back the UTC wall clock on any machine timezone
    return datetime.fromtimestamp(int(raw)).replace(tzinfo=UTC)  # noqa: DTZ006 - local on purpose, see above


# --------------------------------------------------------------------------------------------- the reader
class OnlineReader:
    """Reads stored views and computes feature vectors straight from Feast's online-store layout.

    Build it with :meth:`from_settings` (the generated repo's config, from settings alone) or
    :meth:`from_store` (a ``FeatureStore``'s config), or from a Feast ``RepoConfig``. ``trace`` is called for each
    request the drivers send to the store (see the module docstring). Close it with :meth:`close` (or use it
    as a context manager).
    """

    def __init__(self, config: RepoConfig, *, registry: Registry = REGISTRY, trace: Trace | None = None,
                 timeout: float | None = None) -> None:
        if feast.__version__ != FEAST_LAYOUT_VERSION:
            warnings.warn(f"serving.online mirrors Feast {FEAST_LAYOUT_VERSION}'s online-store layout, Feast is "
                          f"{feast.__version__}: run tests/integration/test_online_reader.py", stacklevel=2)
        if config.registry.enable_online_feature_view_versioning:
            raise ValueError("online feature-view versioning changes table and field names: not supported")
        self.project: str = config.project
        self.registry = registry
        self._key_version: int = config.entity_key_serialization_version
        self._project_bytes = self.project.encode("utf-8")
        self._trace = trace
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._udfs: dict[str, tuple[Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
                                    tuple[Callable[[Any], Any], ...]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        online = config.online_store
        kind = str(online.type)
        if kind == "sqlite" or kind.endswith("SqliteOnlineStore"):
            self.backend: Backend = "sqlite"
            # Feast 0.67.0 SqliteOnlineStore._get_db_path: a relative path is under the repo path
            path = Path(online.path)
            self._path = path if path.is_absolute() or not config.repo_path else Path(config.repo_path) / path
            self._local = threading.local()
            self._connections: list[sqlite3.Connection] = []
        elif kind == "redis" or kind.endswith("RedisOnlineStore"):
            if getattr(online, "redis_type", "redis") != "redis":  # RedisType is a str enum
                raise ValueError(f"redis_type {online.redis_type!r}: only a single Redis server is supported")
            self.backend = "redis"
            self._connection_string: str = online.connection_string
            self._timeout = timeout
            self._pool = _redis_pool(online.connection_string, trace, timeout)
            self._redis = redis.Redis(connection_pool=self._pool)
            self._apool: tuple[asyncio.AbstractEventLoop, aredis.ConnectionPool] | None = None
        else:
            raise ValueError(f"online store {kind!r}: only sqlite and redis are supported")

    @classmethod
    def from_settings(cls, settings: Settings, *, registry: Registry = REGISTRY, trace: Trace | None = None,
                      timeout: float | None = None) -> OnlineReader:
        """A reader of the online store the settings configure (the generated repo's ``feature_store.yaml``).
        ``timeout``: seconds a Redis read may take (:meth:`read`: per socket operation; :meth:`aread`: the whole
        read) before it fails."""
        return cls(repo_config(settings), registry=registry, trace=trace, timeout=timeout)

    @classmethod
    def from_store(cls, store: FeatureStore, *, registry: Registry = REGISTRY,
                   trace: Trace | None = None) -> OnlineReader:
        """A reader of the online store ``store`` writes (its ``RepoConfig``)."""
        return cls(store.config, registry=registry, trace=trace)

    # -- reads -----------------------------------------------------------------------------------------
    def read(self, what: spec.FeatureService | str | Sequence[spec.FeatureView],
             keys: KeyValues) -> dict[str, StoredRow]:
        """Every stored view of a service (its views and its on-demand views' sources), or the given views,
        for one entity: view name -> :class:`StoredRow`, in one round trip to the store.

        ``keys`` maps join keys to values (``{"user_id": "u1", "session_id": "s1"}``); each view reads its own.
        """
        plan, entity_keys = self._prepare(what, keys)
        fetched = self._fetch_sqlite(plan, entity_keys) if self.backend == "sqlite" else \
            self._fetch_redis(plan, entity_keys)
        return self._rows(plan, fetched)

    async def aread(self, what: spec.FeatureService | str | Sequence[spec.FeatureView],
                    keys: KeyValues) -> dict[str, StoredRow]:
        """:meth:`read` for an event loop: the same rows, in the same one round trip.

        On Redis the loop is never blocked: the request goes over an asyncio connection (``redis.asyncio``, a pool
        per event loop), and the whole read (connect, send, replies) is bounded by the reader's ``timeout``, after
        which it raises ``TimeoutError`` and the connection is dropped, never reused with a reply pending. On
        SQLite (a local file, well under a millisecond) it is :meth:`read`, run in place.
        """
        if self.backend == "sqlite":
            return self.read(what, keys)
        plan, entity_keys = self._prepare(what, keys)
        return self._rows(plan, await self._afetch_redis(plan, entity_keys))

    def _prepare(self, what: spec.FeatureService | str | Sequence[spec.FeatureView],
                 keys: KeyValues) -> tuple[_Plan, list[bytes]]:
        if self._closed:
            raise RuntimeError("the online reader is closed")
        plan = self._plan_of(what)
        entity_keys = []
        for entity in plan.entities:
            try:
                value = keys[entity.join_key]
            except KeyError:
                raise KeyError(f"no {entity.join_key!r} among the keys {sorted(keys)}") from None
            # Feast 0.67.0 key_encoding_utils.serialize_entity_key, at the repo's serialization version
            entity_keys.append(serialize_entity_key(
                EntityKey(join_keys=[entity.join_key], entity_values=[_entity_value(entity, value)]),
                entity_key_serialization_version=self._key_version))
        return plan, entity_keys

    @staticmethod
    def _rows(plan: _Plan, fetched: list[tuple[list[Any] | None, datetime | None]]) -> dict[str, StoredRow]:
        out: dict[str, StoredRow] = {}
        for p, (raw, ts) in zip(plan.views, fetched, strict=True):
            if raw is None:  # never written: the cold-start row
                out[p.view.name] = StoredRow(values=dict(p.cold), feast_values=dict.fromkeys(p.names), event_ts=None)
            else:
                out[p.view.name] = StoredRow(
                    values={n: conv(v) for n, conv, v in zip(p.names, p.converters, raw, strict=True)},
                    feast_values=dict(zip(p.names, raw, strict=True)), event_ts=ts)
        return out

    def feature_vector(self, service: spec.FeatureService | str, keys: KeyValues, *,
                       request_time: datetime | None = None,
                       request: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The service's features, stored and on-demand, in service order: what ``read_online`` (Feast's
        ``get_online_features``) returns for the entity row ``{**keys, "request_time": request_time}``.

        One round trip (:meth:`read`), then :meth:`compute_vector`. ``request_time`` defaults to now (UTC).
        """
        svc = self._service(service)
        return self.compute_vector(svc, self.read(svc, keys), request_time=request_time, request=request)

    def compute_vector(self, service: spec.FeatureService | str, rows: Mapping[str, StoredRow], *,
                       request_time: datetime | None = None,
                       request: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """:meth:`feature_vector` from rows already read (``read(service, keys)``): no I/O.

        On-demand views run the udf Feast runs (:func:`pipelines.store.on_demand.on_demand_udf`, so
        ``evaluate_on_demand`` treats nulls and cold starts as in Feast), on the stored values as Feast's response
        holds them and the request fields as Feast transmits them; their outputs are typed as ``read_online``
        types Feast's. ``request`` holds request fields other than ``request_time`` (none today).
        """
        svc = self._service(service)
        out: dict[str, Any] = {}
        fields: dict[str, Any] | None = None
        for v in svc.views:
            if isinstance(v, spec.FeatureView):
                out.update(rows[v.name].values)
                continue
            if fields is None:
                fields = self._request_fields(svc, request_time, request)
            udf, converters = self._udf(v)
            inputs: dict[str, list[Any]] = {}
            for source in v.sources:
                for name, value in rows[source.name].feast_values.items():
                    inputs[name] = [value]
            for r in v.request_fields:
                inputs[r.name] = [fields[r.name]]
            result = udf(inputs)
            for f, conv in zip(v.features, converters, strict=True):
                out[f.name] = conv(result[f.name][0])
        return out

    @staticmethod
    def _request_fields(service: spec.FeatureService, request_time: datetime | None,
                        request: Mapping[str, Any] | None) -> dict[str, Any]:
        given = {spec.REQUEST_TIME.name: request_time or datetime.now(UTC), **(request or {})}
        out: dict[str, Any] = {}
        for o in service.views:
            for r in o.request_fields if isinstance(o, spec.OnDemandView) else ():
                if r.name not in given:
                    raise KeyError(f"{service.name} needs the request field {r.name!r}")
                out[r.name] = _request_value(r, given[r.name])
        return out

    # -- the two stores ----------------------------------------------------------------------------------
    def _fetch_sqlite(self, plan: _Plan, entity_keys: list[bytes]) -> list[tuple[list[Any] | None, datetime | None]]:
        rows = self._sqlite().execute(plan.sql, entity_keys).fetchall()
        raws: list[list[Any] | None] = [None] * len(plan.views)
        latest: list[Any] = [None] * len(plan.views)
        for i, name, blob, ts in rows:
            raw = raws[i]
            if raw is None:
                raw = raws[i] = [None] * len(plan.views[i].names)
            j = plan.views[i].position.get(name)
            if j is not None:  # a feature no longer in the spec may still have rows: not read
                raw[j] = feast_value(blob)
            if ts is not None and (latest[i] is None or ts > latest[i]):
                latest[i] = ts
        return [(raw, None if ts is None else _sqlite_ts(ts)) for raw, ts in zip(raws, latest, strict=True)]

    def _redis_commands(self, plan: _Plan, entity_keys: list[bytes]) -> list[tuple[bytes | str, ...]]:
        # Feast 0.67.0 helpers._redis_key: the hash of an entity is its serialized key, then the project's bytes
        return [("HMGET", entity_keys[e] + self._project_bytes, *p.fields)
                for e, p in zip(plan.entity_of, plan.views, strict=True)]

    def _fetch_redis(self, plan: _Plan, entity_keys: list[bytes]) -> list[tuple[list[Any] | None, datetime | None]]:
        # one send of every HMGET and their replies in order, on a pooled connection: what a pipeline without a
        # transaction does, without building a Pipeline object per read (a measurable share of a read)
        commands = self._redis_commands(plan, entity_keys)
        conn = self._pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            replies = [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()  # never hand back a connection with replies pending
            raise
        finally:
            self._pool.release(conn)
        return _decode_replies(replies)

    async def _afetch_redis(self, plan: _Plan, entity_keys: list[bytes]
                            ) -> list[tuple[list[Any] | None, datetime | None]]:
        commands = self._redis_commands(plan, entity_keys)
        pool = self._async_pool()
        conn: aredis.Connection | None = None
        try:
            # the budget covers taking a connection too: a new one connects and says hello, which a stalled
            # server holds like any command
            async with asyncio.timeout(self._timeout):
                conn = await pool.get_connection()  # type: ignore[no-untyped-call]
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                replies = [await conn.read_response() for _ in commands]
        except BaseException:
            if conn is not None:
                await conn.disconnect(nowait=True)
            raise
        finally:
            if conn is not None:
                await pool.release(conn)
        return _decode_replies(replies)

    def _async_pool(self) -> aredis.ConnectionPool:
        loop = asyncio.get_running_loop()
        if self._apool is None or self._apool[0] is not loop:  # asyncio connections belong to one loop
            self._apool = (loop, _redis_pool(self._connection_string, self._trace, None, asynchronous=True))
        return self._apool[1]

    def _sqlite(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = self._open_sqlite()
            local.conn, local.pid = conn, os.getpid()
        return conn

    def _open_sqlite(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise RuntimeError("the online reader is closed")
            if not self._path.exists():
                raise FileNotFoundError(f"no online store at {self._path}: apply the Feast repo first (kairos apply)")
            # read-only; not bound to the thread so close() can close it from another one (it is used by one)
            conn = sqlite3.connect(self._path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
            if self._trace is not None:
                conn.set_trace_callback(self._trace)
            self._connections.append(conn)
            return conn

    # -- plans and udfs --------------------------------------------------------------------------------
    def _service(self, service: spec.FeatureService | str) -> spec.FeatureService:
        return self.registry.service(service) if isinstance(service, str) else service

    def _plan_of(self, what: spec.FeatureService | str | Sequence[spec.FeatureView]) -> _Plan:
        views = self._service(what).stored_views if isinstance(what, spec.FeatureService | str) else tuple(what)
        if not views:
            raise ValueError("nothing to read: no stored views")
        key = tuple(v.name for v in views)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _plan(self.project, views)
        return plan

    def _udf(self, odv: spec.OnDemandView) -> tuple[Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
                                                     tuple[Callable[[Any], Any], ...]]:
        got = self._udfs.get(odv.name)
        if got is None:
            udf, _source = on_demand_udf(odv)  # the function the generated Feast repo registers for the view
            got = self._udfs[odv.name] = (udf, tuple(spec_converter(f) for f in odv.features))
        return got

    # -- lifetime --------------------------------------------------------------------------------------
    def ping(self) -> bool:
        """Whether the store answers (a readiness check): one round trip, ``SELECT 1`` or ``PING``; never raises."""
        try:
            if self._closed:
                return False
            if self.backend == "sqlite":
                return bool(self._sqlite().execute("SELECT 1").fetchone() == (1,))
            return bool(self._redis.ping())
        except Exception:
            return False

    def close(self) -> None:
        """Close every connection (each thread's SQLite connection, the Redis pool)."""
        with self._lock:
            self._closed = True
            if self.backend == "sqlite":
                for conn in self._connections:
                    conn.close()
                self._connections.clear()
            else:
                self._pool.disconnect()
                self._apool = None  # its connections close with their event loop (or: await aclose() first)

    async def aclose(self) -> None:
        """Close the asyncio connections of this event loop's pool, then everything :meth:`close` closes."""
        if self.backend == "redis" and self._apool is not None and self._apool[0] is asyncio.get_running_loop():
            await self._apool[1].disconnect()
        self.close()

    def __enter__(self) -> OnlineReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
