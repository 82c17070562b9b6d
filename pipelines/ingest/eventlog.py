"""Event-log codecs (parquet and JSON lines) and the dead-letter store.

Both codecs are derived from the field table in :mod:`features.events`. Parquet
timestamps are written in microseconds (Spark 4 rejects nanosecond parquet
timestamps), day-partitioned by ``event_date`` of ``event_time`` (hive style,
``event_date=YYYY-MM-DD``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from features.events import ALL_FIELDS, FieldError, validate_event
from pipelines.store.offline import ARROW_TYPES, PARTITION

EVENT_SCHEMA: pa.Schema = pa.schema(
    [pa.field(f.name, ARROW_TYPES[f.dtype], nullable=True) for f in ALL_FIELDS],
    metadata={b"kairos.schema": b"events", b"kairos.schema_version": b"1"},
)


def records_to_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Normalised records (see :func:`features.events.validate_event`) to an Arrow table."""
    rows = records if isinstance(records, list) else list(records)
    return pa.table({f.name: pa.array([r.get(f.name) for r in rows], type=f.type) for f in EVENT_SCHEMA},
                    schema=EVENT_SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """Cast a table to the event schema: microsecond UTC timestamps, all columns present."""
    cols = []
    for f in EVENT_SCHEMA:
        if f.name in table.column_names:
            col = table.column(f.name)
            if pa.types.is_timestamp(col.type) and col.type.tz is None:
                raise ValueError(f"column {f.name!r} holds timestamps without a timezone; write UTC")
            cols.append(col.cast(f.type, safe=False) if col.type != f.type else col)
        else:
            cols.append(pa.nulls(table.num_rows, type=f.type))
    return pa.Table.from_arrays(cols, schema=EVENT_SCHEMA)


def write_parquet(table: pa.Table, root: str | os.PathLike[str], *, existing: str = "overwrite_or_ignore",
                  part: str | None = None) -> None:
    """Write events day-partitioned under ``root`` (``event_date=YYYY-MM-DD/part-*.parquet``).

    ``part`` names the files of this write (default: a timestamp); writers running in
    parallel must pass distinct names.
    """
    table = conform(table)
    day = pc.strftime(table.column("event_time"), format="%Y-%m-%d")
    table = table.append_column(PARTITION, day)
    ds.write_dataset(
        table,
        base_dir=str(root),
        format="parquet",
        partitioning=ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive"),
        existing_data_behavior=existing,
        basename_template=f"part-{part or datetime.now(UTC).strftime('%Y%m%d%H%M%S%f')}-{{i}}.parquet",
        file_options=ds.ParquetFileFormat().make_write_options(coerce_timestamps="us", compression="zstd"),
    )


def read_parquet(root: str | os.PathLike[str], *, start: date | None = None, end: date | None = None) -> pa.Table:
    """Read a day-partitioned event log; ``start``/``end`` (inclusive) prune partitions."""
    dataset = ds.dataset(str(root), format="parquet", partitioning="hive")
    flt = None
    if start is not None:
        flt = ds.field(PARTITION) >= start.isoformat()
    if end is not None:
        cond = ds.field(PARTITION) <= end.isoformat()
        flt = cond if flt is None else flt & cond
    table = dataset.to_table(filter=flt)
    if PARTITION in table.column_names:
        table = table.drop_columns([PARTITION])
    return conform(table)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_json(record: Mapping[str, Any]) -> str:
    """One event as one JSON line (nulls omitted, ISO-8601 UTC times)."""
    return json.dumps({k: v for k, v in record.items() if v is not None}, default=_json_default,
                      separators=(",", ":"))


def decode_json(line: str | bytes) -> dict[str, Any]:
    """Parse one JSON line into a raw event mapping (validate it with ``validate_event``)."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON event must be an object, got {type(obj).__name__}")
    return obj


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> int:
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(encode_json(r))
            fh.write("\n")
            n += 1
    return n


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[str]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line


def table_to_records(table: pa.Table) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = conform(table).to_pylist()
    return records


@dataclass
class DeadLetterStore:
    """Append-only JSON-lines store for rejected input, with counts by field and problem.

    Each line holds the raw payload (as received), the source it came from, when it
    was rejected and the list of field errors. Nothing is dropped silently.
    """

    path: Path
    source: str
    counts: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def put(self, payload: Any, errors: list[FieldError]) -> None:
        entry = {
            "source": self.source,
            "rejected_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "errors": [{"field": e.field, "problem": e.problem} for e in errors],
            "payload": payload if isinstance(payload, str | dict | list) else repr(payload),
        }
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=_json_default, separators=(",", ":")))
            fh.write("\n")
        self.total += 1
        for e in errors:
            self.counts[e.field] += 1

    def summary(self) -> dict[str, Any]:
        return {"dead_lettered": self.total, "by_field": dict(self.counts.most_common()), "path": str(self.path)}


@dataclass
class ValidationReport:
    accepted: int
    rejected: int
    by_field: dict[str, int]


def validate_records(
    raws: Iterable[Mapping[str, Any]], dead_letters: DeadLetterStore
) -> tuple[list[dict[str, Any]], ValidationReport]:
    """Split raw events into valid normalised records and dead letters."""
    good: list[dict[str, Any]] = []
    before = dead_letters.total
    before_counts = Counter(dead_letters.counts)
    for raw in raws:
        rec, errors = validate_event(raw)
        if rec is None:
            dead_letters.put(dict(raw), errors)
        else:
            good.append(rec)
    by_field = dict((dead_letters.counts - before_counts).most_common())
    return good, ValidationReport(accepted=len(good), rejected=dead_letters.total - before, by_field=by_field)
