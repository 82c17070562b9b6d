"""The decision log and the outcome log: day-partitioned parquet under ``data_dir``.

``<data_dir>/decisions/log/dt=YYYY-MM-DD/part-*.parquet`` holds one row per decision (:func:`decision_record`):
the feature values used, the scores, the whole probability vector and the propensity, the reasons and the
policy and model versions (every key of :meth:`Decision.log_row`, typed). ``<data_dir>/decisions/outcomes/``
holds one row per outcome received, joined or refused (``status``), with the decision id it names: outcomes
join decisions by ``decision_id`` (:func:`decisions_with_outcomes`). The day is the UTC date of ``at`` (the
decision time) and of ``time`` (the outcome time).

Written with the event log's choices (:mod:`pipelines.ingest.eventlog`): the offline tables' Arrow types
(``ARROW_TYPES``: timestamps in microseconds, timezone-aware UTC; Spark 4 rejects nanoseconds), hive partitions,
zstd, and its JSON codec (``encode_json``: nulls omitted, ISO-8601 UTC times) for the columns whose values are
of many types (features, request context, reasons). Mappings of numbers are parquet maps.

:class:`PartitionedLog` buffers rows and writes one file per partition per flush (at ``flush_rows`` rows, when
the oldest buffered row is ``flush_interval`` old, and on close), named by process and sequence so that the
workers of a service never write the same file. Rows still buffered when a process is killed are lost.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from conf.settings import Settings
from pipelines.ingest.eventlog import encode_json
from pipelines.store.offline import ARROW_TYPES
from serving.decision.context import Decision

PARTITION = "dt"
_TS, _STR, _F64, _BOOL = ARROW_TYPES["timestamp"], ARROW_TYPES["string"], ARROW_TYPES["float64"], ARROW_TYPES["bool"]
_NUMBERS = pa.map_(_STR, _F64)
_STRINGS = pa.map_(_STR, _STR)

DECISION_SCHEMA: pa.Schema = pa.schema([
    ("decision_id", _STR), ("user_id", _STR), ("session_id", _STR), ("at", _TS), ("trigger", _STR),
    ("action", _STR), ("channel", _STR), ("propensity", _F64), ("probabilities", _NUMBERS), ("scores", _NUMBERS),
    ("expected_values", _NUMBERS), ("features", _STR), ("feature_ages", _NUMBERS), ("request", _STR),
    ("reasons", _STR), ("policy_version", _STR), ("model_versions", _STRINGS), ("bucket", _STR),
    ("holdout", _BOOL), ("degraded", _BOOL), ("explored", _BOOL),
], metadata={b"kairos.schema": b"decisions", b"kairos.schema_version": b"1"})

OUTCOME_SCHEMA: pa.Schema = pa.schema([
    ("decision_id", _STR), ("outcome_type", _STR), ("reward", _F64), ("time", _TS), ("received_at", _TS),
    ("status", _STR), ("detail", _STR), ("user_id", _STR), ("decision_at", _TS), ("action", _STR),
    ("bucket", _STR), ("propensity", _F64), ("policy_version", _STR),
], metadata={b"kairos.schema": b"outcomes", b"kairos.schema_version": b"1"})

_MAPS = {"probabilities", "scores", "expected_values", "feature_ages", "model_versions"}
_JSON = {"features", "request", "reasons"}


def decision_log_path(settings: Settings) -> Path:
    return settings.data_path / "decisions" / "log"


def outcome_log_path(settings: Settings) -> Path:
    return settings.data_path / "decisions" / "outcomes"


def decision_record(decision: Decision, *, features: Mapping[str, Any], session_id: str | None = None,
                    request: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The decision log's row of ``decision``: its :meth:`~Decision.log_row`, with the features it used, the
    session and the request-time context."""
    row = decision.log_row()
    row["at"] = decision.at
    row["trigger"] = decision.reasons.trigger
    row["session_id"] = session_id
    row["features"] = dict(features)
    row["request"] = dict(request or {})
    return row


