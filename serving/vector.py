"""Freshness on online reads, and a feature service's vector after it: the rules, apart from the store.

* **freshness** (``features/SEMANTICS.md``, "Freshness on online reads"): each stored view's
  age is ``request_time - event_timestamp`` of its row. Older than the view's
  ``freshness_limit``, the row is stale and the view's ``on_stale`` policy applies: its
  cold-start row (``default``) or the stored values (``serve``), flagged either way. A key
  with no row is a cold start. :func:`apply_freshness` is a pure function of the rows read.
* **degraded**: when the store could not be read in time (``rows is None``), every view is a
  cold start, flagged ``degraded`` with the reason.
* **on-demand** features are then computed by :meth:`serving.online.OnlineReader.compute_vector`
  (Feast's own udf over the rows), so a fresh vector equals ``FeatureStore.get_online_features``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from features import spec
from serving.api import ViewState
from serving.online import OnlineReader, StoredRow


@dataclass(frozen=True)
class ViewFreshness:
    age_seconds: float | None
    state: ViewState
    max_age_seconds: float


@dataclass
class Vector:
    values: dict[str, Any]
    views: dict[str, ViewFreshness] = field(default_factory=dict)
    degraded: bool = False
    reason: str | None = None


def cold_row(view: spec.FeatureView) -> StoredRow:
    """What a key without a row reads as: the view's cold-start row, no Feast values, no timestamp."""
    return StoredRow(values=view.finalize_row({}), feast_values=dict.fromkeys(view.feature_names), event_ts=None)


def apply_freshness(view: spec.FeatureView, row: StoredRow | None, request_time: datetime
                    ) -> tuple[StoredRow, ViewFreshness]:
    """The row the vector reads after the view's freshness policy, and how fresh the stored row was."""
    limit = view.freshness_limit.total_seconds()
    if row is None or row.event_ts is None:
        return cold_row(view), ViewFreshness(None, "cold_start", limit)
    age = (request_time - row.event_ts).total_seconds()
    if age > limit:
        return (cold_row(view) if view.on_stale == "default" else row), ViewFreshness(age, "stale", limit)
    return row, ViewFreshness(age, "fresh", limit)


def stored_views(services: tuple[spec.FeatureService, ...]) -> tuple[spec.FeatureView, ...]:
    """Every stored view the services read, once, in order: one read serves them all."""
    out: list[spec.FeatureView] = []
    for s in services:
        out += [v for v in s.stored_views if v not in out]
    return tuple(out)


def feature_vector(reader: OnlineReader, service: spec.FeatureService, rows: Mapping[str, StoredRow] | None,
                   request_time: datetime, *, request: Mapping[str, Any] | None = None,
                   reason: str | None = None) -> Vector:
    """The service's features at ``request_time`` from ``rows`` (by view name) after the freshness policy, or its
    cold-start vector flagged degraded when ``rows`` is ``None``. No I/O."""
    used: dict[str, StoredRow] = {}
    views: dict[str, ViewFreshness] = {}
    for v in service.stored_views:
        if rows is None:
            used[v.name] = cold_row(v)
            views[v.name] = ViewFreshness(None, "degraded", v.freshness_limit.total_seconds())
        else:
            used[v.name], views[v.name] = apply_freshness(v, rows.get(v.name), request_time)
    values = reader.compute_vector(service, used, request_time=request_time, request=request)
    return Vector(values, views, degraded=rows is None, reason=reason)
