"""The importer: column and event-type mapping, dead letters naming the source column, sessions, idempotence."""

from __future__ import annotations

import csv
import json
import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import pipelines.ingest.importer as importer_module
from features.events import EventType, validate_event
from pipelines.ingest.eventlog import EVENT_SCHEMA, read_parquet
from pipelines.ingest.import_config import ImportConfig, ImportConfigError, SourceError
from pipelines.ingest.importer import ImportSummary, import_file

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conf" / "importers" / "retail_transactions.yaml"
GOLDEN = ROOT / "tests" / "golden" / "retail_transactions.csv"

RETURN_PROBLEM = ("source column 'Quantity': -2 is negative, a return or cancellation rather than an event; "
                  "set negative_quantity: drop_with_count to skip and count returns")
# row number (1 = first data row) -> the field errors of its dead letter, in field order
GOLDEN_DEAD_LETTERS = {
    5: [("amount", "source column 'Amount': must be >= 0, got -3")],
    9: [("user_id", "source column 'CustomerID': is required")],
    13: [("event_time", "source column 'InvoiceDate': cannot read '03/09/2026' as a time in format '%Y-%m-%d'")],
    17: [("quantity", "source column 'Quantity': must be an integer, got 1.5")],
    21: [("quantity", RETURN_PROBLEM)],
    25: [("amount", "source column 'Amount': cannot read '12,50' as a number")],
    29: [("event_time", "source column 'InvoiceDate': cannot read '2026-02-30' as a time in format '%Y-%m-%d'"),
         ("amount", "source column 'Amount': must be >= 0, got -1")],
}


def raw_config(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    data.update(changes)
    return data


def config(**changes: Any) -> ImportConfig:
    return ImportConfig.from_dict(raw_config(**changes))


def dead_letters(summary: ImportSummary) -> list[dict[str, Any]]:
    path = Path(summary.dead_letter)
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def events(summary: ImportSummary) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = read_parquet(summary.output).to_pylist()
    return rows


def nothing_lost(s: ImportSummary) -> None:
    assert s.rows_read == s.accepted + s.dead_lettered + s.dropped
    assert len(dead_letters(s)) == s.dead_lettered


def golden_rows() -> list[dict[str, str]]:
    with GOLDEN.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


# -- the key case: a retailer's export with customer id, date, quantity and amount ---------------------------------


def test_golden_export_counts_and_dead_letters_name_source_column_and_field(tmp_path: Path) -> None:
    s = import_file(CONFIG, GOLDEN, tmp_path / "events")
    assert (s.rows_read, s.accepted, s.dead_lettered, s.dropped) == (40, 33, 7, 0)
    nothing_lost(s)
    assert s.by_field == {"amount": 3, "event_time": 2, "quantity": 2, "user_id": 1}
    got = {d["payload"]["row"]: [(e["field"], e["problem"]) for e in d["errors"]] for d in dead_letters(s)}
    assert got == GOLDEN_DEAD_LETTERS
    by_row = {d["payload"]["row"]: d for d in dead_letters(s)}
    assert by_row[9]["payload"]["values"] == {"CustomerID": "", "InvoiceDate": "2026-09-03", "Quantity": "1",
                                              "Amount": "10.00"}
    assert by_row[5]["source"] == "import:retail_transactions:retail_transactions.csv"
    assert s.examples["amount"] == "amount (source column 'Amount'): must be >= 0, got -3"
    assert s.examples["user_id"] == "user_id (source column 'CustomerID'): is required"


def test_golden_export_events_are_purchases_with_configured_consent_and_utc_times(tmp_path: Path) -> None:
    s = import_file(CONFIG, GOLDEN, tmp_path / "events")
    evs = events(s)
    assert len(evs) == 33
    assert {e["event_type"] for e in evs} == {"purchase"}
    assert {(e["consent_analytics"], e["consent_personalization"], e["consent_marketing"]) for e in evs} == {
        (True, False, False)}
    assert all(e["ingest_time"] == e["event_time"] for e in evs)  # a historical import: no arrival time
    assert {e["product_id"] for e in evs} == {None} and {e["price"] for e in evs} == {None}
    by_user_time = {(e["user_id"], e["event_time"]) for e in evs}
    # a bare date is placed at 23:59:59 Europe/London: BST (UTC+1) in September, GMT in November
    assert ("C1000", datetime(2026, 9, 1, 22, 59, 59, tzinfo=UTC)) in by_user_time
    assert ("C1007", datetime(2026, 11, 2, 23, 59, 59, tzinfo=UTC)) in by_user_time
    assert all(e["event_time"].utcoffset() == timedelta(0) for e in evs)
    c1002 = sorted((e["event_time"].date(), e["quantity"], e["amount"]) for e in evs if e["user_id"] == "C1002")
    assert c1002 == [(date(2026, 9, 2), 1, 19.0), (date(2026, 9, 2), 6, 43.5), (date(2026, 9, 3), 1, 12.5),
                     (date(2026, 9, 9), 1, 7.25)]  # " C1002 " is trimmed
    assert len({e["event_id"] for e in evs}) == 33  # the two identical C1003 rows stay two purchases
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["event_id"]) for e in evs)


