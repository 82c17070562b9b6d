"""Importing a foreign event log: mapping, validation with source columns, sessions, idempotence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.eventlog import read_parquet
from pipelines.importer import ImportConfig, import_file

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conf" / "importers" / "retail_transactions.yaml"
GOLDEN = ROOT / "tests" / "golden" / "retail_transactions.csv"


def config(**changes: object) -> ImportConfig:
    data = yaml.safe_load(CONFIG.read_text())
    data.update(changes)
    return ImportConfig.model_validate(data)


def dead_letters(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_golden_export_imports_with_field_and_column_errors(tmp_path: Path) -> None:
    s = import_file(CONFIG, GOLDEN, tmp_path)
    assert (s.rows_read, s.accepted, s.dead_lettered, s.dropped) == (41, 36, 5, 0)
    assert s.rows_read == s.accepted + s.dead_lettered + s.dropped
    problems = {e["errors"][0]["field"] + ": " + e["errors"][0]["problem"] for e in dead_letters(s.dead_letter)}
    assert "amount: source column 'Amount': must be >= 0, got -3" in problems
    assert "user_id: source column 'CustomerID': is required" in problems
    assert "quantity: source column 'Quantity': must be an integer, got 1.5" in problems
    assert any(p.startswith("event_time: source column 'InvoiceDate': cannot read '03/09/2026'") for p in problems)
    assert any("is negative (a return or cancellation)" in p for p in problems)
    events = read_parquet(s.output).to_pylist()
    assert len(events) == 36 and {e["event_type"] for e in events} == {"purchase"}
    first = next(e for e in events if e["user_id"] == "C1000")
    assert first["ingest_time"] == first["event_time"]
    assert first["event_time"].tzinfo is not None and first["event_time"].minute == 0
    assert first["consent_personalization"] is False  # from the config, not assumed


def test_sessions_are_one_per_customer_and_day_for_date_only_data(tmp_path: Path) -> None:
    s = import_file(CONFIG, GOLDEN, tmp_path)
    events = read_parquet(s.output).to_pylist()
    by_session: dict[str, set[tuple[str, object]]] = {}
    for e in events:
        by_session.setdefault(e["session_id"], set()).add((e["user_id"], e["event_time"].date()))
    assert all(len(v) == 1 for v in by_session.values())
    assert len(by_session) == len({(e["user_id"], e["event_time"]) for e in events}) == s.sessions_synthesized


def test_session_gap_rule_and_none(tmp_path: Path) -> None:
    src = tmp_path / "clicks.csv"
    t = datetime(2026, 9, 1, 10, 0, tzinfo=UTC)
    times = [t, t + timedelta(minutes=20), t + timedelta(minutes=49), t + timedelta(minutes=80)]
    pd.DataFrame({"uid": ["a"] * 4, "ts": [x.isoformat() for x in times], "qty": ["1"] * 4,
                  "value": ["5.0"] * 4}).to_csv(src, index=False)
    cfg = config(columns={"user_id": "uid", "event_time": "ts", "quantity": "qty", "amount": "value"},
                 time={"format": "iso", "timezone": "UTC"})
    s = import_file(cfg, src, tmp_path / "a")
    sessions = [e["session_id"] for e in sorted(read_parquet(s.output).to_pylist(), key=lambda e: e["event_time"])]
    assert sessions[0] == sessions[1] == sessions[2] != sessions[3]  # 29 min gap joins, 31 min gap splits
    s2 = import_file(config(columns=cfg.columns, time=cfg.time, sessions="none"), src, tmp_path / "b")
    assert {e["session_id"] for e in read_parquet(s2.output).to_pylist()} == {None}


def test_import_is_idempotent(tmp_path: Path) -> None:
    a = read_parquet(import_file(CONFIG, GOLDEN, tmp_path / "a").output).sort_by("event_id")
    b = read_parquet(import_file(CONFIG, GOLDEN, tmp_path / "b").output).sort_by("event_id")
    assert a.equals(b)


def test_parquet_source_with_event_type_mapping(tmp_path: Path) -> None:
    src = tmp_path / "log.parquet"
    t = pd.Timestamp("2026-09-01T10:00:00Z")
    pd.DataFrame({"visitor": ["v1", "v1", "v2"], "at": [t, t + pd.Timedelta(minutes=1), t],
                  "kind": ["signin", "help", "teleport"], "q": [None, "refund", None]}).to_parquet(src)
    cfg = ImportConfig.model_validate({
        "name": "web", "format": "parquet", "columns": {"user_id": "visitor", "event_time": "at", "query": "q"},
        "event_type": {"column": "kind", "mapping": {"signin": "login", "help": "help_search"}},
        "consent": {"analytics": True, "personalization": True, "marketing": False}})
    s = import_file(cfg, src, tmp_path / "out")
    assert (s.accepted, s.dead_lettered) == (2, 1)
    assert sorted(e["event_type"] for e in read_parquet(s.output).to_pylist()) == ["help_search", "login"]
    [dl] = dead_letters(s.dead_letter)
    assert dl["errors"] == [{"field": "event_type",
                             "problem": "source column 'kind': 'teleport' has no mapping in the import config"}]


def test_returns_can_be_dropped_with_a_count(tmp_path: Path) -> None:
    s = import_file(config(negative_quantity="drop_with_count"), GOLDEN, tmp_path)
    assert (s.dropped, s.dropped_reasons, s.dead_lettered) == (1, {"negative_quantity": 1}, 4)


@pytest.mark.parametrize(("change", "message"), [
    ({"columns": {"user_id": "CustomerID", "event_time": "InvoiceDate", "colour": "Colour"}},
     "columns: 'colour' is not a Kairos event field"),
    ({"consent": None}, "consent"),
    ({"event_type": "teleport"}, "event_type"),
    ({"time": {"format": "iso", "timezone": "Mars/Olympus"}}, "time.timezone"),
])
def test_bad_configs_are_rejected_naming_the_key(tmp_path: Path, change: dict, message: str) -> None:
    data = yaml.safe_load(CONFIG.read_text())
    data.update(change)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message):
        ImportConfig.load(bad)


def test_missing_source_column_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "x.csv"
    src.write_text("CustomerID,InvoiceDate,Quantity\nC1,2026-09-01,1\n")
    with pytest.raises(ValueError, match="has no column 'Amount'"):
        import_file(CONFIG, src, tmp_path / "out")
