"""The Feast repo, generated from the specs.

Entities, batch sources, push sources, feature views, on-demand feature views and
feature services are all built here from :data:`features.registry.REGISTRY`;
``feast apply`` never sees a hand-written copy. The repo folder that
:func:`write_repo` produces holds only ``feature_store.yaml`` (rendered from the
settings) and one ``definitions.py`` that asks this module for the objects, so the
Feast CLI works on it unchanged::

    python -m pipelines.feast_repo apply        # or: cd var/data/feature_repo && feast apply

Offline tables (written by the engines) live at ``settings.offline_path/<view>/``
with the view's join key, ``event_timestamp``, ``created_timestamp`` and one
column per feature, timestamps in microseconds UTC. With ``offline_store.type:
spark`` the batch sources are Feast ``SparkSource``\\ s over the same parquet
(pruned by the ``event_date`` partitions the Spark engine writes), else
``FileSource``\\ s.

On-demand views
---------------
Each on-demand view's transformation is Python source generated from its spec
(:func:`on_demand_source`): the spec's expressions, request fields and the cold-start
rows of its source views, written as constructor calls, plus a call to
:func:`evaluate_on_demand`. The same text is the in-process udf (it is executed
here) and the ``udf_string`` Feast stores, because Feast 0.67 rebuilds a python
udf from that text first (``feast.transformation.udf_rehydrate``) and falls back
to the dill body only when the text does not define a function; it also diffs
transformations by that text alone, so a changed expression is a changed view.
"""

from __future__ import annotations

import argparse
import dataclasses
import pprint
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import FunctionType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, PushSource, RequestSource
from feast.data_source import DataSource
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.transformation.python_transformation import PythonTransformation
from feast.types import Array, Bool, Float64, Int64, String, UnixTimestamp

from conf.settings import Settings, load_settings
from features import spec
from features.registry import REGISTRY, Registry

EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
PARTITION = "event_date"  # the Spark engine's day partitions of each offline table (UTC date of event_timestamp)

FEAST_TYPES: dict[str, Any] = {
    "int64": Int64,
    "float64": Float64,
    "string": String,
    "bool": Bool,
    "timestamp": UnixTimestamp,
    "array<string>": Array(String),
}
ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "array<string>": pa.list_(pa.string()),
}


# ------------------------------------------------------------------------------------------- config
def store_config(settings: Settings) -> dict[str, Any]:
    """The ``feature_store.yaml`` content, from settings alone."""
    online: dict[str, Any]
    if settings.online_store.type == "redis":
        if not settings.online_store.connection_string:
            raise ValueError("online_store.connection_string is required when online_store.type is redis")
        online = {"type": "redis", "connection_string": settings.online_store.connection_string}
    else:
        online = {"type": "sqlite", "path": str(settings.online_store_path)}
    offline: dict[str, Any]
    if settings.offline_store.type == "spark":
        offline = {"type": "spark", "spark_conf": {
            "spark.master": settings.spark.master,
            "spark.app.name": settings.spark.app_name,
            "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
            "spark.driver.memory": settings.spark.driver_memory,
            "spark.sql.session.timeZone": "UTC",
            **settings.spark.conf,
        }}
    else:
        offline = {"type": "file"}
    return {
        "project": settings.project,
        "registry": str(settings.data_path / "registry.db"),
        "provider": "local",
        "offline_store": offline,
        "online_store": online,
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: Settings) -> RepoConfig:
    return RepoConfig(repo_path=settings.feature_repo_path, **store_config(settings))


# ------------------------------------------------------------------------------------------- objects
def offline_table_path(settings: Settings, view: spec.FeatureView) -> Path:
    return settings.offline_path / view.name


def offline_schema(view: spec.FeatureView) -> pa.Schema:
    """The Arrow schema of a view's offline table: keys, timestamps and the spec's features."""
    return pa.schema([
        pa.field(view.entity.join_key, ARROW_TYPES[view.entity.dtype]),
        pa.field(EVENT_TIMESTAMP, ARROW_TYPES["timestamp"]),
        pa.field(CREATED_TIMESTAMP, ARROW_TYPES["timestamp"]),
        *(pa.field(f.name, ARROW_TYPES[f.dtype]) for f in view.features),
    ])


