"""Decision points at cutoffs: the schedule, who is asked, the labels and a split no label window crosses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from pydantic import ValidationError

from conf.settings import TrainingTaskSettings, load_settings
from training.cutoffs import cutoff_dates, cutoff_labels, cutoff_points, cutoff_split
from training.labels import DECISION_TIME, LABEL


def log(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "event_type", "event_time"])
    df["event_time"] = pd.to_datetime(df["event_time"], utc=True).astype("datetime64[us, UTC]")
    df["consent_analytics"] = True
    return df


EVENTS = log([("a", "purchase", "2025-01-10T23:59:59"), ("b", "purchase", "2025-02-20T12:00:00"),
              ("a", "purchase", "2025-04-15T08:00:00"), ("b", "page_view", "2025-05-02T08:00:00"),
              ("c", "purchase", "2025-06-30T23:59:59"), ("a", "purchase", "2025-09-30T23:59:59")])


def task(**kw: object) -> TrainingTaskSettings:
    return TrainingTaskSettings(feature_service="customer_value_v1", **{"horizon": "60d", **kw})  # type: ignore[arg-type]


def test_monthly_cutoffs_start_after_the_minimum_history_and_end_where_labels_are_known() -> None:
    cuts = cutoff_dates(EVENTS, task(min_history="30d"))
    # first event 2025-01-10 + 30 days = 02-09: the next 1st of a month is 03-01; the last is 08-01, whose
    # 60 days end 09-30 00:00, before the log's last event (09-30 23:59:59); 09-01's would end after it
    assert cuts == [datetime(2025, m, 1, tzinfo=UTC) for m in range(3, 9)]
    weekly = cutoff_dates(EVENTS, task(schedule="weekly", first_cutoff=datetime(2025, 3, 3, tzinfo=UTC)))
    assert weekly[:2] == [datetime(2025, 3, 3, tzinfo=UTC), datetime(2025, 3, 10, tzinfo=UTC)]
    assert all(c.weekday() == 0 for c in weekly)


def test_every_customer_seen_before_a_cutoff_is_asked_there_and_labelled_by_the_horizon() -> None:
    cuts = [datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC)]
    points = cutoff_points(EVENTS, cuts)
    assert points.groupby(DECISION_TIME)["user_id"].apply(list).tolist() == [["a"], ["a", "b"], ["a", "b", "c"]]
    labelled = cutoff_labels(points, EVENTS, task())
    got = {(r.user_id, r.decision_time.month): r.label for r in labelled.itertuples()}
    # a buys on 04-15: within 60 days of 03-01 but not of 02-01; b never buys again; at 07-01 nobody buys by 08-30
    assert got == {("a", 2): 0, ("a", 3): 1, ("b", 3): 0, ("a", 7): 0, ("b", 7): 0, ("c", 7): 0}
    churn = cutoff_labels(points, EVENTS, task(target="churn"))
    # churn: no event at all within the horizon; b's page view of 05-02 is 62 days after 03-01
    lapsed = {(u, t.month): y for u, t, y in zip(churn["user_id"], churn[DECISION_TIME], churn[LABEL], strict=True)}
    assert lapsed[("b", 3)] == 1


def test_the_split_by_cutoff_keeps_every_train_label_window_out_of_the_test_period() -> None:
    cuts = [datetime(2025, m, 1, tzinfo=UTC) for m in range(1, 13)]
    times = pd.Series([c for c in cuts for _ in range(3)]).astype("datetime64[us, UTC]")
    split = cutoff_split(times, test_cutoffs=3, horizon=timedelta(days=90))
    assert split.test_cutoffs == tuple(cuts[-3:])
    assert all(c + timedelta(days=90) <= split.test_start for c in split.train_cutoffs)
    assert split.train_cutoffs == tuple(cuts[:7])  # 07-01 + 90 days = 09-29, by 10-01; 08-01's ends 10-30
    assert len(split.train) == 21 and len(split.test) == 9 and not set(split.train) & set(split.test)
    with pytest.raises(ValueError, match="none to train on"):
        cutoff_split(times, test_cutoffs=12, horizon=timedelta(days=90))


def test_tasks_are_configured_in_settings_and_checked() -> None:
    s = load_settings(training={"run": ["repurchase_90d"]})
    t = s.training.tasks["repurchase_90d"]
    assert (t.decision_points, t.schedule, t.horizon, t.feature_service) == (
        "cutoffs", "monthly", timedelta(days=90), "customer_value_v1")
    with pytest.raises(ValidationError, match="neither built-in tasks"):
        load_settings(training={"run": ["nope"]})
    with pytest.raises(ValidationError, match="UTC midnight"):
        task(first_cutoff=datetime(2025, 3, 3, 12, tzinfo=UTC))