def test_start_of_day_places_bare_dates_at_local_midnight(tmp_path: Path) -> None:
    s = import_file(config(time={"format": "%Y-%m-%d", "timezone": "Europe/London", "date_only": "start_of_day"}),
                    GOLDEN, tmp_path / "events")
    times = {(e["user_id"], e["event_time"]) for e in events(s)}
    assert ("C1000", datetime(2026, 8, 31, 23, 0, tzinfo=UTC)) in times
    assert ("C1007", datetime(2026, 11, 2, 0, 0, tzinfo=UTC)) in times


def test_round_trip_through_the_event_log(tmp_path: Path) -> None:
    s = import_file(CONFIG, GOLDEN, tmp_path / "events")
    table = read_parquet(s.output)
    assert table.schema.equals(EVENT_SCHEMA) and table.num_rows == 33
    for row in table.to_pylist():
        record, errors = validate_event({k: v for k, v in row.items() if v is not None})
        assert errors == [] and record == row
    days = sorted(p.name for p in Path(s.output).iterdir())
    assert days == sorted({f"event_date={e['event_time'].date()}" for e in table.to_pylist()})


def test_returns_can_be_dropped_with_a_count(tmp_path: Path) -> None:
    s = import_file(config(negative_quantity="drop_with_count"), GOLDEN, tmp_path / "events")
    assert (s.accepted, s.dead_lettered, s.dropped, s.dropped_by_reason) == (33, 6, 1, {"negative_quantity": 1})
    nothing_lost(s)
    assert 21 not in {d["payload"]["row"] for d in dead_letters(s)}


# -- sessions ------------------------------------------------------------------------------------------------------


def test_date_only_data_gets_one_session_per_customer_and_day(tmp_path: Path) -> None:
    s = import_file(CONFIG, GOLDEN, tmp_path / "events")
    evs = events(s)
    sessions: dict[str, set[tuple[str, date]]] = {}
    for e in evs:
        sessions.setdefault(e["session_id"], set()).add((e["user_id"], e["event_time"].date()))
    assert all(len(keys) == 1 for keys in sessions.values())
    good = [r for i, r in enumerate(golden_rows(), start=1) if i not in GOLDEN_DEAD_LETTERS]
    assert len(sessions) == len({(r["CustomerID"].strip(), r["InvoiceDate"]) for r in good}) == 24
    assert s.sessions_synthesized == 24
    c1001 = {e["session_id"] for e in evs if e["user_id"] == "C1001" and e["event_time"].day == 5}
    assert len(c1001) == 1  # three purchases on the same day: one session


