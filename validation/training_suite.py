"""The Great Expectations suite for point-in-time training sets, derived from the specs and the settings.

A training frame (``training.datasets.build_training_frame``) holds one row per
decision point: keys, ``decision_time``, ``label``, the feature service's
features and, per feature view, ``<view>_event_timestamp`` (the as-of time of the
offline row the values came from). The suite checks:

* the expected columns (keys, time, label, every feature and as-of column);
* the label: never null, only 0 and 1, and its rate within the model's band;
* point in time: no as-of timestamp and no timestamp-valued feature (last login,
  last purchase, session start, ...) lies after ``decision_time``. Each such
  column ``c`` gets a derived column ``c__seconds_after_decision`` (null where
  ``c`` is null), expected to be ``<= 0``, so a failure names the leaking column
  and by how much it leaks;
* null rates of the non-nullable features (at most ``max_null_rate``), and each
  feature's dtype and bounds from its spec.

:func:`validate_training_set` runs it with :func:`validation.run.validate_frame`
and raises :class:`validation.run.DataValidationError` on failure, so nothing
downstream runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import great_expectations as gx
import pandas as pd
from great_expectations.expectations.expectation import Expectation

from features.spec import Feature, FeatureService, FeatureView
from pipelines.store.offline import EVENT_TIMESTAMP
from validation.run import DataValidationError, Failure, ValidationOutcome, validate_frame
from validation.suites import Suite, feature_expectations

DECISION_TIME: Final = "decision_time"
LABEL: Final = "label"
LEAD_SUFFIX: Final = "__seconds_after_decision"


@dataclass(frozen=True)
class TrainingSetSpec:
    """What a training set of one model must look like."""

    model: str
    service: FeatureService
    keys: tuple[str, ...]
    label_rate_min: float
    label_rate_max: float
    max_null_rate: float = 0.0
    time_column: str = DECISION_TIME
    label_column: str = LABEL

    @property
    def stored_views(self) -> list[FeatureView]:
        return list(self.service.stored_views)

    @property
    def features(self) -> list[Feature]:
        return [f for v in self.service.views for f in v.features]

    @property
    def asof_columns(self) -> list[str]:
        return [f"{v.name}_{EVENT_TIMESTAMP}" for v in self.stored_views]

    @property
    def timestamp_columns(self) -> list[str]:
        """Columns that hold a moment the row's features depend on: as-of times and timestamp features."""
        return [*self.asof_columns, *(f.name for f in self.features if f.dtype == "timestamp")]

    @property
    def columns(self) -> list[str]:
        return [*self.keys, self.time_column, self.label_column, *(f.name for f in self.features),
                *self.asof_columns]


def with_leads(df: pd.DataFrame, spec: TrainingSetSpec) -> pd.DataFrame:
    """``df`` plus ``<c>__seconds_after_decision`` for every timestamp column ``c`` present (null stays null)."""
    out = df.copy()
    if spec.time_column not in df.columns:
        return out
    t = pd.to_datetime(df[spec.time_column], utc=True)
    for c in spec.timestamp_columns:
        if c in df.columns:
            out[c + LEAD_SUFFIX] = (pd.to_datetime(df[c], utc=True) - t).dt.total_seconds()
    return out


def training_set_suite(spec: TrainingSetSpec) -> Suite:
    exps: list[Expectation] = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=spec.columns, exact_match=False),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
        gx.expectations.ExpectColumnValuesToNotBeNull(column=spec.time_column),
        gx.expectations.ExpectColumnValuesToNotBeNull(column=spec.label_column),
        gx.expectations.ExpectColumnValuesToBeInSet(column=spec.label_column, value_set=[0, 1]),
        gx.expectations.ExpectColumnMeanToBeBetween(column=spec.label_column, min_value=spec.label_rate_min,
                                                    max_value=spec.label_rate_max),
    ]
    for k in spec.keys:
        exps.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=k))
    for c in spec.timestamp_columns:
        exps.append(gx.expectations.ExpectColumnValuesToBeBetween(column=c + LEAD_SUFFIX, max_value=0.0))
    for f in spec.features:
        for e in feature_expectations(f):
            if isinstance(e, gx.expectations.ExpectColumnValuesToNotBeNull) and spec.max_null_rate > 0:
                # the spec's not-null check, relaxed to the model's allowed null rate
                e = gx.expectations.ExpectColumnValuesToNotBeNull(column=f.name, mostly=1.0 - spec.max_null_rate)
            exps.append(e)
    return Suite(name=f"training_set.{spec.model}", expectations=tuple(exps))


def _explain(df: pd.DataFrame, spec: TrainingSetSpec, failure: Failure) -> Failure:
    """Add the observed value to failures GX reports without one (the label rate, the row count)."""
    if failure.column == spec.label_column and failure.expectation == "expect_column_mean_to_be_between":
        rate = float(pd.to_numeric(df[spec.label_column], errors="coerce").mean())
        return replace(failure, examples=[f"label rate {rate:.4f} outside the band "
                                          f"[{spec.label_rate_min}, {spec.label_rate_max}] for {spec.model}"])
    if failure.column and failure.column.endswith(LEAD_SUFFIX) and spec.time_column in df.columns:
        source = failure.column[: -len(LEAD_SUFFIX)]
        lead = with_leads(df, spec)[failure.column]
        bad = df.loc[lead > 0]
        keys = [k for k in spec.keys if k in df.columns]
        rows = bad[[*keys, spec.time_column, source]].head(3).astype(str).to_dict("records")
        return replace(failure, examples=[f"{source} after {spec.time_column} in {len(bad)} rows, e.g. {rows}"])
    return failure


def validate_training_set(df: pd.DataFrame, spec: TrainingSetSpec, *, dataset: str | None = None,
                          docs_dir: Path | None = None, raise_on_failure: bool = True) -> ValidationOutcome:
    """Run the training-set suite on ``df``; raise :class:`DataValidationError` naming what failed and where."""
    name = dataset or f"training_set.{spec.model}"
    outcome = validate_frame(with_leads(df, spec), training_set_suite(spec), dataset=name, docs_dir=docs_dir,
                             raise_on_failure=False)
    if not outcome.success:
        outcome = replace(outcome, failures=[_explain(df, spec, f) for f in outcome.failures])
        if raise_on_failure:
            raise DataValidationError(outcome)
    return outcome