def _field(f: spec.Feature, tags: Mapping[str, str]) -> Field:
    return Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.description, tags=dict(tags))


def batch_source(settings: Settings, view: spec.FeatureView) -> DataSource:
    """The view's offline table as a Feast batch source of the configured offline store."""
    common: dict[str, Any] = {
        "name": f"{view.name}_offline",
        "path": str(offline_table_path(settings, view)),
        "timestamp_field": EVENT_TIMESTAMP,
        "created_timestamp_column": CREATED_TIMESTAMP,
        "description": f"Offline table of {view.name}: one row per key and change point, written by the engines",
        "owner": view.owner,
    }
    if settings.offline_store.type == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        with warnings.catch_warnings():  # "experimental": it is what Feast's Spark offline store reads
            warnings.filterwarnings("ignore", message="The spark data source API is an experimental feature")
            return SparkSource(file_format="parquet", date_partition_column=PARTITION,
                               date_partition_column_format="%Y-%m-%d", **common)
    return FileSource(**common)


# ------------------------------------------------------------------------------------------- on demand
def _cold_inputs(odv: spec.OnDemandView) -> dict[str, dict[str, Any]]:
    """Per source view, what the reference reads for an unseen entity: ``finalize_row({})``."""
    return {v.name: v.finalize_row({}) for v in odv.sources}


def _served(odv: spec.OnDemandView) -> spec.OnDemandView:
    """What the udf needs of the spec: all but the source views (their cold rows and defaults go separately)."""
    return dataclasses.replace(odv, sources=())


