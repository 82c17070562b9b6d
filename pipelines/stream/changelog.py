"""The changelog and drops-log codec: rows and drop records to JSON lines and back, and reading the logs.

* the **changelog** (``settings.data_path/stream/changelog/part-*.jsonl``): every emitted row with its view,
  key, ``event_timestamp`` and all its values (a list in the view's feature order; :func:`decode_row` names
  them); the parity record;
* the **drops log** (``.../stream/drops/``): one line per late, duplicate, non-consented or invalid event, named
  by its source position, and per collision; :func:`read_drops` counts them.

A batch's rows are encoded in one msgspec call per log file (:func:`lines_by_part`).
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from features.events import parse_time
from features.registry import REGISTRY, Registry
from features.semantics import Collision, Drop
from pipelines.stream.types import EVENT_TIMESTAMP, INVALID, DropRecord, FeatureRow, Row


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # Kairos times are UTC already: "...+00:00"
        return (value if value.utcoffset() == timedelta(0) else value.astimezone(UTC)).isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_json_default)
_LINES = _ENCODER  # ``encode_lines``: a list of rows (or records) to JSON lines in one call


def encode_drops(drops: Sequence[DropRecord]) -> bytes:
    """Drop records as JSON lines, in one call."""
    return _ENCODER.encode_lines([d._asdict() for d in drops])


def _dumps(obj: Any) -> str:
    """Compact JSON (msgspec: ~5x the standard library; UTC datetimes as RFC 3339 ``...Z``)."""
    return _ENCODER.encode(obj).decode()


def part_of(key: str) -> int:
    """The hash that spreads keys over a log's files (stable across processes, unlike ``hash``)."""
    return zlib.adler32(key.encode())


def lines_by_part(parts: int) -> Callable[[list[tuple[str, list[Row]]]], list[tuple[str, bytes]]]:
    """A batch of ``(state key, rows)`` as one encoded chunk per log part: a key goes to the part its key
    would route it to (its rows stay together, in order), and the sink routes 4 items instead of one per key."""

    def encode(xs: list[tuple[str, list[Row]]]) -> list[tuple[str, bytes]]:
        chunks: dict[int, list[Row]] = {}
        for key, rows in xs:
            part = part_of(key) % parts
            chunk = chunks.get(part)
            if chunk is None:
                chunks[part] = list(rows)
            else:
                chunk.extend(rows)
        return [(str(part), _LINES.encode_lines(rows)) for part, rows in chunks.items()]

    return encode


def encode_row(row: FeatureRow) -> str:
    return _dumps({"view": row.view, "key": row.key, EVENT_TIMESTAMP: row.event_timestamp, "values": row.values})


def decode_row(line: str | bytes, registry: Registry = REGISTRY) -> FeatureRow:
    """A changelog line back to a row with spec-typed values (timestamps as UTC datetimes).

    ``values`` is a list in spec order (:class:`Row`, what the dataflow writes) or an object by name."""
    obj = json.loads(line)
    view = registry.view(obj["view"])
    values = obj["values"]
    if isinstance(values, list):
        names = view.feature_names
        if len(values) != len(names):
            raise ValueError(f"a {view.name} row has {len(values)} values, the spec {len(names)} features")
        values = dict(zip(names, values, strict=True))
    for f in view.features:
        if f.dtype == "timestamp" and values.get(f.name) is not None:
            values[f.name] = parse_time(values[f.name])
    return FeatureRow(obj["view"], obj["key"], parse_time(obj[EVENT_TIMESTAMP]), values)


def _lines(directory: Path) -> Iterable[bytes]:
    for path in sorted(Path(directory).glob("part-*.jsonl")):
        with open(path, "rb") as fh:
            yield from (line for line in fh if line.strip())


def read_changelog(directory: Path, registry: Registry = REGISTRY) -> list[FeatureRow]:
    """Every row of a changelog directory (per key in emission order)."""
    return [decode_row(line, registry) for line in _lines(directory)]


def timelines(rows: Iterable[FeatureRow]) -> dict[tuple[str, str], dict[datetime, dict[str, Any]]]:
    """``(view, key) -> {change point: values}``; a change point written twice keeps its last row."""
    out: dict[tuple[str, str], dict[datetime, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        out[(r.view, r.key)][r.event_timestamp] = r.values
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def read_drops(directory: Path) -> dict[str, int]:
    """Drops per reason (``late``, ``duplicate``, ``no_consent``, ``invalid``) and collisions per kind
    (``id_collision``, ``session_collision``: counted, not dropped), each record id once."""
    seen: dict[str, str] = {}
    for line in _lines(directory):
        obj = json.loads(line)
        seen[obj["id"]] = obj["reason"]
    counts = Counter(seen.values())
    return {r: counts.get(r, 0) for r in (*(d.value for d in Drop), INVALID, *(c.value for c in Collision))}

