"""Feast's ``get_historical_features`` over the offline tables, as a :class:`pipelines.engine.RetrievalEngine`.

``store`` is the applied repo of :mod:`pipelines.store.repo`, whose batch sources
are the offline tables the engines write; its configured offline store (by
default ``file``, Feast's dask engine) runs the joins. The adjustments Feast 0.67's
file store needs to give the point-in-time answer live in
:mod:`pipelines.store.feast_compat`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from feast import FeatureStore

from features import spec
from features.registry import REGISTRY, FeatureSelection, Registry
from pipelines.engine import RetrievalEngine
from pipelines.store.feast_compat import historical_rows
from pipelines.store.offline import EVENT_TIMESTAMP
from pipelines.store.values import spec_column


class FeastRetrieval(RetrievalEngine[pd.DataFrame]):
    """Training sets through Feast's own as-of joins (pandas in, pandas out)."""

    def __init__(self, store: FeatureStore, registry: Registry = REGISTRY) -> None:
        super().__init__(registry)
        self.store = store

    def training_set(self, entity_df: pd.DataFrame, features: FeatureSelection,
                     timestamp_col: str = EVENT_TIMESTAMP) -> pd.DataFrame:
        return self.get_historical_features(entity_df, features, timestamp_col)

    def entity_frame(self, entity_df: pd.DataFrame, timestamp_col: str) -> pd.DataFrame:
        if timestamp_col not in entity_df.columns:
            raise ValueError(f"entity_df has no column {timestamp_col!r}")
        if not isinstance(entity_df[timestamp_col].dtype, pd.DatetimeTZDtype):
            raise ValueError(f"entity_df[{timestamp_col!r}] must be timezone-aware UTC timestamps")
        out = entity_df.reset_index(drop=True).copy()
        out[timestamp_col] = out[timestamp_col].dt.tz_convert("UTC").astype("datetime64[us, UTC]")
        return out

    def columns(self, frame: pd.DataFrame) -> list[str]:
        return [str(c) for c in frame.columns]

    def select(self, frame: pd.DataFrame, columns: Sequence[str], names: Sequence[str]) -> pd.DataFrame:
        return frame[[*columns, *names]]

    def as_of_join(self, frame: pd.DataFrame, key: str, views: Sequence[spec.FeatureView], timestamp_col: str
                   ) -> pd.DataFrame:
        """Each view on its own, with unique (key, timestamp) queries and only keys present in its table:
        the workarounds of :func:`pipelines.store.feast_compat.historical_rows`; the rest take the defaults."""
        out = frame
        stamps = out[timestamp_col]
        for view in views:
            queries = pd.DataFrame({key: out[key], timestamp_col: stamps})
            got = historical_rows(self.store, view, queries, timestamp_col)
            merged = queries.merge(got, on=[key, timestamp_col], how="left")
            assert len(merged) == len(out)
            for f in view.features:
                out[f.name] = spec_column(merged[f.name], f)
        return out

    def on_demand(self, frame: pd.DataFrame, views: Sequence[spec.OnDemandView], timestamp_col: str
                  ) -> pd.DataFrame:
        """The spec's expressions (what the generated python-mode on-demand views run), ``request_time`` =
        the row's timestamp."""
        out, stamps = frame, frame[timestamp_col]
        sources = sorted({n for o in views for v in o.sources for n in v.feature_names})
        records = out[sources].astype(object).where(out[sources].notna(), None).to_dict("records")
        computed: dict[str, list[Any]] = {f.name: [] for o in views for f in o.features}
        for r, t in zip(records, stamps, strict=True):
            for c in sources:
                if isinstance(r[c], pd.Timestamp):
                    r[c] = r[c].to_pydatetime()
            r[spec.REQUEST_TIME.name] = t.to_pydatetime()
            for o in views:
                for n, v in o.compute(r).items():
                    computed[n].append(v)
        for o in views:
            for f in o.features:
                out[f.name] = spec_column(pd.Series(computed[f.name], dtype=object), f)
        return out
