"""The Feast repo, generated from the specs.

Entities, batch sources, push sources, feature views, on-demand feature views and
feature services are all built here from :data:`features.registry.REGISTRY`;
``feast apply`` never sees a hand-written copy. The repo folder that
:func:`write_repo` produces holds only ``feature_store.yaml`` (rendered from the
settings) and one ``definitions.py`` that asks this module for the objects, so the
Feast CLI works on it unchanged::

    python -m pipelines.feast_repo apply        # or: feast -c var/data/feature_repo apply

Offline tables (written by the engines) live at ``settings.offline_path/<view>/``
with the view's join key, ``event_timestamp``, ``created_timestamp`` and one
column per feature, timestamps in microseconds UTC.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, PushSource, RequestSource
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.transformation.python_transformation import PythonTransformation
from feast.types import Array, Bool, Float64, Int64, String, UnixTimestamp
from feast.value_type import ValueType

from conf.settings import Settings, load_settings
from features import spec
from features.registry import REGISTRY, Registry

log = logging.getLogger(__name__)

EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"

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
        pa.field(view.entity.join_key, pa.string()),
        pa.field(EVENT_TIMESTAMP, ARROW_TYPES["timestamp"]),
        pa.field(CREATED_TIMESTAMP, ARROW_TYPES["timestamp"]),
        *(pa.field(f.name, ARROW_TYPES[f.dtype]) for f in view.features),
    ])


def _field(f: spec.Feature, tags: Mapping[str, str]) -> Field:
    return Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.description, tags=dict(tags))


def _odfv_udf(odv_name: str) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
    """A python-mode transformation evaluating the spec's expressions row by row.

    Inputs missing from the online store (cold start) arrive as null and take the
    source features' defaults first, exactly as the reference sees them.
    """

    def transform(inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
        from features.registry import REGISTRY as _REGISTRY

        odv = _REGISTRY.on_demand_view(odv_name)
        defaults = {f.name: f.default for v in odv.sources for f in v.features}
        n = len(next(iter(inputs.values()))) if inputs else 0
        out: dict[str, list[Any]] = {f.name: [] for f in odv.features}
        for i in range(n):
            row = {k: (v[i] if v[i] is not None else defaults.get(k)) for k, v in inputs.items()}
            for k, v in odv.compute(row).items():
                out[k].append(v)
        return out

    transform.__name__ = f"{odv_name}_transform"
    return transform


def feast_objects(settings: Settings, registry: Registry = REGISTRY) -> list[Any]:
    """Every Feast object, generated from the specs."""
    entities = {e.name: Entity(name=e.name, join_keys=[e.join_key], value_type=ValueType.STRING,
                               description=e.description) for e in registry.entities}
    objects: list[Any] = list(entities.values())
    views: dict[str, FeatureView] = {}
    for v in registry.views:
        batch = FileSource(
            name=f"{v.name}_offline",
            path=str(offline_table_path(settings, v)),
            timestamp_field=EVENT_TIMESTAMP,
            created_timestamp_column=CREATED_TIMESTAMP,
            description=f"Offline table of {v.name}, written by the Spark engine",
        )
        push = PushSource(name=f"{v.name}_push", batch_source=batch,
                          description=f"Stream writes of {v.name} (Bytewax engine); source topic "
                                      f"{v.source.stream_topic}")
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
    odfvs: dict[str, OnDemandFeatureView] = {}
    for o in registry.on_demand_views:
        request = RequestSource(name=f"{o.name}_request",
                                schema=[Field(name=r.name, dtype=FEAST_TYPES[r.dtype]) for r in o.request_fields])
        udf = _odfv_udf(o.name)
        odfv = OnDemandFeatureView(
            name=o.name,
            sources=[*(views[s.name] for s in o.sources), request],
            # Feast compares these with fields inferred from a trial run, description and tags included,
            # so on-demand outputs carry name and dtype only; their documentation stays in the spec.
            schema=[Field(name=f.name, dtype=FEAST_TYPES[f.dtype]) for f in o.features],
            feature_transformation=PythonTransformation(udf=udf, udf_string=f"features.catalog:{o.name}"),  # type: ignore[arg-type]
            mode="python",
            description=o.description,
            owner=o.owner,
        )
        odfvs[o.name] = odfv
        objects.append(odfv)
    for s in registry.services:
        objects.append(FeatureService(
            name=s.name,
            features=[views[v.name] if isinstance(v, spec.FeatureView) else odfvs[v.name] for v in s.views],
            description=s.description, owner=s.owner, tags=dict(s.tags)))
    return objects


# ------------------------------------------------------------------------------------------- repo
_DEFINITIONS = '''"""Generated by pipelines.feast_repo from the specs in features/. Do not edit: regenerate."""
from pipelines.feast_repo import _definitions_for_cli

globals().update(_definitions_for_cli(__file__))
'''


def _definitions_for_cli(definitions_file: str) -> dict[str, Any]:
    """Objects for ``definitions.py``, named for the module globals that ``feast apply`` scans."""
    settings = load_settings()
    objects = feast_objects(settings)
    return {f"{type(o).__name__.lower()}_{o.name}": o for o in objects}


def write_repo(settings: Settings) -> Path:
    """A Feast repo folder holding only definitions: feature_store.yaml and definitions.py."""
    repo = settings.feature_repo_path
    repo.mkdir(parents=True, exist_ok=True)
    for stale in repo.glob("*.py"):
        stale.unlink()
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(store_config(settings), sort_keys=False))
    (repo / "definitions.py").write_text(_DEFINITIONS)
    for v in REGISTRY.views:  # Feast validates batch sources on apply: make sure each table exists
        ensure_offline_table(settings, v)
    return repo


def ensure_offline_table(settings: Settings, view: spec.FeatureView) -> Path:
    """An empty table (in a partition of its own, so engines' partition overwrites never meet it)."""
    path = offline_table_path(settings, view)
    if not path.exists() or not any(path.rglob("*.parquet")):
        empty = path / "event_date=1970-01-01"
        empty.mkdir(parents=True, exist_ok=True)
        pq.write_table(offline_schema(view).empty_table(), empty / "empty.parquet", coerce_timestamps="us")
    return path


def feature_store(settings: Settings) -> FeatureStore:
    write_repo(settings)
    return FeatureStore(config=repo_config(settings))


def apply(settings: Settings) -> FeatureStore:
    """Write the repo and register every generated object."""
    store = feature_store(settings)
    with warnings.catch_warnings():  # on-demand views are used on purpose, for request-time features
        warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
        store.apply(feast_objects(settings))
    return store


# ------------------------------------------------------------------------------------------- online I/O
def to_frame(view: spec.FeatureView, rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (join key, event_timestamp, features) to a frame with the spec's dtypes."""
    schema = offline_schema(view)
    records = [{n: r.get(n) for n in schema.names} for r in rows]
    for r in records:
        if r[CREATED_TIMESTAMP] is None:
            r[CREATED_TIMESTAMP] = r[EVENT_TIMESTAMP]
    table = pa.Table.from_pylist(records, schema=schema)
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def write_online(store: FeatureStore, view: spec.FeatureView, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write feature rows through Feast's own online-write API."""
    df = to_frame(view, rows)
    if not df.empty:
        store.write_to_online_store(feature_view_name=view.name, df=df)
    return len(df)


def read_online(store: FeatureStore, service: spec.FeatureService,
                entity_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Read a feature service through Feast's ``get_online_features``; one dict per entity row.

    Values missing online (cold start) come back as the spec's defaults, so a caller
    sees exactly what the reference would compute.
    """
    fs = store.get_feature_service(service.name)
    resp = store.get_online_features(features=fs, entity_rows=[dict(r) for r in entity_rows]).to_dict()
    out = []
    specs: dict[str, spec.Feature] = {f.name: f for v in service.views for f in v.features}
    for i in range(len(entity_rows)):
        row = {}
        for name, f in specs.items():
            value = resp[name][i]
            row[name] = f.cast(_from_feast(value, f.dtype))
        out.append(row)
    return out


def _from_feast(value: Any, dtype: str) -> Any:
    if value is None:
        return None
    if dtype == "timestamp":
        ts = pd.Timestamp(value)
        return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
    return value


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Generate the Feast repo from the specs")
    p.add_argument("command", choices=["apply", "write"], help="write the repo, or write it and apply")
    a = p.parse_args(argv)
    settings = load_settings()
    if a.command == "write":
        print(f"wrote {write_repo(settings)}")
        return
    store = apply(settings)
    print(f"feast repo: {settings.feature_repo_path}")
    print(f"online store: {settings.online_store.type}")
    for kind, objs in (("entities", store.list_entities()), ("feature views", store.list_feature_views()),
                       ("on-demand feature views", store.list_on_demand_feature_views()),
                       ("feature services", store.list_feature_services())):
        print(f"  {len(objs)} {kind}: {', '.join(sorted(o.name for o in objs))}")



if __name__ == "__main__":
    main()