def _classes(value: Any) -> set[type]:
    """Every dataclass type inside ``value`` (spec objects and expression nodes), for the generated imports."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: set[type] = {type(value)}
        for f in dataclasses.fields(value):
            out |= _classes(getattr(value, f.name))
        return out
    if isinstance(value, tuple | list | set | frozenset):
        return set().union(*(_classes(v) for v in value))
    if isinstance(value, Mapping):
        return set().union(*(_classes(v) for v in value.values()))
    return set()


def _imports(value: Any) -> str:
    by_module: dict[str, set[str]] = {}
    for cls in _classes(value):
        by_module.setdefault(cls.__module__, set()).add(cls.__qualname__)
    return "\n".join(f"from {m} import {', '.join(sorted(names))}" for m, names in sorted(by_module.items()))


UDF_TEMPLATE = '''\
# Generated by pipelines.feast_repo from the Kairos spec of on-demand view {name!r}. Do not edit.
{imports}

VIEW = OnDemandView(
    name={name!r},
    sources=(),
    request_fields=({request}
    ),
    features=({features}
    ),
    description={description!r},
    owner={owner!r},
)
COLD = {cold!r}
DEFAULTS = {defaults!r}


def {func}(inputs):
    from pipelines.feast_repo import evaluate_on_demand

    return evaluate_on_demand(VIEW, COLD, DEFAULTS, inputs)
'''


def on_demand_source(odv: spec.OnDemandView) -> str:
    """Python source of the on-demand view's udf, generated from its spec.

    Module level holds the spec's request fields and features (constructor calls,
    exactly as declared) and the cold-start rows and defaults of the source views;
    the function evaluates them row by row with :func:`evaluate_on_demand`.
    """
    served = _served(odv)
    return UDF_TEMPLATE.format(
        name=odv.name, imports=_imports(served), description=odv.description, owner=odv.owner,
        request="".join(f"\n        {r!r}," for r in served.request_fields),
        features="".join(f"\n        {f!r}," for f in served.features),
        cold=_cold_inputs(odv), defaults={f.name: f.default for v in odv.sources for f in v.features},
        func=_udf_name(odv))


def _udf_name(odv: spec.OnDemandView) -> str:
    return f"{odv.name}_transform"


def on_demand_udf(odv: spec.OnDemandView) -> tuple[FunctionType, str]:
    """The udf and its source text: the function is the text, executed here.

    Executing the text also checks that every spec value in it reads back equal to
    the spec, so the udf a Feast server rebuilds from the registry computes what
    this process computes.
    """
    source = on_demand_source(odv)
    namespace: dict[str, Any] = {"__name__": f"kairos_on_demand_{odv.name}"}  # not importable: dill keeps the body
    try:
        exec(compile(source, f"<on-demand view {odv.name}>", "exec"), namespace)  # our own generated text
    except Exception as e:  # a value whose repr is not Python (nan, a custom object): say which view
        raise ValueError(f"on-demand view {odv.name!r}: the spec does not survive its generated source: {e}") from e
    if namespace["VIEW"] != _served(odv):
        raise ValueError(f"on-demand view {odv.name!r}: the spec does not survive its generated source")
    if namespace["COLD"] != _cold_inputs(odv):
        raise ValueError(f"on-demand view {odv.name!r}: cold-start rows do not survive their generated source")
    udf: FunctionType = namespace[_udf_name(odv)]
    return udf, source


def _null(v: Any) -> bool:
    """None, NaN, NaT or NA: a missing scalar (lists and strings are values)."""
    if v is None:
        return True
    if isinstance(v, str | bytes) or hasattr(v, "__len__"):
        return False
    return bool(pd.isna(v))


def evaluate_on_demand(view: spec.OnDemandView, cold: Mapping[str, Mapping[str, Any]],
                       defaults: Mapping[str, Any], inputs: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """Feast's python-mode call: columns in, the view's features out, one :meth:`OnDemandView.compute` per row.

    A source view with every feature null is an entity the online store has never
    seen: it reads as the view's cold-start row, as in the reference. Any other null
    input takes its feature's default. NaN and NaT (offline joins) count as null.
    """
    n = len(next(iter(inputs.values()))) if inputs else 0
    out: dict[str, list[Any]] = {f.name: [] for f in view.features}
    for i in range(n):
        row = {k: (None if _null(v[i]) else v[i]) for k, v in inputs.items()}
        for source_row in cold.values():
            if all(row.get(k) is None for k in source_row):
                row.update(source_row)
        for k, default in defaults.items():
            if row.get(k) is None:
                row[k] = default
        for k, value in view.compute(row).items():
            out[k].append(value)
    return out


def on_demand_view(odv: spec.OnDemandView, views: Mapping[str, FeatureView]) -> OnDemandFeatureView:
    request = RequestSource(name=f"{odv.name}_request",
                            schema=[Field(name=r.name, dtype=FEAST_TYPES[r.dtype], description=r.description)
                                    for r in odv.request_fields])
    udf, source = on_demand_udf(odv)
    return OnDemandFeatureView(
        name=odv.name,
        sources=[*(views[s.name] for s in odv.sources), request],
        # Feast checks these against fields it infers from a trial run (name, dtype, description and tags
        # compared), and its registry keeps only names and dtypes of on-demand outputs: their documentation
        # stays in the spec (and in the generated udf source).
        schema=[Field(name=f.name, dtype=FEAST_TYPES[f.dtype]) for f in odv.features],
        feature_transformation=PythonTransformation(udf=udf, udf_string=source),
        mode="python",
        description=odv.description,
        owner=odv.owner,
        tags={"on_demand": "true", "request_fields": ",".join(r.name for r in odv.request_fields)},
    )


# ------------------------------------------------------------------------------------------- all objects
def feast_objects(settings: Settings, registry: Registry = REGISTRY) -> list[Any]:
    """Every Feast object, generated from the specs."""
    entities = {e.name: Entity(name=e.name, join_keys=[e.join_key], value_type=FEAST_TYPES[e.dtype].to_value_type(),
                               description=e.description) for e in registry.entities}
    objects: list[Any] = list(entities.values())
    views: dict[str, FeatureView] = {}
    for v in registry.views:
        batch = batch_source(settings, v)
        push = PushSource(name=f"{v.name}_push", batch_source=batch,
                          description=f"Stream writes of {v.name} (source topic {v.source.stream_topic})")
        fv = FeatureView(
            name=v.name,
            entities=[entities[v.entity.name]],
            ttl=v.ttl,
            schema=[_field(f, v.tags_of(f)) for f in v.features],
            source=push,
            online=v.online,
            description=v.description,
            owner=v.owner,
            tags={**v.tags, "source": v.source.name, "batch_table": v.source.batch_table,
                  "stream_topic": v.source.stream_topic},
        )
        views[v.name] = fv
        objects += [batch, push, fv]
    odfvs = {o.name: on_demand_view(o, views) for o in registry.on_demand_views}
    for odfv in odfvs.values():  # Feast registers request sources as data sources of their own
        objects += [*odfv.source_request_sources.values(), odfv]
    for s in registry.services:
        objects.append(FeatureService(
            name=s.name,
            features=[views[v.name] if isinstance(v, spec.FeatureView) else odfvs[v.name] for v in s.views],
            description=s.description, owner=s.owner, tags=dict(s.tags)))
    return objects


# ------------------------------------------------------------------------------------------- repo
DEFINITIONS_TEMPLATE = '''\
"""Generated by pipelines.feast_repo from the specs in features/. Do not edit: regenerate.