def test_session_gap_rule_and_sessions_none(tmp_path: Path) -> None:
    t = datetime(2026, 9, 1, 10, 0, tzinfo=UTC)
    minutes_a = [0, 20, 49, 79, 110]  # gaps 20, 29, 30 (not more than the gap: same session), 31 (new session)
    minutes_b = [5, 120]
    rows = [["b", (t + timedelta(minutes=m)).isoformat(), 1, "5.0"] for m in minutes_b]
    rows += [["a", (t + timedelta(minutes=m)).isoformat(), 1, "5.0"] for m in reversed(minutes_a)]  # unsorted
    src = write_csv(tmp_path / "clicks.csv", ["uid", "ts", "qty", "value"], rows)
    columns = {"user_id": "uid", "event_time": "ts", "quantity": "qty", "amount": "value"}
    cfg = config(columns=columns, time={"format": "iso", "timezone": "UTC"})
    s = import_file(cfg, src, tmp_path / "a")
    assert s.sessions_synthesized == 4
    by_user: dict[str, list[str]] = {}
    for e in sorted(events(s), key=lambda e: e["event_time"]):
        by_user.setdefault(e["user_id"], []).append(e["session_id"])
    a, b = by_user["a"], by_user["b"]
    assert a[0] == a[1] == a[2] == a[3] != a[4]
    assert b[0] != b[1] and not set(a) & set(b)

    s2 = import_file(config(columns=columns, time={"format": "iso", "timezone": "UTC"}, sessions="none"), src,
                     tmp_path / "b")
    assert s2.sessions_synthesized == 0 and s2.accepted == 7
    assert {e["session_id"] for e in events(s2)} == {None}

    s3 = import_file(config(columns=columns, time={"format": "iso", "timezone": "UTC"},
                            sessions={"synthesize": True, "gap": "2h"}), src, tmp_path / "c")
    assert s3.sessions_synthesized == 2  # one per user


def test_session_ids_depend_on_user_and_start_not_on_row_order(tmp_path: Path) -> None:
    rows = golden_rows()
    shuffled = tmp_path / "shuffled.csv"
    write_csv(shuffled, list(rows[0]), [list(r.values()) for r in reversed(rows)])

    def sessions(src: Path, out: Path) -> dict[tuple[str, datetime], str]:
        return {(e["user_id"], e["event_time"]): e["session_id"] for e in events(import_file(CONFIG, src, out))}

    assert sessions(GOLDEN, tmp_path / "a") == sessions(shuffled, tmp_path / "b")


# -- idempotence ---------------------------------------------------------------------------------------------------


def test_import_is_idempotent(tmp_path: Path) -> None:
    a = read_parquet(import_file(CONFIG, GOLDEN, tmp_path / "a" / "events").output).sort_by("event_id")
    b = read_parquet(import_file(CONFIG, GOLDEN, tmp_path / "b" / "events").output).sort_by("event_id")
    assert a.equals(b)

    out = tmp_path / "a" / "events"
    files = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    again = import_file(CONFIG, GOLDEN, out)  # the same file into the same log: replaced, not appended
    assert read_parquet(out).sort_by("event_id").equals(a)
    assert sorted(p.relative_to(out) for p in out.rglob("*.parquet")) == files
    assert len(dead_letters(again)) == 7


def test_reimporting_a_corrected_file_replaces_its_earlier_events(tmp_path: Path) -> None:
    src = tmp_path / "export.csv"
    write_csv(src, ["CustomerID", "InvoiceDate", "Quantity", "Amount"],
              [["C1", "2026-09-01", 1, "5"], ["C2", "2026-09-02", 1, "6"]])
    out = tmp_path / "events"
    import_file(CONFIG, src, out)
    write_csv(src, ["CustomerID", "InvoiceDate", "Quantity", "Amount"], [["C1", "2026-09-01", 1, "5"]])
    import_file(CONFIG, src, out)
    assert [e["user_id"] for e in read_parquet(out).to_pylist()] == ["C1"]
    assert not (out / "event_date=2026-09-02").exists()


