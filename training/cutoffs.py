"""Decision points at cutoff dates, their labels and the split by cutoff: a CRM's churn or repurchase question.

A task with ``decision_points: cutoffs`` (:class:`conf.settings.TrainingTaskSettings`) asks its question of
every customer at each cutoff date: at cutoff ``c`` the points are the customers with a consented event before
``c`` (``event_time < c``), each at ``decision_time = c``. Features are as of ``c`` (only what arrived by ``c``);
the label looks strictly after it:

* ``target: purchase``: the customer buys in ``(c, c + horizon]``;
* ``target: churn``: no event of the customer in ``(c, c + horizon]``.

Cutoffs follow ``schedule`` (UTC midnights: each day, each Monday, the 1st of each month) from ``first_cutoff``,
or from the first schedule date at least ``min_history`` after the log's first event, up to the last cutoff whose
label window ends inside the log (``c + horizon <= log end``). The latest ``test_cutoffs`` cutoffs are the holdout;
a cutoff trains only if its label window has closed by the first test cutoff (``c + horizon <= first test
cutoff``), so no training label sees the test period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from conf.settings import TrainingTaskSettings
from training.datasets import TimeSplit
from training.labels import DECISION_TIME, LABEL, log_end

CUTOFF_COLUMNS = ("user_id", DECISION_TIME)


def _next_on_schedule(t: datetime, schedule: str) -> datetime:
    """The first schedule date at or after ``t`` (UTC midnights)."""
    day = datetime(t.year, t.month, t.day, tzinfo=UTC)
    if day < t:
        day += timedelta(days=1)
    if schedule == "daily":
        return day
    if schedule == "weekly":
        return day + timedelta(days=(7 - day.weekday()) % 7)  # Monday
    if day.day == 1:
        return day
    return datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)


def _step(t: datetime, schedule: str) -> datetime:
    if schedule == "daily":
        return t + timedelta(days=1)
    if schedule == "weekly":
        return t + timedelta(days=7)
    return datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)


def cutoff_dates(events: pd.DataFrame, cfg: TrainingTaskSettings) -> list[datetime]:
    """The task's cutoffs on its schedule whose label window ends inside the log."""
    first_event = pd.Timestamp(events["event_time"].min()).to_pydatetime()
    end = log_end(events).to_pydatetime()
    t = cfg.first_cutoff or _next_on_schedule(first_event + cfg.min_history, cfg.schedule)
    out: list[datetime] = []
    while t + cfg.horizon <= end:
        out.append(t)
        t = _step(t, cfg.schedule)
    return out


def cutoff_points(events: pd.DataFrame, cutoffs: list[datetime]) -> pd.DataFrame:
    """One row per (customer seen before the cutoff, cutoff): ``user_id, decision_time``, sorted by time."""
    consented = events["consent_analytics"].fillna(False).astype(bool)
    first = events.loc[consented].groupby("user_id")["event_time"].min()
    parts = []
    for c in cutoffs:
        seen = first.index[(first < pd.Timestamp(c)).to_numpy()]
        parts.append(pd.DataFrame({"user_id": seen.to_numpy(), DECISION_TIME: pd.Timestamp(c)}))
    if not parts:
        return pd.DataFrame({"user_id": pd.Series(dtype=object),
                             DECISION_TIME: pd.Series(dtype="datetime64[us, UTC]")})
    out = pd.concat(parts, ignore_index=True)
    out[DECISION_TIME] = out[DECISION_TIME].astype("datetime64[us, UTC]")
    return out.sort_values([DECISION_TIME, "user_id"], kind="stable").reset_index(drop=True)


def cutoff_labels(points: pd.DataFrame, events: pd.DataFrame, cfg: TrainingTaskSettings) -> pd.DataFrame:
    """``points`` with ``label``: a purchase (``target: purchase``) or no event at all (``churn``) in
    ``(t, t + horizon]``; points whose window reaches past the log's end are dropped."""
    end = log_end(events)
    kept = points[points[DECISION_TIME] + cfg.horizon <= end].copy()
    wanted = events if cfg.target == "churn" else events[events["event_type"] == "purchase"]
    times = wanted[["user_id", "event_time"]].sort_values("event_time", kind="stable")
    left = kept[["user_id", DECISION_TIME]].reset_index().sort_values(DECISION_TIME, kind="stable")
    right = times.rename(columns={"event_time": "_next"}).assign(_key=lambda d: d["_next"])
    merged = pd.merge_asof(left, right, left_on=DECISION_TIME, right_on="_key", by="user_id", direction="forward",
                           allow_exact_matches=False).set_index("index")["_next"].reindex(kept.index)
    within = merged.notna() & (merged - kept[DECISION_TIME] <= cfg.horizon)
    kept[LABEL] = (~within if cfg.target == "churn" else within).astype("int64")
    return kept.reset_index(drop=True)


@dataclass(frozen=True)
class CutoffSplit(TimeSplit):
    """A :class:`training.datasets.TimeSplit` by cutoff, with the cutoffs of each side."""

    train_cutoffs: tuple[datetime, ...] = ()
    test_cutoffs: tuple[datetime, ...] = ()


def cutoff_split(times: pd.Series, *, test_cutoffs: int, horizon: timedelta) -> CutoffSplit:
    """The latest ``test_cutoffs`` cutoffs are the test set; a cutoff trains when ``c + horizon`` is no later than
    the first test cutoff (its label window has closed before the test period starts)."""
    t = times.reset_index(drop=True)
    cuts = sorted(pd.Timestamp(c).to_pydatetime() for c in t.unique())
    if len(cuts) <= test_cutoffs:
        raise ValueError(f"{len(cuts)} cutoffs leave none to train on with {test_cutoffs} test cutoffs: "
                         "a longer log, a shorter horizon or fewer test cutoffs")
    test = cuts[-test_cutoffs:]
    train = [c for c in cuts if c + horizon <= test[0]]
    if not train:
        raise ValueError(f"no cutoff's {horizon} label window closes by the first test cutoff {test[0]:%Y-%m-%d}: "
                         "a longer log or a shorter horizon")
    stamps = t.map(lambda v: pd.Timestamp(v).to_pydatetime())
    train_rows = np.flatnonzero(stamps.isin(train).to_numpy())
    test_rows = np.flatnonzero(stamps.isin(test).to_numpy())
    return CutoffSplit(train=train_rows, test=test_rows, train_end=train[-1] + horizon, test_start=test[0],
                       train_cutoffs=tuple(train), test_cutoffs=tuple(test))
