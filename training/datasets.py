"""Training frames from the offline engine's point-in-time join, time splits and fingerprints.

:func:`build_training_frame` sends the decision points (keys, ``decision_time``,
label and oracle score) through :meth:`pipelines.spark.retrieval.SparkRetrieval.training_set` with the
model's feature service, and adds, per feature view, the ``event_timestamp`` of
the offline row each value was taken from (``<view>_event_timestamp``, null for a
cold start). The training-set suite (:mod:`validation.training_suite`) checks
those against ``decision_time``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from features.spec import FeatureService, FeatureView
from pipelines.spark.retrieval import SparkRetrieval
from pipelines.spark.schema import to_pandas
from pipelines.store.offline import EVENT_TIMESTAMP
from training.labels import DECISION_TIME, LABEL

ROW_ID: Final = "row_id"
NUMERIC_DTYPES: Final = frozenset({"int64", "float64", "bool"})


def asof_column(view: FeatureView) -> str:
    """The column holding the as-of time of ``view``'s values in a training frame."""
    return f"{view.name}_{EVENT_TIMESTAMP}"


def model_features(service: FeatureService) -> list[str]:
    """The numeric features of a service, in service order: what the models read.

    Strings, lists and raw timestamps are left out; the on-demand views turn the
    timestamps into durations (seconds since ...), which are in.
    """
    return [f.name for v in service.views for f in v.features if f.dtype in NUMERIC_DTYPES]


def _asof_stamps(retrieval: SparkRetrieval, entity: DataFrame, views: Sequence[FeatureView]) -> DataFrame:
    """``row_id`` and, per view, the latest offline ``event_timestamp <= decision_time`` of the row's key."""
    out = entity.select(ROW_ID)
    for v in views:
        key = v.entity.join_key
        queries = entity.select(F.col(key).alias("_k"), F.col(DECISION_TIME).alias("_t"), F.lit(1).alias("_q"),
                                F.col(ROW_ID).alias("_r"), F.lit(None).cast("timestamp").alias("_s"))
        table = retrieval.offline_table(v).select(
            F.col(key).alias("_k"), F.col(EVENT_TIMESTAMP).alias("_t"), F.lit(0).alias("_q"),
            F.lit(None).cast("long").alias("_r"), F.col(EVENT_TIMESTAMP).alias("_s"))
        w = Window.partitionBy("_k").orderBy("_t", "_q").rowsBetween(Window.unboundedPreceding, Window.currentRow)
        stamped = (queries.unionByName(table)
                   .select("_q", "_r", F.last("_s", ignorenulls=True).over(w).alias(asof_column(v)))
                   .where(F.col("_q") == 1).select(F.col("_r").alias(ROW_ID), asof_column(v)))
        out = out.join(stamped, on=ROW_ID, how="left")
    return out


@dataclass
class TrainingFrame:
    """A point-in-time training set: one row per decision point."""

    service: FeatureService
    features: list[str]
    frame: pd.DataFrame

    @property
    def views(self) -> list[FeatureView]:
        return list(self.service.stored_views)

    @property
    def label_rate(self) -> float:
        return float(self.frame[LABEL].mean()) if len(self.frame) else float("nan")


def build_training_frame(retrieval: SparkRetrieval, points: pd.DataFrame, service: FeatureService
                         ) -> TrainingFrame:
    """``points`` (keys, ``decision_time``, ``label``, ...) joined point-in-time with ``service``'s features."""
    if points.empty:
        raise ValueError(f"no decision points to build a training set for {service.name!r}")
    entity = points.reset_index(drop=True).assign(**{ROW_ID: np.arange(len(points), dtype=np.int64)})
    sdf = retrieval.spark.createDataFrame(entity.assign(
        **{c: entity[c].astype("datetime64[us, UTC]") for c in entity.columns
           if isinstance(entity[c].dtype, pd.DatetimeTZDtype)}))
    joined = retrieval.training_set(sdf, service, timestamp_col=DECISION_TIME)
    stamps = _asof_stamps(retrieval, sdf, service.stored_views)
    frame = to_pandas(joined.join(stamps, on=ROW_ID, how="left"))
    frame = frame.sort_values(ROW_ID, kind="stable").reset_index(drop=True)
    if len(frame) != len(points):
        raise RuntimeError(f"the point-in-time join returned {len(frame)} rows for {len(points)} decision points")
    return TrainingFrame(service=service, features=model_features(service), frame=frame)


def fingerprint(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """SHA-256 of ``columns`` (names, dtypes and values, in order): the same training data, the same hash."""
    part = frame[list(columns)].copy()
    for c in part.columns:  # list-valued features (top categories) hash as their joined items
        if part[c].dtype == object and part[c].map(lambda v: isinstance(v, list | tuple | np.ndarray)).any():
            part[c] = part[c].map(lambda v: "\x1f".join(map(str, v)) if v is not None else None)
    h = hashlib.sha256()
    h.update("|".join(f"{c}:{part[c].dtype}" for c in part.columns).encode())
    h.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class TimeSplit:
    """Row positions of the train and test parts, and the moments that separate them."""

    train: np.ndarray
    test: np.ndarray
    train_end: datetime
    test_start: datetime


def time_split(times: pd.Series, *, test_fraction: float, embargo: timedelta) -> TimeSplit:
    """The latest ``test_fraction`` of rows (by time) is the test set; train ends ``embargo`` before it."""
    if len(times) < 10:
        raise ValueError(f"{len(times)} rows are too few to split")
    t = times.reset_index(drop=True)
    cut = t.sort_values(kind="stable").iloc[int(len(t) * (1.0 - test_fraction))]
    train_end = cut - embargo
    train = np.flatnonzero((t < train_end).to_numpy())
    test = np.flatnonzero((t >= cut).to_numpy())
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"time split at {cut} with embargo {embargo} leaves {len(train)} train and "
                         f"{len(test)} test rows: simulate more days or shorten the embargo")
    return TimeSplit(train=train, test=test, train_end=train_end.to_pydatetime(), test_start=cut.to_pydatetime())
