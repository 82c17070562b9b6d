"""The GE training-set suite: passes the real point-in-time frame, stops leaks and bad labels by name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.registry import REGISTRY
from tests.model.conftest import Trained
from training.pipeline import PURCHASE, Task, training_set_spec
from validation.run import DataValidationError
from validation.training_suite import LEAD_SUFFIX, TrainingSetSpec, validate_training_set


@pytest.fixture(scope="module")
def spec(trained: Trained) -> TrainingSetSpec:
    return training_set_spec(Task(PURCHASE, trained.settings.training.purchase))


def test_the_point_in_time_frame_passes_and_data_docs_are_built(spec: TrainingSetSpec, purchase_frame: pd.DataFrame,
                                                               tmp_path: Path) -> None:
    outcome = validate_training_set(purchase_frame, spec, docs_dir=tmp_path / "docs")
    assert outcome.success and outcome.evaluated > 100
    assert outcome.docs_index is not None and outcome.docs_index.read_text().lower().startswith("<!doctype html")
    # the frame carries an as-of time per stored view, and every one is at or before the decision
    for col in spec.asof_columns:
        stamps = purchase_frame[col].dropna()
        assert len(stamps) > 0.5 * len(purchase_frame), col
        assert (stamps <= purchase_frame.loc[stamps.index, "decision_time"]).all(), col


def test_a_feature_timestamp_after_the_decision_fails_naming_the_column(spec: TrainingSetSpec,
                                                                       purchase_frame: pd.DataFrame) -> None:
    leaked = purchase_frame.copy()
    rows = leaked.index[:4]
    leaked.loc[rows, "user_commerce_event_timestamp"] = leaked.loc[rows, "decision_time"] + pd.Timedelta(hours=1)
    with pytest.raises(DataValidationError) as exc:
        validate_training_set(leaked, spec)
    message = str(exc.value)
    assert "training_set.purchase_propensity" in message and "FAILED 1 of" in message
    assert f"column 'user_commerce_event_timestamp{LEAD_SUFFIX}': expect_column_values_to_be_between" in message
    assert "4 unexpected values" in message and "user_commerce_event_timestamp after decision_time in 4 rows" in message


def test_a_timestamp_feature_after_the_decision_fails_too(spec: TrainingSetSpec, purchase_frame: pd.DataFrame) -> None:
    leaked = purchase_frame.copy()
    leaked.loc[leaked.index[0], "session_last_event_at_24h"] = leaked.loc[leaked.index[0], "decision_time"] \
        + pd.Timedelta(minutes=2)
    with pytest.raises(DataValidationError, match=f"column 'session_last_event_at_24h{LEAD_SUFFIX}'"):
        validate_training_set(leaked, spec)


def test_a_label_rate_outside_the_band_fails_with_the_rate(spec: TrainingSetSpec,
                                                           purchase_frame: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError) as exc:
        validate_training_set(purchase_frame.assign(label=1), spec)
    assert ("column 'label': expect_column_mean_to_be_between — failed, e.g. ['label rate 1.0000 outside the band "
            "[0.01, 0.5] for purchase_propensity']") in str(exc.value)


def test_missing_columns_nulls_and_bad_labels_are_named(spec: TrainingSetSpec, purchase_frame: pd.DataFrame) -> None:
    broken = purchase_frame.drop(columns=["session_engagement_score_5m"]).copy()
    broken["user_logins_7d"] = broken["user_logins_7d"].astype("float64")
    broken.loc[broken.index[:3], "user_logins_7d"] = None
    broken.loc[broken.index[5], "label"] = 2
    with pytest.raises(DataValidationError) as exc:
        validate_training_set(broken, spec)
    message = str(exc.value)
    assert "table: expect_table_columns_to_match_set" in message
    assert "column 'user_logins_7d': expect_column_values_to_not_be_null — 3 unexpected values" in message
    assert "column 'label': expect_column_values_to_be_in_set — 1 unexpected values, e.g. [2]" in message


def test_the_suite_covers_every_service_feature(spec: TrainingSetSpec) -> None:
    service = REGISTRY.service("purchase_propensity_v1")
    assert {f.name for v in service.views for f in v.features} <= set(spec.columns)
    assert spec.asof_columns == ["user_commerce_event_timestamp", "user_account_event_timestamp",
                                 "session_activity_event_timestamp"]
