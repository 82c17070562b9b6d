"""The one adapter for Feast internals that Kairos relies on (Feast 0.67.0, pinned in ``uv.lock``).

Where Feast's public API serves, Kairos uses it. Where it does not, the call is
here and nowhere else, and ``tests/integration/test_feast_compat.py`` fails if a
Feast upgrade changes what it relies on:

* :func:`online_write_batch`: the provider's ``online_write_batch``, reached
  through ``FeatureStore._get_provider()``. The public ``write_to_online_store``
  takes a pandas frame and converts it row by row, which was most of the stream's
  cost per row; the provider call takes value protos directly, and is what
  ``write_to_online_store`` itself ends with.
* :func:`proto_values`: ``feast.type_map.python_values_to_proto_values``, the
  conversion ``write_to_online_store`` uses, so values are stored exactly as Feast
  would store them.
* :func:`historical_rows`: ``get_historical_features`` on Feast's file offline
  store (``feast/infra/offline_stores/dask.py``), which needs three adjustments to
  give the point-in-time answer:

  - it drops an entity row whose key has table rows but none within
    ``(t - ttl, t]`` (``_filter_ttl``) instead of returning nulls, and with it the
    row's values from other views: so each view is queried on its own, and rows it
    drops take the spec's defaults (no row within the TTL means every windowed
    value is back at its default);
  - it keeps one entity row per (join keys, timestamp) (``_drop_duplicates``): so
    each view is queried with unique (key, timestamp) pairs, merged back after;
  - keys missing from a table yield null timestamps, on which its dask sort can
    fail ("Divisions calculation failed"): so only keys present in the view's table
    are sent, the others take the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
from feast import FeatureStore
from feast import FeatureView as FeastView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.type_map import python_values_to_proto_values

from features import spec

OnlineRow = tuple[EntityKey, dict[str, Any], datetime, datetime | None]  # key, values, event and created time


def online_write_batch(store: FeatureStore, view: FeastView, data: Sequence[OnlineRow]) -> None:
    """Write value protos to the store's online store, as ``write_to_online_store`` does after its conversion."""
    store._get_provider().online_write_batch(store.config, view, list(data), progress=None)


def proto_values(values: Sequence[Any], value_type: Any) -> list[Any]:
    """Python values as Feast's value protos of ``value_type`` (a ``ValueType``)."""
    return list(python_values_to_proto_values(list(values), value_type))


def historical_rows(store: FeatureStore, view: spec.FeatureView, queries: pd.DataFrame, timestamp_col: str
                    ) -> pd.DataFrame:
    """``view``'s features as of each (key, timestamp) of ``queries``, from ``get_historical_features``.

    Only unique queries of keys present in the view's table are sent (see the module docstring); the result
    has one row per such query, with the key, ``timestamp_col`` (``datetime64[us, UTC]``) and the features,
    null where Feast found no row. Keys it does not return are the caller's to default."""
    key = view.entity.join_key
    source = store.get_feature_view(view.name).batch_source
    present = ds.dataset(source.path, format="parquet", partitioning="hive").to_table(columns=[key]).column(key)
    sent = queries[queries[key].isin(pc.unique(present).to_pylist())][[key, timestamp_col]].drop_duplicates()
    refs = [f"{view.name}:{f.name}" for f in view.features]
    got = (store.get_historical_features(entity_df=sent.reset_index(drop=True), features=refs).to_df()
           if len(sent) else pd.DataFrame(columns=[key, timestamp_col, *view.feature_names]))
    got[timestamp_col] = pd.to_datetime(got[timestamp_col], utc=True).astype("datetime64[us, UTC]")
    return got[[key, timestamp_col, *view.feature_names]]
