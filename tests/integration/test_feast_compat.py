"""What :mod:`pipelines.store.feast_compat` relies on in Feast, pinned: a Feast upgrade that changes any of it
fails here, naming what to revisit, instead of silently changing what the engines write or read."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore

from conf.settings import Settings
from features.registry import REGISTRY
from pipelines.store.feast_compat import historical_rows, proto_values
from pipelines.store.offline import EVENT_TIMESTAMP, PARTITION, offline_schema, offline_table_path
from pipelines.store.online import read_online, to_frame, write_online_rows
from pipelines.store.repo import apply_repo

T0 = datetime(2026, 10, 1, 12, tzinfo=UTC)


def test_the_provider_write_path_has_the_signature_kairos_calls() -> None:
    assert callable(FeatureStore._get_provider), "FeatureStore._get_provider is gone: revisit online_write_batch"
    from feast.infra.passthrough_provider import PassthroughProvider

    params = list(inspect.signature(PassthroughProvider.online_write_batch).parameters)
    assert params[:5] == ["self", "config", "table", "data", "progress"], params
    from feast.type_map import python_values_to_proto_values

    assert list(inspect.signature(python_values_to_proto_values).parameters)[:2] == ["values", "feature_type"]


def test_the_fast_write_path_stores_what_feasts_public_write_stores(tmp_settings: Settings) -> None:
    """``write_online_rows`` (value protos straight to the provider) and Feast's public
    ``write_to_online_store`` (a frame) leave the same values online."""
    store = apply_repo(tmp_settings)
    view = REGISTRY.view("user_commerce")
    ts = T0
    row = {"user_id": "fast", EVENT_TIMESTAMP: ts, "user_total_spend_30d": 12.5, "user_purchases_30d": 2}
    assert write_online_rows(store, view, [row]) == 1
    store.write_to_online_store(feature_view_name=view.name, df=to_frame(view, [{**row, "user_id": "public"}]))
    refs = [f"{view.name}:user_total_spend_30d", f"{view.name}:user_purchases_30d"]
    fast, public = read_online(store, refs, [{"user_id": "fast"}, {"user_id": "public"}])
    assert fast == public == {"user_total_spend_30d": 12.5, "user_purchases_30d": 2}
    assert len(proto_values([1, None], store.get_feature_view(view.name).features[0].dtype.to_value_type())) == 2


def _one_row_table(settings: Settings) -> None:
    view = REGISTRY.view("user_commerce")
    cold = {f.name: f.default for f in view.features}  # every feature set: the table's columns are not nullable
    frame = to_frame(view, [{**cold, "user_id": "u1", EVENT_TIMESTAMP: T0, "user_purchases_30d": 3}])
    path = offline_table_path(settings, view) / f"{PARTITION}={T0.date().isoformat()}"
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=offline_schema(view), preserve_index=False),
                   path / "part-0.parquet", coerce_timestamps="us")


def test_feasts_file_store_still_needs_the_workarounds(tmp_settings: Settings) -> None:
    """Feast 0.67's file offline store drops an entity row with no table row inside the TTL, and keeps one
    entity row per (key, timestamp). If either stops being true, ``historical_rows`` and
    ``FeastRetrieval.as_of_join`` can be simplified: this test says so by failing."""
    store = apply_repo(tmp_settings)
    _one_row_table(tmp_settings)
    view = REGISTRY.view("user_commerce")
    late = T0 + view.ttl + timedelta(hours=1)
    entity = pd.DataFrame({"user_id": ["u1", "u1", "u1"],
                           EVENT_TIMESTAMP: pd.Series([T0 + timedelta(minutes=1)] * 2 + [late]).astype(
                               "datetime64[us, UTC]")})
    raw = store.get_historical_features(entity_df=entity, features=[f"{view.name}:user_purchases_30d"]).to_df()
    assert len(raw) < len(entity), "Feast now keeps every entity row: drop the workarounds in feast_compat"
    got = historical_rows(store, view, entity, EVENT_TIMESTAMP)
    # unique queries of present keys; the row past the TTL is Feast's to drop, the caller's to default
    assert got[EVENT_TIMESTAMP].tolist() == [pd.Timestamp(T0 + timedelta(minutes=1))]
    assert got["user_purchases_30d"].tolist() == [3]
