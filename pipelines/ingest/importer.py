"""Turn someone else's event log (CSV or parquet) into Kairos events.

A YAML config (``conf/importers/*.yaml``, validated by :class:`ImportConfig`) maps
Kairos fields to source columns and source values to event types::

    kairos import --mapping conf/importers/retail_transactions.yaml \\
        --input export.csv [--out var/data/events] [--dead-letter var/data/dead_letter/x.jsonl]

How a row becomes an event
--------------------------
* Columns are parsed vectorised (pandas), each distinct raw value once. A value
  that cannot be read (a date, a number, a boolean) dead-letters its row.
* Naive source times are in ``time.timezone`` and stored as UTC. An ambiguous
  local time (the repeated hour when clocks go back) is read as the earlier
  instant; a non-existent one (the skipped hour) is shifted forward to the first
  valid instant. A date without a time is placed at the start (00:00:00) or the
  end (23:59:59) of that local day (``time.date_only``); the end is the
  leakage-safe choice for training, since the event is then never visible to a
  feature before it happened.
* Consent: a consent field with no source column takes the default stated in
  ``consent:``; the config is rejected when it states none (nothing is assumed).
* ``derive: {amount: quantity * price}`` computes the order value from units and
  unit price where the source has no amount; ``price`` is then only an input and
  is not stored on event types that have no ``price`` property (``purchase``).
* Negative quantities are returns or cancellations: ``negative_quantity:
  dead_letter`` (default) rejects them with a clear problem text,
  ``drop_with_count`` skips them and counts them in ``dropped``.
* Every event then goes through :func:`features.events.validate_event`, like
  every other ingest. A rejected row goes to the :class:`DeadLetterStore` with the
  whole source row and its row number (1 = the first data row); each field error
  has the Kairos field as ``field`` and names the source column in ``problem``
  (``amount`` / ``source column 'Amount': must be >= 0, got -3``; the summary
  shows one example per field as ``amount (source column 'Amount'): must be >= 0,
  got -3``). ``rows_read == accepted + dead_lettered + dropped`` always holds.
* The accepted events are written from the parsed columns (not from a million
  record dicts), normalised as ``validate_event`` normalises them; a sample of
  up to 1,000 accepted rows (every row of a small file) is checked against its
  validated record, and a difference is an error.

Ids, times and sessions
-----------------------
* ``event_id``: from a column if mapped, else a hash of the source name
  (``name:``), the 1-based row number and the raw values of the mapped columns.
  Identical rows therefore stay distinct events, and importing the same file
  again gives the same ids (but inserting rows above others changes their ids).
* ``ingest_time``: from a column if mapped, else equal to ``event_time``. A
  historical import has no arrival time; with ``ingest_time == event_time`` the
  events count as on time, and as-of-``t`` features see an event from its event
  time on.
* ``sessions: none`` leaves ``session_id`` null (or takes it from a mapped
  column, whose ids must each name one user's session: an id that users share is
  dead-lettered on every row that carries it, naming the users).
  ``sessions: {synthesize: true, gap: 30m}`` sessionizes the accepted events per
  user in event-time order, starting a new session after more than ``gap`` without
  events. A source is date-only when every event time is a bare
  date (a strptime format without time directives, ISO values like
  ``2026-09-01``, a parquet date column); then each (user, local day) is one
  session. A session id is a hash of the user id and the session start.

Output and idempotence
----------------------
Events are written with :func:`pipelines.ingest.eventlog.write_parquet` under ``--out``
(``event_date=YYYY-MM-DD/part-import-<name>-<file stem>-<i>.parquet``).
Importing a file again replaces the files of its previous import in that
directory, and the default dead-letter file (``<out>/../dead_letter/
import-<name>-<file stem>.jsonl``) is rewritten; an explicit ``--dead-letter``
store is appended to, like every dead-letter store.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.events import (
    ALL_FIELDS,
    EVENT_PROPERTIES,
    SCHEMA_VERSION,
    EventType,
    FieldError,
    validate_event,
)
from pipelines.ingest.eventlog import EVENT_SCHEMA, DeadLetterStore, write_parquet
from pipelines.ingest.import_columns import (
    BoolArray,
    TimeParser,
    convert_column,
    factorize,
    jsonable,
    row_ids,
    synthesize_sessions,
    take,
    take_bool,
    text_value,
)
from pipelines.ingest.import_config import (
    CONSENT_FIELDS,
    EventTypeFromColumn,
    ImportConfig,
    SessionSynthesis,
    SourceError,
)

_FIELD_ORDER: Final = {f.name: i for i, f in enumerate(ALL_FIELDS)}


# -- summary -----------------------------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    """What an import did. ``rows_read == accepted + dead_lettered + dropped``."""

    source: str
    rows_read: int
    accepted: int
    dead_lettered: int
    dropped: int
    by_field: dict[str, int]  # dead-letter field errors per Kairos field
    sessions_synthesized: int
    output: str
    dead_letter: str
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # first dead-letter problem per Kairos field
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"imported {self.source}: {self.rows_read:,} rows in {self.seconds:.2f}s "
            f"({self.rows_per_second:,.0f} rows/s)",
            f"  accepted       {self.accepted:,}",
            f"  dead-lettered  {self.dead_lettered:,}",
            f"  dropped        {self.dropped:,}"
            + (f" ({', '.join(f'{k}: {v:,}' for k, v in self.dropped_by_reason.items())})" if self.dropped else ""),
            f"  sessions synthesized {self.sessions_synthesized:,}",
        ]
        if self.by_field:
            lines.append("  dead-letter errors by field: " + ", ".join(f"{k} {v:,}" for k, v in self.by_field.items()))
            lines += [f"    e.g. {msg}" for msg in self.examples.values()]
        lines += [f"  events       -> {self.output}", f"  dead letters -> {self.dead_letter}"]
        return "\n".join(lines)


# -- reading and column conversion -------------------------------------------------------------------------------


def _read(cfg: ImportConfig, path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SourceError(f"input {path} does not exist")
    if cfg.format == "csv":
        try:
            frame = pd.read_csv(path, sep=cfg.csv.delimiter, encoding=cfg.csv.encoding, dtype=str,
                                keep_default_na=False, na_filter=False)
        except UnicodeDecodeError as exc:
            raise SourceError(f"input {path} is not {cfg.csv.encoding} text ({exc}); set csv.encoding") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise SourceError(f"input {path} is not a readable CSV file: {exc}") from None
        frame.columns = [str(c).lstrip("\ufeff") for c in frame.columns]
    else:
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"input {path} is not a readable parquet file: {exc}") from None
        frame = pd.read_parquet(path, columns=[c for c in names if not c.startswith("__index_level_")])
    frame = frame.reset_index(drop=True)
    missing = [c for c in cfg.source_columns if c not in frame.columns]
    if missing:
        keys = {c: k for k, c in cfg.columns.items()}
        if isinstance(cfg.event_type, EventTypeFromColumn):
            keys.setdefault(cfg.event_type.column, "event_type.column")
        first = missing[0]
        key = keys[first] if keys[first] == "event_type.column" else f"columns.{keys[first]}"
        raise SourceError(f"{key}: input {path.name} has no column {first!r} (its columns: {list(frame.columns)})")
    return frame


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem)[:80] or "input"


class _Importer:
    def __init__(self, cfg: ImportConfig, frame: pd.DataFrame, dlq: DeadLetterStore, workers: int) -> None:
        self.cfg, self.frame, self.dlq, self.workers = cfg, frame, dlq, workers
        self.n = len(frame)
        self.origin: dict[str, str] = {f: f"source column {c!r}" for f, c in cfg.columns.items()}
        self.row_problems: dict[int, list[FieldError]] = {}
        self.examples: dict[str, str] = {}
        self._raw_rows: list[list[Any]] | None = None
        self.returns: BoolArray = np.zeros(self.n, dtype=bool)

    def _problem(self, mask: BoolArray, kairos_field: str, describe: Callable[[int], str]) -> None:
        for i in np.flatnonzero(mask).tolist():
            self.row_problems.setdefault(i, []).append(FieldError(field=kairos_field, problem=describe(i)))

    def _sessions_of_one_user(self, users: npt.NDArray[np.object_], sessions: npt.NDArray[np.object_],
                              column: str) -> None:
        """A session belongs to one user (the session entity's ``owner``; the stream keeps a session's state with its
        user's): a source session id that users share is rejected on every row that carries it, naming the users."""
        pairs = pd.DataFrame({"user": users, "session": sessions}).dropna()
        owners = pairs.groupby("session", sort=False)["user"].unique()
        shared = owners[owners.map(len) > 1]
        if shared.empty:
            return
        by_session = {s: sorted(str(u) for u in us) for s, us in shared.items()}

        def describe(i: int) -> str:
            names = by_session[sessions[i]]
            shown = ", ".join(repr(u) for u in names[:3]) + (", ..." if len(names) > 3 else "")
            return (f"source column {column!r}: {jsonable(sessions[i])!r} is a session of {len(names)} users "
                    f"({shown}); a session belongs to one user: map a column unique across users, or use "
                    "`sessions: {synthesize: true}`")

        self._problem(pd.Series(sessions).isin(list(by_session)).to_numpy(dtype=bool), "session_id", describe)

    def run(self) -> tuple[pa.Table, Counter[str], bool]:
        """(accepted events, dropped rows by reason, whether the source times are bare dates)."""
        cfg, frame, n = self.cfg, self.frame, self.n
        times = TimeParser(cfg.time)
        # every Kairos field per row: python values for validate_event, typed arrays for the output table
        per_row: dict[str, npt.NDArray[np.object_]] = {}
        numbers: dict[str, npt.NDArray[np.float64]] = {}
        micros: dict[str, npt.NDArray[np.int64]] = {}
        date_only = False
        for kairos_field, column in cfg.columns.items():
            col, all_dates = convert_column(kairos_field, frame[column], times)
            if kairos_field == "event_time":
                date_only = all_dates
            per_row[kairos_field] = col.values
            if col.numbers is not None:
                numbers[kairos_field] = col.numbers
            if col.micros is not None:
                micros[kairos_field] = col.micros
            self._problem(col.unreadable, kairos_field, _cannot_read(column, frame[column], col.expected))
        if "session_id" in per_row and "user_id" in per_row:
            self._sessions_of_one_user(per_row["user_id"], per_row["session_id"], cfg.columns["session_id"])
        base: dict[str, Any] = {"schema_version": SCHEMA_VERSION}

        # event type: a constant or a mapped column
        if isinstance(cfg.event_type, EventTypeFromColumn):
            spec = cfg.event_type
            codes, uniques = factorize(frame[spec.column])
            mapped = [_map_type(spec, v) for v in uniques]
            per_row["event_type"] = take(mapped, codes)
            self.origin["event_type"] = f"source column {spec.column!r}"
            known = ", ".join(repr(k) for k in sorted(spec.mapping))
            raw_types = frame[spec.column]

            def unmapped(i: int) -> str:
                value = raw_types.iat[i]
                if text_value(value) is None:
                    return f"source column {spec.column!r}: is empty; every row needs an event type"
                return f"source column {spec.column!r}: {jsonable(value)!r} has no mapping in the import config " \
                       f"(mapped values: {known})"

            self._problem(take_bool([m is None for m in mapped], codes) | (codes < 0), "event_type", unmapped)
        else:
            base["event_type"] = cfg.event_type.value

        # consent: a column, the stated default for its empty cells, or only the default
        for consent_field in CONSENT_FIELDS:
            default = cfg.consent.default(consent_field)
            if consent_field not in per_row:
                base[consent_field] = default
                self.origin[consent_field] = "consent default of the import config"
            elif default is not None:
                consent_values = per_row[consent_field]
                consent_values[pd.isna(consent_values)] = default

        # amount = quantity * price where the source has no amount
        if cfg.derive.amount:
            q, p = numbers["quantity"], numbers["price"]
            derived = np.round(q * p, cfg.derive.amount_decimals)
            amount = per_row.get("amount")
            fill = np.isfinite(derived) & (pd.isna(amount) if amount is not None else True)
            if amount is None:
                amount = per_row["amount"] = np.full(n, None, dtype=object)
            amount[fill] = derived[fill].tolist()
            numbers["amount"] = np.where(fill, derived, numbers.get("amount", np.full(n, np.nan)))
            how = (f"derived as quantity * price from source columns {cfg.columns['quantity']!r} and "
                   f"{cfg.columns['price']!r}")
            self.origin["amount"] = f"source column {cfg.columns['amount']!r} or {how}" if "amount" in cfg.columns \
                else how
            # price is only an input for event types without a price property
            price_types = [t.value for t in cfg.event_types if "price" in _allowed(t)]
            if isinstance(cfg.event_type, EventTypeFromColumn):
                keep = pd.Series(per_row["event_type"]).isin(price_types).to_numpy(dtype=bool)
                price = per_row["price"].copy()
                price[~keep] = None
                per_row["price"] = price
                numbers["price"] = np.where(keep, numbers["price"], np.nan)
            elif not price_types:
                del per_row["price"], numbers["price"]

        if "ingest_time" not in per_row:
            per_row["ingest_time"] = per_row["event_time"]
            micros["ingest_time"] = micros["event_time"]
            self.origin["ingest_time"] = f"copied from event_time, {self.origin['event_time']}"
        if "event_id" not in per_row:
            per_row["event_id"] = np.asarray(row_ids(cfg, frame), dtype=object)
            self.origin["event_id"] = "generated by the importer"

        # returns and cancellations
        dropped: Counter[str] = Counter()
        drop = np.zeros(n, dtype=bool)
        if "quantity" in numbers:
            negative = numbers["quantity"] < 0
            if cfg.negative_quantity == "drop_with_count":
                drop = negative
                dropped["negative_quantity"] = int(negative.sum())
                if not dropped["negative_quantity"]:
                    del dropped["negative_quantity"]
            else:
                qty_col = cfg.columns["quantity"]
                self.returns = negative
                self._problem(negative, "quantity",
                              lambda i: f"source column {qty_col!r}: {numbers['quantity'][i]:g} is negative, a return "
                                        "or cancellation rather than an event; set negative_quantity: "
                                        "drop_with_count to skip and count returns")

        names = list(per_row)
        columns = [per_row[k].tolist() for k in names]
        flagged = np.zeros(n, dtype=bool)
        flagged[list(self.row_problems)] = True
        skip = flagged | drop
        rejected = _validate_all(names, columns, base, skip.tolist(), self.workers)

        # dead letters in row order, whether the problem was found while parsing or by validate_event
        reject_rows = {int(i): errors for i, errors in rejected}
        for i in sorted(np.flatnonzero(flagged & ~drop).tolist() + list(reject_rows)):
            errors = reject_rows.get(i)
            if errors is None:
                _, errors = validate_event(dict(base, **{k: c[i] for k, c in zip(names, columns, strict=True)}))
            self._reject(i, errors)
        accepted = ~skip
        accepted[list(reject_rows)] = False
        rows = np.flatnonzero(accepted)
        table = self._table(rows, base, per_row, numbers, micros)

        # the table is built from the validated columns, not from 1M record dicts; check a sample against them
        for pos in range(0, len(rows), max(1, len(rows) // 1000)):
            record, _ = validate_event(dict(base, **{k: c[rows[pos]] for k, c in zip(names, columns, strict=True)}))
            row = table.slice(pos, 1).to_pylist()[0]
            if record is None or row != record:
                diff = sorted(k for k in row if record is None or row[k] != record[k])
                raise RuntimeError(f"importer: row {rows[pos] + 1} differs from its validated record in {diff}")
        return table, dropped, date_only

    def _table(self, rows: npt.NDArray[np.int64], base: dict[str, Any], per_row: dict[str, npt.NDArray[np.object_]],
               numbers: dict[str, npt.NDArray[np.float64]], micros: dict[str, npt.NDArray[np.int64]]) -> pa.Table:
        """The accepted ``rows`` as an event table, normalised as :func:`validate_event` normalises a record."""
        k = len(rows)
        cols: list[pa.Array] = []
        for f in EVENT_SCHEMA:
            if f.name in base:
                cols.append(pa.repeat(pa.scalar(base[f.name], type=f.type), k))
            elif f.name in micros:  # null where the python value is None (validated: only where optional)
                missing = pd.isna(per_row[f.name][rows])
                cols.append(pa.array(micros[f.name][rows], mask=missing, type=pa.int64()).cast(f.type))
            elif f.name in numbers:
                values = numbers[f.name][rows]
                missing = ~np.isfinite(values)  # validated: finite where present
                if pa.types.is_integer(f.type):
                    values = np.where(missing, 0, values).astype(np.int64)
                cols.append(pa.array(values, mask=missing, type=f.type))
            elif f.name in per_row:
                cols.append(pa.array(per_row[f.name][rows], type=f.type))
            else:
                cols.append(pa.nulls(k, type=f.type))
        table = pa.Table.from_arrays(cols, schema=EVENT_SCHEMA)
        if "ingest_time" in self.cfg.columns:  # a client clock slightly ahead is clamped to the arrival time
            i = EVENT_SCHEMA.get_field_index("event_time")
            et, it = table.column("event_time"), table.column("ingest_time")
            clamped = pc.if_else(pc.greater(et, it), it, et)
            table = table.set_column(i, EVENT_SCHEMA.field(i), clamped)
        return table

    def _reject(self, i: int, errors: list[FieldError]) -> None:
        own = self.row_problems.get(i, [])
        seen = {e.field for e in own}
        if "event_time" in seen and "ingest_time" not in self.cfg.columns:
            seen.add("ingest_time")  # copied from an unreadable event_time: one error is enough
        if (seen & {"quantity", "price"} and self.cfg.derive.amount) or self.returns[i]:
            seen.add("amount")  # derived from an unreadable value, or the (negative) value of a return
        merged = own + [FieldError(field=e.field, problem=f"{self.origin[e.field]}: {e.problem}")
                        if e.field in self.origin else e for e in errors if e.field not in seen]
        merged.sort(key=lambda e: _FIELD_ORDER.get(e.field, len(_FIELD_ORDER)))
        for e in merged:
            if e.field not in self.examples:
                origin, _, problem = e.problem.partition(": ")
                self.examples[e.field] = f"{e.field} ({origin}): {problem}" if problem else str(e)
        self.dlq.put({"row": i + 1, "values": self._raw_row(i)}, merged)

    def _raw_row(self, i: int) -> dict[str, Any]:
        if self._raw_rows is None:
            self._raw_rows = [self.frame[c].tolist() for c in self.frame.columns]
        return {str(c): jsonable(col[i]) for c, col in zip(self.frame.columns, self._raw_rows, strict=True)}


# Rows prepared for validation, by import, for the forked validation workers (which inherit them).
_PREPARED: dict[int, tuple[list[str], list[list[Any]], dict[str, Any], list[bool]]] = {}
PARALLEL_MIN_ROWS: Final = 200_000  # below this, forking workers costs more than it saves


def _validate_rows(job: tuple[int, int, int]) -> list[tuple[int, list[FieldError]]]:
    """validate_event on rows [start, stop) of a prepared import; the rejected rows with their errors."""
    key, start, stop = job
    names, columns, base, skip = _PREPARED[key]
    rejected: list[tuple[int, list[FieldError]]] = []
    for i, row in enumerate(zip(*(c[start:stop] for c in columns), strict=True), start=start):
        if skip[i]:
            continue
        event = base.copy()
        event.update(zip(names, row, strict=True))
        record, errors = validate_event(event)
        if record is None:
            rejected.append((i, errors))
    return rejected


def _validate_all(names: list[str], columns: list[list[Any]], base: dict[str, Any], skip: list[bool],
                  workers: int) -> list[tuple[int, list[FieldError]]]:
    """Validate every row not skipped, in ``workers`` forked processes for a large import; rejects in row order.

    validate_event is pure Python and costs ~10 µs an event, the bulk of an import;
    forked workers share the prepared rows copy-on-write and send back only rejects.
    """
    n = len(skip)
    key = id(columns)
    _PREPARED[key] = (names, columns, base, skip)
    try:
        if (workers > 1 and n >= PARALLEL_MIN_ROWS and "fork" in mp.get_all_start_methods()
                and not mp.current_process().daemon):  # a daemonic process may not have children
            bounds = np.linspace(0, n, workers * 4 + 1).astype(int).tolist()
            jobs = [(key, a, b) for a, b in itertools.pairwise(bounds) if b > a]
            try:
                with mp.get_context("fork").Pool(workers) as pool:
                    return [r for part in pool.map(_validate_rows, jobs) for r in part]
            except OSError:  # cannot fork (memory, limits): validate here
                pass
        return _validate_rows((key, 0, n))
    finally:
        del _PREPARED[key]


def default_workers() -> int:
    """Validation processes for a large import: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _cannot_read(column: str, raw: pd.Series, expected: str) -> Callable[[int], str]:
    def describe(i: int) -> str:
        return f"source column {column!r}: cannot read {jsonable(raw.iat[i])!r} as {expected}"

    return describe


def _map_type(spec: EventTypeFromColumn, raw: Any) -> str | None:
    text = text_value(raw)
    etype = spec.mapping.get(text) if text is not None else None
    return etype.value if etype is not None else None


def _allowed(etype: EventType) -> frozenset[str]:
    required, optional = EVENT_PROPERTIES[etype]
    return required | optional


def import_file(config: ImportConfig | str | Path, source: str | Path, out: str | Path,
                dead_letter: str | Path | None = None, *, workers: int | None = None) -> ImportSummary:
    """Import ``source`` as Kairos events into the event log at ``out``; see the module docstring.

    ``workers``: processes validating a large import (default :func:`default_workers`; 1: none).
    """
    t0 = time.perf_counter()
    cfg = config if isinstance(config, ImportConfig) else ImportConfig.load(config)
    source, out = Path(source), Path(out)
    stem = _safe_stem(source)
    frame = _read(cfg, source)
    if dead_letter is None:
        dead_letter = out.parent / "dead_letter" / f"import-{cfg.name}-{stem}.jsonl"
        Path(dead_letter).unlink(missing_ok=True)  # this import's own file: rewritten, so re-imports stay identical
    dlq = DeadLetterStore(path=Path(dead_letter), source=f"import:{cfg.name}:{source.name}")
    importer = _Importer(cfg, frame, dlq, default_workers() if workers is None else workers)
    table, dropped, date_only = importer.run()
    sessions = 0
    event_us = np.asarray(table.column("event_time").cast(pa.int64()).to_numpy(), dtype=np.int64)
    if cfg.synthesize_sessions and isinstance(cfg.sessions, SessionSynthesis):
        ids, sessions = synthesize_sessions(table.column("user_id"), event_us, cfg.sessions.gap,
                                             by_day=date_only, zone=cfg.time.timezone)
        table = table.set_column(table.schema.get_field_index("session_id"), "session_id", ids)

    part = f"import-{cfg.name}-{stem}"
    for old in out.glob(f"event_date=*/part-{part}-*.parquet"):  # the previous import of this file
        old.unlink()
        if not any(old.parent.iterdir()):
            old.parent.rmdir()
    if table.num_rows:
        # in time order (stable: ties stay in row order): far faster to partition by day, deterministic files
        write_parquet(table.take(pa.array(np.argsort(event_us, kind="stable"))), out, part=part)

    summary = ImportSummary(
        source=str(source), rows_read=len(frame), accepted=table.num_rows, dead_lettered=dlq.total,
        dropped=sum(dropped.values()), dropped_by_reason=dict(dropped), by_field=dict(dlq.counts.most_common()),
        examples=importer.examples, sessions_synthesized=sessions, output=str(out), dead_letter=str(dlq.path),
        seconds=time.perf_counter() - t0,
    )
    if summary.rows_read != summary.accepted + summary.dead_lettered + summary.dropped:  # pragma: no cover
        raise RuntimeError(f"importer lost rows: {summary}")
    return summary