def test_an_explicit_dead_letter_store_is_appended_to(tmp_path: Path) -> None:
    dlq = tmp_path / "shared" / "dead.jsonl"
    import_file(CONFIG, GOLDEN, tmp_path / "events", dead_letter=dlq)
    s = import_file(CONFIG, GOLDEN, tmp_path / "events", dead_letter=dlq)
    assert s.dead_letter == str(dlq) and s.dead_lettered == 7
    assert len(dlq.read_text().splitlines()) == 14


# -- other sources: parquet, event types from a column, derived amounts, times ---------------------------------------


def test_parquet_export_with_native_types(tmp_path: Path) -> None:
    src = tmp_path / "export.parquet"
    frame = pd.DataFrame({
        "CustomerID": ["C1", "C1", None, "C2", "C3"],
        "InvoiceDate": [date(2026, 9, 1), date(2026, 9, 1), date(2026, 9, 2), date(2026, 9, 3), date(2026, 11, 2)],
        "Quantity": [2.0, 1.0, 1.0, 1.5, 3.0],  # a float column, as pandas exports with gaps
        "Amount": [10.0, 5.0, 5.0, 7.5, -3.0],
    })
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), src)
    assert pq.read_schema(src).field("InvoiceDate").type == pa.date32()
    s = import_file(config(format="parquet"), src, tmp_path / "events")
    assert (s.rows_read, s.accepted, s.dead_lettered) == (5, 2, 3)
    nothing_lost(s)
    evs = sorted(events(s), key=lambda e: e["amount"])
    assert [(e["user_id"], e["quantity"], e["amount"]) for e in evs] == [("C1", 1, 5.0), ("C1", 2, 10.0)]
    assert evs[0]["event_time"] == datetime(2026, 9, 1, 22, 59, 59, tzinfo=UTC)
    assert evs[0]["session_id"] == evs[1]["session_id"] is not None
    problems = {d["payload"]["row"]: [(e["field"], e["problem"]) for e in d["errors"]] for d in dead_letters(s)}
    assert problems == {
        3: [("user_id", "source column 'CustomerID': is required")],
        4: [("quantity", "source column 'Quantity': must be an integer, got 1.5")],
        5: [("amount", "source column 'Amount': must be >= 0, got -3")],
    }


def clickstream_config(**changes: Any) -> ImportConfig:
    data: dict[str, Any] = {
        "name": "web", "format": "parquet",
        "columns": {"user_id": "visitor", "event_time": "at", "query": "q", "consent_analytics": "tracking"},
        "event_type": {"column": "kind", "mapping": {"signin": "login", "help": "help_search", "find": "search"}},
        "consent": {"analytics": False, "personalization": True, "marketing": False},
    }
    data.update(changes)
    return ImportConfig.from_dict(data)


def test_a_session_id_shared_by_users_is_dead_lettered_with_the_users_named(tmp_path: Path) -> None:
    src = tmp_path / "clicks.parquet"
    t = pd.Timestamp("2026-09-01T10:00:00Z")
    pd.DataFrame({
        "visitor": ["v1", "v1", "v2", "v3", "v3"],
        "visit": ["s1", "s9", "s1", "s3", None],  # s1 is a session of v1 and of v2
        "at": [t + pd.Timedelta(minutes=i) for i in range(5)],
        "kind": ["signin"] * 5,
    }).to_parquet(src)
    columns = {"user_id": "visitor", "event_time": "at", "session_id": "visit"}
    kinds = {"column": "kind", "mapping": {"signin": "login"}}
    s = import_file(clickstream_config(columns=columns, event_type=kinds), src, tmp_path / "events")
    assert (s.rows_read, s.accepted, s.dead_lettered) == (5, 3, 2)
    nothing_lost(s)
    got = sorted(((e["user_id"], e["session_id"]) for e in events(s)), key=str)
    assert got == [("v1", "s9"), ("v3", "s3"), ("v3", None)]
    problems = {d["payload"]["row"]: [(e["field"], e["problem"]) for e in d["errors"]] for d in dead_letters(s)}
    why = ("source column 'visit': 's1' is a session of 2 users ('v1', 'v2'); a session belongs to one user: map a "
           "column unique across users, or use `sessions: {synthesize: true}`")
    assert problems == {1: [("session_id", why)], 3: [("session_id", why)]}


