"""The stream's Feast online writer writes what changed, and the store still reads as the newest rows.

A real Feast SQLite online store; the writer's own write function is wrapped only to record which
features each write carried, and every write still goes to Feast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from conf.settings import Settings
from features.catalog import SESSION_ACTIVITY, USER_COMMERCE
from features.spec import FeatureView
from features.state import ViewState
from pipelines.store.online import read_online, write_online
from pipelines.store.repo import apply_repo
from pipelines.stream.sinks import OnlineWriter
from pipelines.stream.types import FeatureRow

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
VIEWS = {v.name: v for v in (USER_COMMERCE, SESSION_ACTIVITY)}


def row(view: FeatureView, key: str, at: datetime, **changes: Any) -> FeatureRow:
    values = dict(zip(view.feature_names, ViewState(view).row(), strict=True))  # the cold-start row
    return FeatureRow(view.name, key, at, {**values, **changes})


def read(store: Any, view: FeatureView, key: str) -> dict[str, Any]:
    refs = [f"{view.name}:{n}" for n in view.feature_names]
    return read_online(store, refs, [{view.entity.join_key: key}])[0]


def test_only_changed_features_are_written_and_reads_see_the_newest_rows(tmp_settings: Settings) -> None:
    store = apply_repo(tmp_settings)
    sink = OnlineWriter(tmp_settings, VIEWS)
    writes: list[tuple[str, list[set[str]]]] = []
    real = sink.write_online

    def recording(store_: Any, view: FeatureView, rows: Sequence[Mapping[str, Any]]) -> int:
        writes.append((view.name, [set(r) - {view.entity.join_key, "event_timestamp"} for r in rows]))
        return real(store_, view, rows)

    sink.write_online = recording
    all_features = set(USER_COMMERCE.feature_names)
    try:
        first = row(USER_COMMERCE, "u1", T0, user_total_spend_30d=10.0, user_purchases_30d=1)
        sink.write_batch([first])
        sink.flush()
        assert writes == [("user_commerce", [all_features])], "a key's first row in an epoch is written whole"

        second = row(USER_COMMERCE, "u1", T0 + timedelta(minutes=1), user_total_spend_30d=25.5, user_purchases_30d=2)
        sink.write_batch([second, row(USER_COMMERCE, "u2", T0, user_product_views_1h=3)])
        sink.flush()
        assert writes[1] == ("user_commerce", [{"user_total_spend_30d", "user_purchases_30d"}, all_features])
        assert read(store, USER_COMMERCE, "u1") == second.values
        assert read(store, USER_COMMERCE, "u2")["user_product_views_1h"] == 3

        sink.write_batch([FeatureRow("user_commerce", "u1", T0 + timedelta(minutes=2), dict(second.values))])
        sink.flush()
        assert len(writes) == 2, "a row equal to what the store holds is not written again"

        # a value going back to its default is a change too
        third = row(USER_COMMERCE, "u1", T0 + timedelta(minutes=3), user_total_spend_30d=0.0, user_purchases_30d=0)
        sink.write_batch([third])
        sink.flush()
        assert writes[2] == ("user_commerce", [{"user_total_spend_30d", "user_purchases_30d"}])
        assert read(store, USER_COMMERCE, "u1") == third.values

        # the end of an epoch: whatever else wrote the store meanwhile, each key's next row is written whole
        write_online(store, USER_COMMERCE, [{"user_id": "u1", "event_timestamp": T0,
                                                         "user_product_views_30d": 99}])
        sink.snapshot()
        fourth = row(USER_COMMERCE, "u1", T0 + timedelta(minutes=4), user_total_spend_30d=7.0, user_purchases_30d=1)
        sink.write_batch([fourth])
        sink.flush()
        assert writes[3] == ("user_commerce", [all_features])
        assert read(store, USER_COMMERCE, "u1") == fourth.values
    finally:
        sink.close()