def _cell(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _MAPS:
        return [(str(k), v) for k, v in dict(value).items()]
    if name in _JSON:
        return encode_json(value)
    return value


def to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (mappings by column name; missing columns are null) as a table of ``schema``."""
    rows = list(rows)
    for r in rows:
        for f in schema:
            v = r.get(f.name)
            if isinstance(v, datetime) and (v.tzinfo is None or v.utcoffset() is None):
                raise ValueError(f"column {f.name!r} holds a time without a timezone; write UTC")
    return pa.table({f.name: pa.array([_cell(f.name, r.get(f.name)) for r in rows], type=f.type) for f in schema},
                    schema=schema)


def write_partitioned(table: pa.Table, root: Path | str, time_column: str, *, part: str) -> None:
    """``table`` under ``root`` in day partitions ``dt=YYYY-MM-DD`` (the UTC day of ``time_column``), as
    ``part-<part>-<i>.parquet``; other files are kept."""
    day = pc.strftime(table.column(time_column), format="%Y-%m-%d")
    ds.write_dataset(
        table.append_column(PARTITION, day), base_dir=str(root), format="parquet",
        partitioning=ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive"),
        existing_data_behavior="overwrite_or_ignore", basename_template=f"part-{part}-{{i}}.parquet",
        file_options=ds.ParquetFileFormat().make_write_options(coerce_timestamps="us", compression="zstd"))


def read_log(root: Path | str, schema: pa.Schema, *, start: date | None = None, end: date | None = None) -> pa.Table:
    """A log's rows (``start``/``end``, inclusive, prune days); an absent log is an empty table."""
    if not Path(root).exists() or not any(Path(root).rglob("*.parquet")):
        return schema.empty_table()
    dataset = ds.dataset(str(root), format="parquet", schema=schema.append(pa.field(PARTITION, pa.string())),
                         partitioning="hive")
    flt = None
    if start is not None:
        flt = ds.field(PARTITION) >= start.isoformat()
    if end is not None:
        cond = ds.field(PARTITION) <= end.isoformat()
        flt = cond if flt is None else flt & cond
    return dataset.to_table(filter=flt).drop_columns([PARTITION])


def read_decisions(root: Path | str, **kw: Any) -> pa.Table:
    return read_log(root, DECISION_SCHEMA, **kw)


def read_outcomes(root: Path | str, **kw: Any) -> pa.Table:
    return read_log(root, OUTCOME_SCHEMA, **kw)


def decisions_with_outcomes(decisions: pa.Table, outcomes: pa.Table) -> pa.Table:
    """Every decision, with its joined outcome (``outcome_type``, ``reward``, ``outcome_time``; null when none
    joined): a left join by ``decision_id`` of the outcomes whose ``status`` is ``joined``."""
    joined = outcomes.filter(pc.equal(outcomes.column("status"), "joined"))
    first: dict[str, int] = {}
    for i, d in enumerate(joined.column("decision_id").to_pylist()):
        first.setdefault(d, i)  # the store joins one outcome per decision; a log written twice keeps the first
    # (Acero's hash join does not carry map columns: take the matching rows by index instead)
    idx = pa.array([first.get(d) for d in decisions.column("decision_id").to_pylist()], type=pa.int64())
    out = decisions
    for src, name in (("outcome_type", "outcome_type"), ("reward", "reward"), ("time", "outcome_time")):
        out = out.append_column(name, joined.column(src).take(idx))
    return out


def loads(cell: str | None) -> Any:
    """A JSON column's value (``features``, ``request``, ``reasons``) as Python data."""
    return None if cell is None else json.loads(cell)


class PartitionedLog:
    """A buffered, thread-safe writer of one log (see the module docstring)."""

    def __init__(self, root: Path | str, schema: pa.Schema, time_column: str, *, flush_rows: int = 500,
                 flush_interval: timedelta = timedelta(seconds=5)) -> None:
        if flush_rows < 1:
            raise ValueError("flush_rows must be at least 1")
        self.root = Path(root)
        self.schema = schema
        self.time_column = time_column
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval.total_seconds()
        self._rows: list[Mapping[str, Any]] = []
        self._oldest = 0.0
        self._seq = 0
        self._lock = threading.Lock()
        self.written = 0

    def append(self, row: Mapping[str, Any]) -> None:
        """Buffer ``row``; write the buffer if it is full or old enough."""
        t = row.get(self.time_column)
        if not isinstance(t, datetime) or t.tzinfo is None or t.utcoffset() is None:
            raise ValueError(f"{self.time_column!r} must be a timezone-aware time, got {t!r}")
        with self._lock:
            if not self._rows:
                self._oldest = time.monotonic()
            self._rows.append(row)
            due = len(self._rows) >= self.flush_rows or time.monotonic() - self._oldest >= self.flush_interval
        if due:
            self.flush()

    def flush(self) -> int:
        """Write the buffered rows now; the number written."""
        with self._lock:
            rows, self._rows = self._rows, []
            if not rows:
                return 0
            self._seq += 1
            part = f"{datetime.now(UTC).strftime('%Y%m%d%H%M%S%f')}-{os.getpid()}-{self._seq}"
            write_partitioned(to_table(rows, self.schema), self.root, self.time_column, part=part)
            self.written += len(rows)
            return len(rows)

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        self.flush()