`feast apply` registers the module globals below, built with the settings the repo was written with.
"""
from pipelines.feast_repo import definitions

SETTINGS = {settings}

globals().update(definitions(SETTINGS))
'''


def _settings_overrides(settings: Settings) -> dict[str, Any]:
    """What :func:`feast_objects` and the store depend on, as ``load_settings`` keywords (Python literals)."""
    out: dict[str, Any] = settings.model_dump(mode="json", include={"project", "online_store", "offline_store",
                                                                      "spark"})
    out["data_dir"] = str(settings.data_path)
    out["online_store"]["path"] = str(settings.online_store_path)
    return out


def definitions(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The generated objects as module globals for ``definitions.py`` (named ``<kind>_<name>``)."""
    objects = feast_objects(load_settings(**overrides))
    return {f"{type(o).__name__.lower()}_{o.name}": o for o in objects}


def write_repo(settings: Settings) -> Path:
    """A Feast repo folder holding only definitions: feature_store.yaml and definitions.py."""
    repo = settings.feature_repo_path
    repo.mkdir(parents=True, exist_ok=True)
    for stale in repo.glob("*.py"):
        stale.unlink()
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(store_config(settings), sort_keys=False))
    overrides = pprint.pformat(_settings_overrides(settings), width=100, sort_dicts=True)
    (repo / "definitions.py").write_text(DEFINITIONS_TEMPLATE.format(settings=overrides))
    # the `feast apply` CLI reads every batch source's schema (a Spark session for SparkSources; pass
    # --skip-source-validation to avoid it), and materialize reads them too: each table must exist
    for v in REGISTRY.views:
        ensure_offline_table(settings, v)
    return repo


def ensure_offline_table(settings: Settings, view: spec.FeatureView) -> Path:
    """An empty table (in a partition of its own, so engines' partition overwrites never meet it)."""
    path = offline_table_path(settings, view)
    if not path.exists() or not any(path.rglob("*.parquet")):
        empty = path / f"{PARTITION}=1970-01-01"
        empty.mkdir(parents=True, exist_ok=True)
        pq.write_table(offline_schema(view).empty_table(), empty / "empty.parquet", coerce_timestamps="us")
    return path


def feature_store(settings: Settings) -> FeatureStore:
    """The store of the generated repo (written if needed); nothing is registered."""
    write_repo(settings)
    return FeatureStore(repo_path=str(settings.feature_repo_path))


def _registered(store: FeatureStore) -> list[Any]:
    return [*store.list_feature_services(), *store.list_on_demand_feature_views(), *store.list_feature_views(),
            *store.list_entities(), *store.list_data_sources()]


def _identity(o: Any) -> tuple[str, str]:
    """Kind and name: what makes two registry objects the same object (a FileSource may become a SparkSource)."""
    for kind in (DataSource, Entity, OnDemandFeatureView, FeatureView, FeatureService):
        if isinstance(o, kind):
            return kind.__name__, o.name
    raise TypeError(f"not a generated Feast object: {o!r}")