def test_event_type_from_a_column_and_unmapped_values_dead_lettered(tmp_path: Path) -> None:
    src = tmp_path / "clicks.parquet"
    t = pd.Timestamp("2026-09-01T10:00:00Z")
    pd.DataFrame({
        "visitor": ["v1", "v1", "v2", "v2", "v3", "v3", "v4", "v4"],
        "at": [t + pd.Timedelta(minutes=i) for i in range(8)],
        "kind": ["signin", "help", "find", "teleport", None, "signin", "help", "find"],
        "q": [None, "refund", "shoes", None, None, "oops", None, "socks"],
        "tracking": ["yes", None, "no", "yes", "yes", "yes", "yes", "maybe"],
    }).to_parquet(src)
    s = import_file(clickstream_config(), src, tmp_path / "events")
    assert (s.rows_read, s.accepted, s.dead_lettered) == (8, 3, 5)
    nothing_lost(s)
    got = sorted((e["user_id"], e["event_type"], e["query"], e["consent_analytics"]) for e in events(s))
    assert got == [("v1", "help_search", "refund", False),  # no consent value: the stated default
                   ("v1", "login", None, True), ("v2", "search", "shoes", False)]
    assert {e["session_id"] for e in events(s)} == {None}  # sessions: none is the default
    problems = {d["payload"]["row"]: [(e["field"], e["problem"]) for e in d["errors"]] for d in dead_letters(s)}
    mapped = "(mapped values: 'find', 'help', 'signin')"
    assert problems == {
        4: [("event_type", f"source column 'kind': 'teleport' has no mapping in the import config {mapped}")],
        5: [("event_type", "source column 'kind': is empty; every row needs an event type")],
        6: [("query", "source column 'q': is not a property of login events")],
        7: [("query", "source column 'q': is required for help_search events")],
        8: [("consent_analytics", "source column 'tracking': cannot read 'maybe' as true or false")],
    }


def test_iso_times_naive_in_the_source_zone_and_with_offsets(tmp_path: Path) -> None:
    rows = [
        ["u1", "2026-09-01T12:00:00", 1, "1"],  # naive: Europe/Berlin, CEST (UTC+2)
        ["u2", "2026-09-01T12:00:00Z", 1, "1"],
        ["u3", "2026-09-01 12:00:00+05:30", 1, "1"],
        ["u4", "2026-10-25T02:30:00", 1, "1"],  # the repeated hour: the earlier instant (CEST)
        ["u5", "2026-03-29T02:30:00", 1, "1"],  # the skipped hour: shifted forward to 03:00 CEST
        ["u6", "2026-09-01", 1, "1"],  # a bare date: start of the local day by default
        ["u7", "next tuesday", 1, "1"],
    ]
    src = write_csv(tmp_path / "t.csv", ["u", "ts", "q", "a"], rows)
    cfg = config(columns={"user_id": "u", "event_time": "ts", "quantity": "q", "amount": "a"},
                 time={"format": "iso", "timezone": "Europe/Berlin"})
    s = import_file(cfg, src, tmp_path / "events")
    times = {e["user_id"]: e["event_time"] for e in events(s)}
    assert times == {
        "u1": datetime(2026, 9, 1, 10, 0, tzinfo=UTC),
        "u2": datetime(2026, 9, 1, 12, 0, tzinfo=UTC),
        "u3": datetime(2026, 9, 1, 6, 30, tzinfo=UTC),
        "u4": datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        "u5": datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        "u6": datetime(2026, 8, 31, 22, 0, tzinfo=UTC),
    }
    [dl] = dead_letters(s)
    assert dl["errors"] == [{"field": "event_time",
                             "problem": "source column 'ts': cannot read 'next tuesday' as an ISO-8601 time"}]


