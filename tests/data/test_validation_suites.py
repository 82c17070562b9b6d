"""The spec-derived Great Expectations suites pass good data and stop bad data with a clear message."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.events import EventType
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from features.state import sweep
from pipelines.ingest.eventlog import records_to_table
from tests.adversarial import adversarial_log
from tests.builders import T0, make_event
from validation.run import DataValidationError, validate_frame
from validation.suites import all_suites, feature_table_suite, raw_events_suite


def events_frame() -> pd.DataFrame:
    return records_to_table([make_event(t, event_time=T0 + timedelta(minutes=i))
                             for i, t in enumerate(EventType)]).to_pandas()


def test_good_events_pass_and_data_docs_are_built(tmp_path: Path) -> None:
    outcome = validate_frame(events_frame(), raw_events_suite(), dataset="sample", docs_dir=tmp_path / "docs")
    assert outcome.success and outcome.evaluated > 30
    assert outcome.docs_index is not None and outcome.docs_index.read_text().lower().startswith("<!doctype html")


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("price", -1.0, "column 'price': expect_column_values_to_be_between — 1 unexpected values, e.g. [-1.0]"),
    ("event_type", "teleport", "column 'event_type': expect_column_values_to_be_in_set"),
    ("user_id", None, "column 'user_id': expect_column_values_to_not_be_null"),
])
def test_bad_events_fail_naming_column_and_problem(column: str, value: object, expected: str) -> None:
    df = events_frame()
    row = df.index[df[column].notna()][0]
    df.loc[row, column] = value
    with pytest.raises(DataValidationError) as exc:
        validate_frame(df, raw_events_suite(), dataset="broken")
    assert "raw_events on broken: FAILED" in str(exc.value)
    assert expected in str(exc.value)


def test_future_events_and_reversed_clocks_fail() -> None:
    df = events_frame()
    df.loc[0, "event_time"] = pd.Timestamp("2100-01-01", tz="UTC")
    df.loc[0, "ingest_time"] = pd.Timestamp("2100-01-01", tz="UTC")
    df.loc[1, "ingest_time"] = df.loc[1, "event_time"] - pd.Timedelta(hours=1)
    with pytest.raises(DataValidationError) as exc:
        validate_frame(df, raw_events_suite(now=T0 + timedelta(days=1)), dataset="clocks")
    message = str(exc.value)
    assert "column 'event_time': expect_column_values_to_be_between" in message
    assert "column 'ingest_time': expect_column_pair_values_a_to_be_greater_than_b" in message


def test_feature_tables_from_the_state_machine_pass_their_suites() -> None:
    ref = Reference(adversarial_log(5), rules=EventRules(allowed_lateness=timedelta(hours=1)))
    for view in REGISTRY.views:
        rows = [{view.entity.join_key: key, "event_timestamp": t, **values}
                for key in ref.keys(view) for t, values in sweep(view, ref.entity_events(view, key))]
        df = pd.DataFrame(rows)
        assert validate_frame(df, feature_table_suite(view), dataset=view.name).success
        broken = df.copy()
        first_float = next(f for f in view.features if f.dtype == "float64" and f.min_value is not None)
        broken.loc[broken.index[0], first_float.name] = -1e9
        with pytest.raises(DataValidationError, match=f"column '{first_float.name}'"):
            validate_frame(broken, feature_table_suite(view), dataset=view.name)


def test_there_is_a_suite_per_view() -> None:
    assert set(all_suites()) == {"raw_events", *(f"features.{v.name}" for v in REGISTRY.views)}