def apply(settings: Settings) -> FeatureStore:
    """Write the repo and register every generated object, removing registered objects the specs no longer have.

    That is what ``feast apply`` does with the repo folder, through the SDK.
    """
    store = feature_store(settings)
    objects = feast_objects(settings)
    wanted = {_identity(o) for o in objects}
    stale = [o for o in _registered(store) if _identity(o) not in wanted]
    with warnings.catch_warnings():  # on-demand views are used on purpose, for request-time features
        warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
        store.apply(objects, objects_to_delete=stale, partial=not stale)
    return store


# ------------------------------------------------------------------------------------------- online I/O
def to_frame(view: spec.FeatureView, rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (join key, event_timestamp, features) to a frame with the spec's dtypes.

    ``created_timestamp`` defaults to ``event_timestamp``; timestamps must be
    timezone-aware (UTC); feature values take the spec's types (:meth:`Feature.cast`,
    so timestamps are whole seconds, as Feast stores them); missing ones are null.
    """
    schema = offline_schema(view)
    records = []
    for r in rows:
        record = {n: r.get(n) for n in schema.names}
        if record[view.entity.join_key] is None:
            raise ValueError(f"{view.name}: a row without {view.entity.join_key!r}: {dict(r)!r}")
        if record[EVENT_TIMESTAMP] is None:
            raise ValueError(f"{view.name}: a row without {EVENT_TIMESTAMP!r}: {dict(r)!r}")
        if record[CREATED_TIMESTAMP] is None:
            record[CREATED_TIMESTAMP] = record[EVENT_TIMESTAMP]
        for name in (EVENT_TIMESTAMP, CREATED_TIMESTAMP):
            ts = record[name]
            if not isinstance(ts, datetime):
                raise TypeError(f"{view.name}: {name} must be a datetime, got {ts!r}")
            spec.as_utc(ts)
        for f in view.features:
            value = record[f.name]
            record[f.name] = None if _null(value) else f.cast(value)
        records.append(record)
    table = pa.Table.from_pylist(records, schema=schema)
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def write_online(store: FeatureStore, view: spec.FeatureView, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write feature rows through Feast's own online-write API; returns the number of rows."""
    df = to_frame(view, rows)
    if not df.empty:
        store.write_to_online_store(feature_view_name=view.name, df=df)
    return len(df)


_NAT = np.datetime64("NaT")


def write_online_rows(store: FeatureStore, view: spec.FeatureView, rows: Sequence[Mapping[str, Any]]) -> int:
    """:func:`write_online` without the frame: rows (join key, ``event_timestamp``, spec-typed features) go
    straight to Feast's value protos and its provider's ``online_write_batch``, as ``write_to_online_store``
    does after converting a frame. For the stream, where Feast's conversions were most of the cost per row.

    A row may carry only some of the view's features: the others are left as the store holds them (the
    stream writes what changed since a key's previous write; Feast's online stores keep each feature apart,
    SQLite one row per feature, Redis one hash field). ``created_timestamp`` is the event timestamp; values
    take the spec's types (:meth:`Feature.cast`).
    """
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values

    if not rows:
        return 0
    fv = store.get_feature_view(view.name)
    join_key = view.entity.join_key
    keys = [r[join_key] for r in rows]
    if any(k is None for k in keys):
        raise ValueError(f"{view.name}: a row without {join_key!r}")
    stamps = [r[EVENT_TIMESTAMP] for r in rows]
    for ts in stamps:
        if not isinstance(ts, datetime):
            raise TypeError(f"{view.name}: {EVENT_TIMESTAMP} must be a datetime, got {ts!r}")
        spec.as_utc(ts)
    features = {f.name: f for f in view.features}
    protos: list[dict[str, Any]] = [{} for _ in rows]
    for field in fv.features:  # one conversion per feature, over the rows that carry it
        f = features[field.name]
        null = _NAT if f.dtype == "timestamp" else None  # a null timestamp as a frame gives it (Feast stores NaT)
        having = [i for i, r in enumerate(rows) if f.name in r]
        if not having:
            continue
        values = [null if _null(v) else f.cast(v) for v in (rows[i][f.name] for i in having)]
        for i, proto in zip(having, python_values_to_proto_values(values, field.dtype.to_value_type()), strict=True):
            protos[i][f.name] = proto
    key_type = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}[join_key]
    entity_values = python_values_to_proto_values(keys, key_type)
    data = [(EntityKey(join_keys=[join_key], entity_values=[entity_values[i]]), protos[i], stamps[i], stamps[i])
            for i in range(len(rows)) if protos[i]]
    store._get_provider().online_write_batch(store.config, fv, data, progress=None)
    return len(data)