def test_ingest_time_from_a_column(tmp_path: Path) -> None:
    rows = [["u1", "2026-09-01T10:00:00Z", "2026-09-01T10:30:00Z", 1, "1"],
            ["u2", "2026-09-01T10:00:00Z", "2026-09-01T09:00:00Z", 1, "1"],  # received an hour before it happened
            ["u3", "2026-09-01T10:02:00Z", "2026-09-01T10:00:00Z", 1, "1"]]  # a client clock 2 minutes ahead
    src = write_csv(tmp_path / "t.csv", ["u", "ts", "received", "q", "a"], rows)
    cfg = config(columns={"user_id": "u", "event_time": "ts", "ingest_time": "received", "quantity": "q",
                          "amount": "a"}, time={"format": "iso", "timezone": "UTC"})
    s = import_file(cfg, src, tmp_path / "events")
    got = {e["user_id"]: (e["event_time"], e["ingest_time"]) for e in events(s)}
    assert got == {"u1": (datetime(2026, 9, 1, 10, 0, tzinfo=UTC), datetime(2026, 9, 1, 10, 30, tzinfo=UTC)),
                   "u3": (datetime(2026, 9, 1, 10, 0, tzinfo=UTC), datetime(2026, 9, 1, 10, 0, tzinfo=UTC))}
    [dl] = dead_letters(s)
    assert dl["errors"] == [{"field": "event_time",
                             "problem": "source column 'ts': is 3600s after ingest_time (max clock skew 300s)"}]


def test_amount_derived_from_quantity_and_unit_price(tmp_path: Path) -> None:
    rows = [["C1", "2026-09-01", 3, "0.1"], ["C2", "2026-09-01", 2, "19.99"], ["C3", "2026-09-01", 1, "abc"],
            ["C4", "2026-09-01", 2, "-1"]]
    src = write_csv(tmp_path / "lines.csv", ["CustomerID", "InvoiceDate", "Quantity", "UnitPrice"], rows)
    cfg = config(columns={"user_id": "CustomerID", "event_time": "InvoiceDate", "quantity": "Quantity",
                          "price": "UnitPrice"}, derive={"amount": "quantity * price"})
    s = import_file(cfg, src, tmp_path / "events")
    assert (s.accepted, s.dead_lettered) == (2, 2)
    got = sorted((e["user_id"], e["amount"], e["price"]) for e in events(s))
    assert got == [("C1", 0.3, None), ("C2", 39.98, None)]  # price is an input only: purchases carry no price
    problems = {d["payload"]["row"]: [(e["field"], e["problem"]) for e in d["errors"]] for d in dead_letters(s)}
    assert problems == {
        3: [("price", "source column 'UnitPrice': cannot read 'abc' as a number")],
        4: [("amount", "derived as quantity * price from source columns 'Quantity' and 'UnitPrice': "
                       "must be >= 0, got -2")],
    }


def test_validation_in_worker_processes_gives_the_same_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = import_file(CONFIG, GOLDEN, tmp_path / "one" / "events", workers=1)
    real = importer_module.validate_event
    pids = tmp_path / "pids"
    pids.mkdir()

    def recording(raw: Any) -> Any:
        (pids / str(os.getpid())).touch()
        return real(raw)

    monkeypatch.setattr(importer_module, "validate_event", recording)
    monkeypatch.setattr(importer_module, "PARALLEL_MIN_ROWS", 0)
    two = import_file(CONFIG, GOLDEN, tmp_path / "two" / "events", workers=2)
    assert {p.name for p in pids.iterdir()} - {str(os.getpid())}  # validated in forked workers
    assert read_parquet(one.output).equals(read_parquet(two.output))
    strip = [{k: v for k, v in d.items() if k != "rejected_at"} for d in dead_letters(one)]
    assert strip == [{k: v for k, v in d.items() if k != "rejected_at"} for d in dead_letters(two)]
    assert (two.accepted, two.dead_lettered, two.by_field) == (one.accepted, one.dead_lettered, one.by_field)


