"""The Feast repo, generated from the specs.

Entities, batch sources, push sources, feature views, on-demand feature views and
feature services are all built here from :data:`features.registry.REGISTRY`;
``feast apply`` never sees a hand-written copy. The repo folder that
:func:`write_repo` produces holds only ``feature_store.yaml`` (rendered from the
settings) and one ``definitions.py`` that asks this module for the objects, so the
Feast CLI works on it unchanged::

    kairos apply        # or: cd var/data/feature_repo && feast apply

The batch sources are the offline tables of :mod:`pipelines.store.offline`. With
``offline_store.type: spark`` they are Feast ``SparkSource``\\ s over the same parquet
(pruned by the ``event_date`` partitions the Spark engine writes), else
``FileSource``\\ s.
"""

from __future__ import annotations

import pprint
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, PushSource
from feast.data_source import DataSource
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

from conf.settings import Settings, load_settings
from features import spec
from features.registry import REGISTRY, Registry
from pipelines.store.feast_types import FEAST_TYPES
from pipelines.store.offline import (
    CREATED_TIMESTAMP,
    EVENT_TIMESTAMP,
    PARTITION,
    ensure_offline_table,
    offline_table_path,
)
from pipelines.store.on_demand import on_demand_view


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
        # Feast's Spark source imports pyspark: only for the spark offline store, so a file store starts quickly
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        with warnings.catch_warnings():  # "experimental": it is what Feast's Spark offline store reads
            warnings.filterwarnings("ignore", message="The spark data source API is an experimental feature")
            return SparkSource(file_format="parquet", date_partition_column=PARTITION,
                               date_partition_column_format="%Y-%m-%d", **common)
    return FileSource(**common)



def feast_ttl(view: spec.FeatureView) -> timedelta:
    """The view's TTL as Feast takes it: its own, or 0 (Feast's "no TTL") for a view with a lifetime window."""
    return timedelta(0) if view.lifetime else view.ttl


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
            ttl=feast_ttl(v),
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
"""Generated by pipelines.store.repo from the specs in features/. Do not edit: regenerate.

`feast apply` registers the module globals below, built with the settings the repo was written with.
"""
from pipelines.store.repo import definitions

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


def apply_repo(settings: Settings) -> FeatureStore:
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



def describe(store: FeatureStore) -> list[str]:
    """One line per kind of registered object."""
    kinds: list[tuple[str, Callable[[], list[Any]]]] = [
        ("entities", store.list_entities), ("data sources", store.list_data_sources),
        ("feature views", store.list_feature_views), ("on-demand feature views", store.list_on_demand_feature_views),
        ("feature services", store.list_feature_services)]
    return [f"{len(objs)} {kind}: {', '.join(sorted(o.name for o in objs))}"
            for kind, objs in ((k, list_()) for k, list_ in kinds)]
