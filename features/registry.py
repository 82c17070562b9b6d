"""The registry of specs: one place that lists and checks every declaration.

Engines, the Feast generator, validation suites and serving all enumerate specs
from here. Construction checks the catalogue's integrity, so a bad declaration
fails at import time with a message naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from features import catalog
from features.events import FIELDS_BY_NAME
from features.spec import (
    Entity,
    EventSource,
    Feature,
    FeatureService,
    FeatureView,
    OnDemandView,
    check_unique,
)

FeatureSelection = FeatureService | Sequence[str]  # a service, or Feast-style ``"view:feature"`` refs


class Resolved(NamedTuple):
    """What a selection of features reads: views to join, on-demand views to compute, output names in order."""

    views: list[FeatureView]
    on_demand: list[OnDemandView]
    names: list[str]


@dataclass(frozen=True, kw_only=True)
class Registry:
    entities: tuple[Entity, ...]
    sources: tuple[EventSource, ...]
    views: tuple[FeatureView, ...]
    on_demand_views: tuple[OnDemandView, ...]
    services: tuple[FeatureService, ...]

    def __post_init__(self) -> None:
        check_unique("entity", (e.name for e in self.entities))
        check_unique("view", [v.name for v in self.views] + [o.name for o in self.on_demand_views])
        check_unique("service", (s.name for s in self.services))
        check_unique("feature", (f.name for f in self.all_features))
        for v in self.views:
            if v.entity not in self.entities:
                raise ValueError(f"view {v.name!r}: entity {v.entity.name!r} is not registered")
            for field_name in v.event_fields():
                if field_name not in FIELDS_BY_NAME:
                    raise ValueError(f"view {v.name!r} reads {field_name!r}, which is not an event field")
            known: set[str] = {a.name for a in v.aggregations}
            for d in v.derived:
                missing = d.expr.columns() - known
                if missing:
                    raise ValueError(f"derived feature {d.name!r} reads unknown {sorted(missing)}")
                known.add(d.name)
        for o in self.on_demand_views:
            known = {n for v in o.sources for n in v.feature_names} | {r.name for r in o.request_fields}
            for f in o.features:
                missing = f.expr.columns() - known
                if missing:
                    raise ValueError(f"on-demand feature {f.name!r} reads unknown {sorted(missing)}")

    @cached_property
    def all_features(self) -> tuple[Feature, ...]:
        return tuple(f for v in self.views for f in v.features) + tuple(
            f for o in self.on_demand_views for f in o.features
        )

    def view(self, name: str) -> FeatureView:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"no feature view named {name!r}; known: {[v.name for v in self.views]}")

    def on_demand_view(self, name: str) -> OnDemandView:
        for o in self.on_demand_views:
            if o.name == name:
                return o
        raise KeyError(f"no on-demand view named {name!r}")

    def service(self, name: str) -> FeatureService:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no feature service named {name!r}; known: {[s.name for s in self.services]}")

    def resolve(self, features: FeatureSelection) -> Resolved:
        """The views a service or ``view:feature`` refs read; an on-demand feature brings its source views
        along (their features are inputs, not output). The one home of "which stored views a selection reads"."""
        if isinstance(features, FeatureService):
            chosen: list[FeatureView | OnDemandView] = list(features.views)
            names = [f.name for f in features.features]
        else:
            chosen, names = [], []
            for ref in features:
                view_name, _, feature = ref.partition(":")
                v: FeatureView | OnDemandView
                try:
                    v = self.view(view_name)
                except KeyError:
                    v = self.on_demand_view(view_name)
                if feature not in v.feature_names:
                    raise KeyError(f"{ref!r}: view {view_name!r} has no feature {feature!r}")
                if v not in chosen:
                    chosen.append(v)
                names.append(feature)
        odvs = [v for v in chosen if isinstance(v, OnDemandView)]
        fvs = [v for v in chosen if isinstance(v, FeatureView)]
        for o in odvs:
            fvs += [s for s in o.sources if s not in fvs]
        return Resolved(fvs, odvs, names)

    def feature(self, name: str) -> Feature:
        for f in self.all_features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {name!r}")


REGISTRY = Registry(
    entities=(catalog.USER, catalog.SESSION),
    sources=(catalog.EVENTS,),
    views=(catalog.USER_COMMERCE, catalog.USER_ACCOUNT, catalog.SESSION_ACTIVITY, catalog.USER_VALUE),
    on_demand_views=(catalog.USER_RECENCY, catalog.USER_ACTIVITY_RATES, catalog.SESSION_CONTEXT,
                     catalog.CUSTOMER_VALUE),
    services=(catalog.PURCHASE_PROPENSITY_V1, catalog.CHURN_V1, catalog.SESSION_TRIGGERS_V1,
              catalog.CUSTOMER_VALUE_V1),
)