def test_output_is_checked_against_the_validated_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importer_module.validate_event

    def normalising_differently(raw: Any) -> Any:
        record, errors = real(raw)
        return ({**record, "country": "GB"} if record else None), errors

    monkeypatch.setattr(importer_module, "validate_event", normalising_differently)
    with pytest.raises(RuntimeError, match=r"differs from its validated record in \['country'\]"):
        import_file(CONFIG, GOLDEN, tmp_path / "events")


# -- config and source errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"columns": {"user_id": "CustomerID", "event_time": "InvoiceDate", "quantity": "Quantity", "amount": "Amount",
                  "colour": "Colour"}}, "columns.colour: 'colour' is not a Kairos event field"),
    ({"columns": {"user_id": "CustomerID", "event_time": "InvoiceDate", "amount": "Amount"}},
     "columns.quantity: purchase events require quantity; map it to a source column"),
    ({"columns": {"user_id": "CustomerID", "event_time": "InvoiceDate", "quantity": "Quantity", "amount": "Amount",
                  "page": "Page"}}, "columns.page: 'page' is not a property of purchase events"),
    ({"columns": {"event_time": "InvoiceDate", "quantity": "Quantity", "amount": "Amount"}},
     "columns.user_id: must be mapped to a source column"),
    ({"consent": None}, "consent: Input should be a valid dictionary"),
    ({"consent": {"analytics": True, "marketing": False}},
     "consent.personalization: the source has no column for consent_personalization; state the default explicitly"),
    ({"consent": {"analytics": "maybe", "personalization": False, "marketing": False}},
     "consent.analytics: Input should be a valid boolean"),
    ({"event_type": "teleport"}, "event_type: 'teleport' is not a Kairos event type"),
    ({"event_type": {"column": "Kind", "mapping": {"sale": "buy"}}}, "event_type.mapping.sale: Input should be"),
    ({"time": {"format": "iso", "timezone": "Mars/Olympus"}}, "time.timezone: 'Mars/Olympus' is not a known time zone"),
    ({"time": {"format": "dd/mm/yyyy"}}, "time.format: 'dd/mm/yyyy' is neither 'iso' nor a strptime format"),
    ({"sessions": {"synthesize": True, "gap": "soon"}}, "sessions.gap: 'soon' is not a duration"),
    ({"sessions": "always"}, "sessions: 'always': use `none`"),
    ({"sessions": {"synthesize": True, "gap": "0m"}}, "sessions.gap: must be a positive duration"),
    ({"columns": {"user_id": "CustomerID", "event_time": "InvoiceDate", "quantity": "Quantity", "amount": "Amount",
                  "session_id": "Visit"}}, "sessions: the source has sessions (columns.session_id)"),
    ({"negative_quantity": "ignore"}, "negative_quantity: Input should be 'dead_letter' or 'drop_with_count'"),
    ({"derive": {"amount": "quantity * price"}}, "derive.amount: quantity * price needs columns.price mapped"),
    ({"format": "xlsx"}, "format: Input should be 'csv' or 'parquet'"),
    ({"name": "Retail Transactions"}, "name: String should match pattern"),
    ({"colour": "red"}, "colour: unknown key"),
])
def test_bad_configs_are_rejected_naming_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw_config(**change)))
    with pytest.raises(ImportConfigError, match=f"^import config {re.escape(str(bad))}: .*{re.escape(message)}"):
        ImportConfig.load(bad)


def test_the_shipped_config_is_valid() -> None:
    cfg = ImportConfig.load(CONFIG)
    assert cfg.event_types == [EventType.PURCHASE] and cfg.synthesize_sessions
    assert cfg.source_columns == ["Amount", "CustomerID", "InvoiceDate", "Quantity"]


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(ImportConfigError, match="does not exist"):
        ImportConfig.load(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ImportConfigError, match="must be a mapping"):
        ImportConfig.load(listy)


def test_missing_source_column_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "x.csv"
    src.write_text("CustomerID,InvoiceDate,Quantity\nC1,2026-09-01,1\n")
    with pytest.raises(SourceError, match=r"columns.amount: input x.csv has no column 'Amount'"):
        import_file(CONFIG, src, tmp_path / "out")
