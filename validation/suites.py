"""Great Expectations suites derived from the specs, not written by hand.

* ``raw_events``: the event field table (features/events.py) gives columns, allowed
  values, bounds, required ids and the two-clock rule (event_time <= ingest_time,
  nothing in the future).
* ``features.<view>``: each feature view's offline table; every feature's dtype
  family, bounds and nullability come from its spec.

The same suites run in tests, in the pipelines and (later) in the Airflow DAGs via
:func:`validation.run.validate_frame`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import great_expectations as gx
from great_expectations.expectations.expectation import Expectation

from features.events import ALL_FIELDS, MAX_CLOCK_SKEW, REQUIRED_COMMON
from features.registry import REGISTRY, Registry
from features.spec import Feature, FeatureView
from pipelines.store.offline import EVENT_TIMESTAMP


@dataclass(frozen=True)
class Suite:
    """A named list of expectations; :func:`validation.run.validate_frame` binds it to a GX context."""

    name: str
    expectations: tuple[Expectation, ...]


def _bounds(column: str, lo: float | None, hi: float | None) -> list[Expectation]:
    if lo is None and hi is None:
        return []
    return [gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi)]


def raw_events_suite(now: datetime | None = None) -> Suite:
    """Expectations for a frame of events in the event schema (v1)."""
    horizon = (now or datetime.now(UTC)) + MAX_CLOCK_SKEW
    exps: list[Expectation] = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=[f.name for f in ALL_FIELDS], exact_match=False),
    ]
    for f in ALL_FIELDS:
        if f.name in REQUIRED_COMMON:
            exps.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=f.name))
        if f.allowed is not None:
            exps.append(gx.expectations.ExpectColumnValuesToBeInSet(column=f.name, value_set=sorted(f.allowed)))
        exps.extend(_bounds(f.name, f.min_value, f.max_value))
        if f.max_length is not None:
            exps.append(gx.expectations.ExpectColumnValueLengthsToBeBetween(column=f.name, min_value=1,
                                                                            max_value=f.max_length))
        if f.dtype == "timestamp":
            exps.append(gx.expectations.ExpectColumnValuesToBeBetween(
                column=f.name, min_value=datetime(2000, 1, 1, tzinfo=UTC), max_value=horizon))
    exps.append(gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A="ingest_time", column_B="event_time", or_equal=True))
    exps.append(gx.expectations.ExpectColumnValuesToBeUnique(column="event_id", mostly=0.0))  # reported, not fatal
    return Suite(name="raw_events", expectations=tuple(exps))


def feature_expectations(f: Feature) -> list[Expectation]:
    """The expectations a feature's spec implies for its column: nullability, dtype family, bounds."""
    exps: list[Expectation] = []
    if not f.nullable:
        exps.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=f.name))
    if f.dtype in ("int64", "float64"):
        exps.extend(_bounds(f.name, f.min_value, f.max_value))
        exps.append(gx.expectations.ExpectColumnValuesToBeInTypeList(
            column=f.name, type_list=["int64", "Int64", "int32"] if f.dtype == "int64" else ["float64", "float32"]))
    elif f.dtype == "array<string>":
        exps.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=f.name))
    return exps


def feature_table_suite(view: FeatureView) -> Suite:
    """Expectations for a view's offline table: keys, timestamps, and each feature per its spec."""
    cols = [view.entity.join_key, EVENT_TIMESTAMP, *view.feature_names]
    exps: list[Expectation] = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=cols, exact_match=False),
        gx.expectations.ExpectColumnValuesToNotBeNull(column=view.entity.join_key),
        gx.expectations.ExpectColumnValuesToNotBeNull(column=EVENT_TIMESTAMP),
    ]
    for f in view.features:
        exps.extend(feature_expectations(f))
    return Suite(name=f"features.{view.name}", expectations=tuple(exps))


def all_suites(registry: Registry = REGISTRY) -> dict[str, Suite]:
    suites = {"raw_events": raw_events_suite()}
    for v in registry.views:
        suites[f"features.{v.name}"] = feature_table_suite(v)
    return suites
