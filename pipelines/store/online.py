"""Online reads and writes of feature rows through Feast: spec-typed rows in, spec-typed values out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey

from features import spec
from features.registry import REGISTRY, Registry
from pipelines.store.feast_compat import online_write_batch, proto_values
from pipelines.store.offline import CREATED_TIMESTAMP, EVENT_TIMESTAMP, offline_schema
from pipelines.store.values import is_null, spec_value


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
            record[f.name] = None if is_null(value) else f.cast(value)
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
        values = [null if is_null(v) else f.cast(v) for v in (rows[i][f.name] for i in having)]
        for i, proto in zip(having, proto_values(values, field.dtype.to_value_type()), strict=True):
            protos[i][f.name] = proto
    key_type = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}[join_key]
    entity_values = proto_values(keys, key_type)
    data = [(EntityKey(join_keys=[join_key], entity_values=[entity_values[i]]), protos[i], stamps[i], stamps[i])
            for i in range(len(rows)) if protos[i]]
    online_write_batch(store, fv, data)
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