FeatureSelection = spec.FeatureService | str | Sequence[str]


def _selection(store: FeatureStore, what: FeatureSelection, registry: Registry) -> tuple[Any, list[spec.Feature]]:
    """Feast's ``features`` argument and the spec features it returns, in order."""
    if isinstance(what, spec.FeatureService):
        what = what.name
    if isinstance(what, str) and ":" not in what:
        service = registry.service(what)
        return store.get_feature_service(service.name), [f for v in service.views for f in v.features]
    refs = [what] if isinstance(what, str) else list(what)
    return refs, [registry.feature(r.split(":", 1)[1]) for r in refs]


def read_online(store: FeatureStore, features: FeatureSelection, entity_rows: Sequence[Mapping[str, Any]],
                registry: Registry = REGISTRY) -> list[dict[str, Any]]:
    """Read through Feast's ``get_online_features``; one dict of spec-typed values per entity row.

    ``features`` is a spec feature service, a service name, or ``view:feature``
    references. Entity rows carry join keys and request fields (``request_time``,
    a timezone-aware datetime). Values missing online (cold start) come back as the
    spec's defaults, so a caller sees exactly what the reference would compute;
    timestamps are timezone-aware UTC.
    """
    feast_features, specs = _selection(store, features, registry)
    resp = store.get_online_features(features=feast_features, entity_rows=[dict(r) for r in entity_rows]).to_dict()
    return [{f.name: spec_value(f, resp[f.name][i]) for f in specs} for i in range(len(entity_rows))]


def spec_value(feature: spec.Feature, value: Any) -> Any:
    """A value as Feast returns it (online dicts, historical frames) as the spec has it.

    Nulls (None, NaN, NaT, NA) take the feature's default; timestamps become
    timezone-aware UTC datetimes (naive ones are UTC, as Spark returns them);
    arrays become lists; numbers the spec's int or float.
    """
    if _null(value):
        return feature.cast(None)
    if feature.dtype == "timestamp":
        ts = pd.Timestamp(value)
        value = (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
    elif feature.dtype == "array<string>":
        value = list(value)
    return feature.cast(value)


# ------------------------------------------------------------------------------------------- CLI
def describe(store: FeatureStore) -> list[str]:
    """One line per kind of registered object."""
    kinds: list[tuple[str, Callable[[], list[Any]]]] = [
        ("entities", store.list_entities), ("data sources", store.list_data_sources),
        ("feature views", store.list_feature_views), ("on-demand feature views", store.list_on_demand_feature_views),
        ("feature services", store.list_feature_services)]
    return [f"{len(objs)} {kind}: {', '.join(sorted(o.name for o in objs))}"
            for kind, objs in ((k, list_()) for k, list_ in kinds)]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipelines.feast_repo",
                                description="Generate the Feast repo from the specs")
    p.add_argument("command", choices=["apply", "write"], help="write the repo folder, or write it and apply it")
    a = p.parse_args(argv)
    settings = load_settings()
    repo = write_repo(settings)
    print(f"feast repo: {repo}")
    if a.command == "write":
        return
    store = apply(settings)
    print(f"registry: {store.config.registry.path}  online store: {settings.online_store.type}  "
          f"offline store: {settings.offline_store.type}")
    for line in describe(store):
        print(f"  {line}")


if __name__ == "__main__":
    main()
