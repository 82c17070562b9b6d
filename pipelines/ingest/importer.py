"""Turn someone else's event log (CSV or parquet) into Kairos events.

A YAML config (``conf/importers/*.yaml``, validated by :class:`ImportConfig`) maps
Kairos fields to source columns and source values to event types::

    python -m pipelines.ingest.importer --config conf/importers/retail_transactions.yaml \\
        --input export.csv --out var/data/events [--dead-letter var/data/dead_letter/x.jsonl]

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

import argparse
import codecs
import hashlib
import itertools
import math
import multiprocessing as mp
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from conf.settings import parse_duration
from features.events import (
    ALL_FIELDS,
    COMMON_FIELDS,
    EVENT_PROPERTIES,
    FIELDS_BY_NAME,
    SCHEMA_VERSION,
    EventType,
    FieldError,
    validate_event,
)
from pipelines.ingest.eventlog import EVENT_SCHEMA, DeadLetterStore, write_parquet

BoolArray = npt.NDArray[np.bool_]

CONSENT_FIELDS: Final = ("consent_analytics", "consent_personalization", "consent_marketing")
NOT_MAPPABLE: Final = frozenset({"schema_version", "event_type"})
DERIVED_AMOUNT: Final = "quantity * price"
_TIME_DIRECTIVES: Final = ("%H", "%I", "%M", "%S", "%f", "%p", "%X", "%c", "%T", "%R", "%s")
_FIELD_ORDER: Final = {f.name: i for i, f in enumerate(ALL_FIELDS)}
_COMMON_NAMES: Final = frozenset(f.name for f in COMMON_FIELDS)


class ImportConfigError(ValueError):
    """An import config that cannot be used; the message names the offending key."""


class SourceError(ValueError):
    """A source file that does not fit its import config (missing column, unreadable file)."""


# -- config ------------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Strict):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = "utf-8"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"{v!r} is not a known text encoding (e.g. utf-8, utf-8-sig, latin-1)") from None
        return v


class EventTypeFromColumn(_Strict):
    """The event type read from a source column; values without a mapping are dead-lettered."""

    column: str = Field(min_length=1)
    mapping: dict[str, EventType] = Field(min_length=1)

    @field_validator("mapping", mode="before")
    @classmethod
    def _string_keys(cls, v: Any) -> Any:
        # YAML reads `1: purchase` with an integer key; source values are compared as text.
        return {str(k): t for k, t in v.items()} if isinstance(v, Mapping) else v


class TimeOptions(_Strict):
    format: str = "iso"  # "iso" (ISO-8601, with or without an offset) or a strptime format
    timezone: str = "UTC"  # the zone of naive source times
    date_only: Literal["start_of_day", "end_of_day"] = "start_of_day"  # where a bare date is placed

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v == "iso":
            return v
        if "%" not in v:
            raise ValueError(f"{v!r} is neither 'iso' nor a strptime format such as '%Y-%m-%d %H:%M'")
        try:
            pd.to_datetime(pd.Series(["2001-02-03"]), format=v, errors="coerce")
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a usable strptime format ({exc})") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
            pd.Timestamp("2001-01-01").tz_localize(v)  # the importer converts with pandas, by name
        except (ZoneInfoNotFoundError, ValueError, KeyError):
            raise ValueError(f"{v!r} is not a known time zone (e.g. UTC, Europe/London)") from None
        return v

    @property
    def format_is_date_only(self) -> bool:
        return self.format != "iso" and not any(d in self.format for d in _TIME_DIRECTIVES)


class ConsentDefaults(_Strict):
    """Consent for rows whose source has no value; required for every consent field without a column."""

    analytics: StrictBool | None = None
    personalization: StrictBool | None = None
    marketing: StrictBool | None = None

    def default(self, consent_field: str) -> bool | None:
        value: bool | None = getattr(self, consent_field.removeprefix("consent_"))
        return value


class SessionSynthesis(_Strict):
    synthesize: StrictBool = True
    gap: timedelta = timedelta(minutes=30)

    @field_validator("gap", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @field_validator("gap")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be a positive duration such as 30m")
        return v


class DeriveOptions(_Strict):
    amount: Literal["quantity * price"] | None = None  # where the source has no amount
    amount_decimals: int = Field(default=2, ge=0, le=9)


class ImportConfig(_Strict):
    """How one source log maps onto Kairos events (see ``conf/importers/retail_transactions.yaml``)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$", max_length=64)
    format: Literal["csv", "parquet"]
    csv: CsvOptions = CsvOptions()
    columns: dict[str, str]  # Kairos field -> source column
    event_type: Annotated[Annotated[EventType, Tag("constant")] | Annotated[EventTypeFromColumn, Tag("from_column")],
                          Discriminator(lambda v: "from_column" if isinstance(v, Mapping | EventTypeFromColumn)
                                        else "constant")]
    time: TimeOptions = TimeOptions()
    consent: ConsentDefaults = ConsentDefaults()
    derive: DeriveOptions = DeriveOptions()
    sessions: Annotated[Annotated[SessionSynthesis, Tag("synthesize")] | Annotated[Literal["none"], Tag("none")],
                        Discriminator(lambda v: "none" if v == "none" else "synthesize")] = "none"
    negative_quantity: Literal["dead_letter", "drop_with_count"] = "dead_letter"

    @field_validator("event_type", mode="before")
    @classmethod
    def _event_type(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in EventType.__members__.values():
            raise ValueError(f"{v!r} is not a Kairos event type; use one of {', '.join(sorted(EventType))} "
                             "or {column: <source column>, mapping: {<source value>: <event type>}}")
        return v

    @field_validator("sessions", mode="before")
    @classmethod
    def _sessions(cls, v: Any) -> Any:
        if v is None or v is False or v == "none":
            return "none"
        if isinstance(v, Mapping):
            return v
        raise ValueError(f"{v!r}: use `none` or {{synthesize: true, gap: 30m}}")

    @model_validator(mode="after")
    def _consistent(self) -> ImportConfig:
        problems: list[str] = []
        for kairos_field, column in self.columns.items():
            if kairos_field not in FIELDS_BY_NAME:
                problems.append(f"columns.{kairos_field}: {kairos_field!r} is not a Kairos event field "
                                f"(fields: {', '.join(f.name for f in ALL_FIELDS if f.name not in NOT_MAPPABLE)})")
            elif kairos_field in NOT_MAPPABLE:
                hint = "use the event_type key" if kairos_field == "event_type" else "the importer sets it"
                problems.append(f"columns.{kairos_field}: cannot be mapped to a column ({hint})")
            if not isinstance(column, str) or not column:
                problems.append(f"columns.{kairos_field}: the source column name must not be empty")
        for required in ("user_id", "event_time"):
            if required not in self.columns:
                problems.append(f"columns.{required}: must be mapped to a source column")
        derived = {"amount"} if self.derive.amount else set()
        if self.derive.amount:
            for needed in ("quantity", "price"):
                if needed not in self.columns:
                    problems.append(f"derive.amount: {self.derive.amount} needs columns.{needed} mapped")
        allowed: set[str] = set()
        for etype in self.event_types:
            props, optional = EVENT_PROPERTIES[etype]
            allowed |= props | optional
            for prop in sorted(props - self.columns.keys() - derived):
                hint = f" or set derive.amount: {DERIVED_AMOUNT}" if prop == "amount" else ""
                problems.append(f"columns.{prop}: {etype.value} events require {prop}; map it to a source column{hint}")
        for kairos_field in self.columns:
            inputs_only = kairos_field == "price" and self.derive.amount is not None
            if (kairos_field in FIELDS_BY_NAME and kairos_field not in _COMMON_NAMES and kairos_field not in allowed
                    and not inputs_only):
                types = ", ".join(t.value for t in self.event_types)
                problems.append(f"columns.{kairos_field}: {kairos_field!r} is not a property of {types} events")
        for consent_field in CONSENT_FIELDS:
            if consent_field not in self.columns and self.consent.default(consent_field) is None:
                key = consent_field.removeprefix("consent_")
                problems.append(f"consent.{key}: the source has no column for {consent_field}; state the default "
                                "explicitly (true or false), the importer assumes nothing")
        if self.synthesize_sessions and "session_id" in self.columns:
            problems.append("sessions: the source has sessions (columns.session_id); use `sessions: none`")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def event_types(self) -> list[EventType]:
        if isinstance(self.event_type, EventTypeFromColumn):
            return sorted(set(self.event_type.mapping.values()))
        return [self.event_type]

    @property
    def synthesize_sessions(self) -> bool:
        return isinstance(self.sessions, SessionSynthesis) and self.sessions.synthesize

    @property
    def source_columns(self) -> list[str]:
        """Every source column the config reads, sorted."""
        cols = set(self.columns.values())
        if isinstance(self.event_type, EventTypeFromColumn):
            cols.add(self.event_type.column)
        return sorted(cols)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "import config") -> ImportConfig:
        if not isinstance(data, Mapping):
            raise ImportConfigError(f"{origin}: must be a mapping of keys (name, format, columns, ...), "
                                    f"got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ImportConfigError(f"{origin}: {_explain(exc)}") from None

    @classmethod
    def load(cls, path: str | Path) -> ImportConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ImportConfigError(f"import config {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ImportConfigError(f"import config {path} is not valid YAML: {exc}") from None
        return cls.from_dict(data, f"import config {path}")


_UNION_TAGS: Final = {"event_type": ("constant", "from_column"), "sessions": ("synthesize", "none")}


def _explain(exc: ValidationError) -> str:
    problems = []
    for e in exc.errors():
        path = list(e["loc"])
        if len(path) > 1 and path[0] in _UNION_TAGS and path[1] in _UNION_TAGS[str(path[0])]:
            del path[1]  # pydantic's name of the union member, not a key of the file
        loc = ".".join(str(p) for p in path)
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "is required"
        problems.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(dict.fromkeys(problems))


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


@dataclass
class _Column:
    """One Kairos field parsed from one source column: python values (None when empty) and unreadable rows."""

    values: npt.NDArray[np.object_]
    unreadable: BoolArray
    expected: str  # what an unreadable value should have been, for the problem text
    numbers: npt.NDArray[np.float64] | None = None  # numeric fields: the values as floats (NaN when empty)
    micros: npt.NDArray[np.int64] | None = None  # time fields: µs since the epoch (UTC); with ``values`` None: null


def _factorize(s: pd.Series) -> tuple[npt.NDArray[np.intp], Any]:
    """(per-row code, distinct values); a null cell gets code -1. Uniques of a timestamp column stay an index."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.intp), uniques if isinstance(uniques, pd.DatetimeIndex) else list(uniques)


def _take(converted: Sequence[Any], codes: npt.NDArray[np.intp]) -> npt.NDArray[np.object_]:
    """Per-row values from per-unique values; code -1 (a null cell) becomes None."""
    table = np.empty(len(converted) + 1, dtype=object)
    table[: len(converted)] = converted
    table[-1] = None
    out: npt.NDArray[np.object_] = table[codes]
    return out


def _take_bool(flags: Sequence[bool], codes: npt.NDArray[np.intp]) -> BoolArray:
    table = np.zeros(len(flags) + 1, dtype=bool)
    table[: len(flags)] = flags
    out: BoolArray = table[codes]
    return out


def _empty(v: Any) -> bool:
    return (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _text(v: Any) -> str | None:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, str):
        return v.strip() or None
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        # ids exported through pandas often become floats (17850.0): keep them as 17850
        return None if math.isnan(v) else str(int(v)) if float(v).is_integer() else repr(float(v))
    return str(v)


_BOOLS: Final = {"true": True, "t": True, "yes": True, "y": True, "1": True,
                 "false": False, "f": False, "no": False, "n": False, "0": False}


def _boolean(v: Any) -> tuple[bool | None, bool]:
    """(value, readable)."""
    if isinstance(v, bool | np.bool_):
        return bool(v), True
    if isinstance(v, int | float | np.integer | np.floating) and v in (0, 1):
        return bool(v), True
    if isinstance(v, str):
        if not v.strip():
            return None, True
        b = _BOOLS.get(v.strip().lower())
        return b, b is not None
    return None, False


def _numbers(uniques: list[Any], integer: bool) -> tuple[list[Any], list[bool], npt.NDArray[np.float64]]:
    raw = pd.Series(uniques, dtype=object)
    empty = raw.map(_empty).to_numpy(dtype=bool)
    as_text = raw.map(lambda v: v.strip() if isinstance(v, str) else v)
    parsed = pd.to_numeric(as_text.where(~empty, None), errors="coerce").astype("float64").to_numpy()
    unreadable = (~empty) & np.isnan(parsed)
    values: list[Any] = []
    for x in parsed.tolist():
        if math.isnan(x):
            values.append(None)
        elif integer and x.is_integer() and abs(x) < 2**62:
            values.append(int(x))
        else:
            values.append(x)  # an integer field given 1.5 is left to validate_event: "must be an integer"
    return values, unreadable.tolist(), parsed


class _TimeParser:
    """Raw time values -> aware UTC datetimes, vectorised over the distinct raw values."""

    def __init__(self, opts: TimeOptions) -> None:
        self.opts = opts
        self.day_offset = pd.Timedelta(hours=23, minutes=59, seconds=59) if opts.date_only == "end_of_day" \
            else pd.Timedelta(0)
        self.expected = "an ISO-8601 time" if opts.format == "iso" else f"a time in format {opts.format!r}"

    def _localize(self, naive: pd.DatetimeIndex) -> pd.DatetimeIndex:
        """Naive local times to UTC: ambiguous -> the earlier instant, non-existent -> shifted forward."""
        # the zone by name: pandas then converts vectorised (a ZoneInfo object is ~100x slower)
        local = naive.tz_localize(self.opts.timezone, ambiguous=np.ones(len(naive), dtype=bool),
                                  nonexistent="shift_forward")
        return local.tz_convert(UTC)

    def parse(self, uniques: Any) -> tuple[pd.DatetimeIndex, list[bool], list[bool]]:
        """(UTC times, NaT when empty or unreadable; unreadable; bare date) per distinct raw value."""
        if isinstance(uniques, pd.DatetimeIndex):  # a native timestamp column (parquet)
            utc = uniques.tz_convert(UTC) if uniques.tz is not None else self._localize(uniques)
            return utc.floor("us"), [False] * len(uniques), [False] * len(uniques)
        items = list(uniques)
        n = len(items)
        ns = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)  # NaT
        bad = [False] * n
        date_only = [False] * n
        strings = [i for i, v in enumerate(items) if isinstance(v, str) and v.strip()]
        if strings:
            utc, dates = self._parse_strings(pd.Series([items[i].strip() for i in strings], dtype=object))
            ns[strings] = utc.asi8
            for i, unreadable, d in zip(strings, utc.isna().tolist(), dates.tolist(), strict=True):
                bad[i], date_only[i] = unreadable, d
        naive: list[tuple[int, pd.Timestamp]] = []
        for i, v in enumerate(items):  # object columns holding datetimes or dates (parquet): rare, per value
            if isinstance(v, str):
                continue
            if isinstance(v, datetime | pd.Timestamp):
                ts = pd.Timestamp(v)
                if ts.tzinfo is not None:
                    ns[i] = ts.tz_convert(UTC).value
                else:
                    naive.append((i, ts))
            elif isinstance(v, date):
                naive.append((i, pd.Timestamp(v) + self.day_offset))
                date_only[i] = True
            elif not _empty(v):
                bad[i] = True
        if naive:
            ns[[i for i, _ in naive]] = self._localize(pd.DatetimeIndex([ts for _, ts in naive])).asi8
        return pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize(UTC).floor("us"), bad, date_only

    def _parse_strings(self, text: pd.Series) -> tuple[pd.DatetimeIndex, BoolArray]:
        """Non-empty strings -> (UTC times, NaT when unreadable; whether each was a bare date)."""
        if self.opts.format == "iso":
            is_date = text.str.fullmatch(r"\d{4}-\d{2}-\d{2}").to_numpy(dtype=bool)
            aware = text.str.contains(r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$",
                                      regex=True).to_numpy(dtype=bool)
            naive = pd.DatetimeIndex(pd.to_datetime(text.where(~aware, None), format="ISO8601", errors="coerce"))
            with_offset = pd.DatetimeIndex(pd.to_datetime(text.where(aware, None), format="ISO8601",
                                                          errors="coerce", utc=True))
            offset = pd.TimedeltaIndex(np.where(is_date, self.day_offset.value, 0).astype("timedelta64[ns]"))
            local = self._localize(naive + offset)
            return local.where(~aware, with_offset), is_date
        is_date = np.full(len(text), self.opts.format_is_date_only)
        if "%z" in self.opts.format:
            return pd.DatetimeIndex(pd.to_datetime(text, format=self.opts.format, errors="coerce", utc=True)), is_date
        naive = pd.DatetimeIndex(pd.to_datetime(text, format=self.opts.format, errors="coerce"))
        return self._localize(naive + self.day_offset if self.opts.format_is_date_only else naive), is_date


def _convert(kairos_field: str, raw: pd.Series, times: _TimeParser) -> tuple[_Column, bool]:
    """Parse one source column as ``kairos_field``; also return whether every value was a bare date."""
    dtype = FIELDS_BY_NAME[kairos_field].dtype
    codes, uniques = _factorize(raw)
    if dtype == "timestamp":
        utc, bad, date_only = times.parse(uniques)
        missing = utc.isna()
        python = [None if m else v for v, m in zip(utc.to_pydatetime().tolist(), missing.tolist(), strict=True)]
        all_dates = bool((~missing).any()) and all(d for d, m in zip(date_only, missing, strict=True) if not m)
        micros = np.append(utc.asi8 // 1000, 0)[codes]
        return _Column(_take(python, codes), _take_bool(bad, codes), times.expected, micros=micros), all_dates
    if dtype in ("int64", "float64"):
        nums, bad, parsed = _numbers(uniques, integer=dtype == "int64")
        floats = np.append(parsed, np.nan)[codes]
        expected = "an integer" if dtype == "int64" else "a number"
        return _Column(_take(nums, codes), _take_bool(bad, codes), expected, floats), False
    if dtype == "bool":
        pairs = [_boolean(v) for v in uniques]
        return _Column(_take([p[0] for p in pairs], codes), _take_bool([not p[1] for p in pairs], codes),
                       "true or false"), False
    return _Column(_take([_text(v) for v in uniques], codes), np.zeros(len(raw), dtype=bool), "text"), False


def _row_ids(cfg: ImportConfig, frame: pd.DataFrame) -> list[str]:
    """Deterministic event ids: source name, 1-based row number and the raw values of the mapped columns."""
    cols = [frame[c].astype(str).tolist() for c in cfg.source_columns]
    prefix = f"{cfg.name}\x1f"
    return [hashlib.blake2b((prefix + str(n) + "\x1f" + "\x1f".join(vals)).encode(), digest_size=16).hexdigest()
            for n, vals in enumerate(zip(*cols, strict=True), start=1)]


def _jsonable(v: Any) -> Any:
    if v is pd.NA or v is pd.NaT:
        return None
    if v is None or isinstance(v, str | bool | int):
        return v
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    if isinstance(v, datetime | date | pd.Timestamp):
        return v.isoformat()
    return str(v)


# -- sessions ----------------------------------------------------------------------------------------------------


def _synthesize_sessions(users: pa.ChunkedArray, event_us: npt.NDArray[np.int64], gap: timedelta, by_day: bool,
                         zone: str) -> tuple[pa.Array, int]:
    """Session ids for events given as (user id, event time in µs since the epoch, UTC).

    Per user in time order, a new session starts after more than ``gap`` without
    events; with ``by_day`` each (user, local day in ``zone``) is one session. The id
    hashes the user id and the session start, so it does not depend on row order.
    """
    n = len(event_us)
    if n == 0:
        return pa.array([], type=pa.string()), 0
    encoded = users.combine_chunks().dictionary_encode()
    user_codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    names = encoded.dictionary.to_pylist()
    new = np.ones(n, dtype=bool)
    if by_day:
        local = pd.to_datetime(event_us, unit="us", utc=True).tz_convert(zone).tz_localize(None)
        day = np.asarray(local.normalize().asi8 // 86_400_000_000_000, dtype=np.int64)
        order = np.lexsort((event_us, day, user_codes))
        u, d = user_codes[order], day[order]
        new[1:] = (u[1:] != u[:-1]) | (d[1:] != d[:-1])
    else:
        order = np.lexsort((event_us, user_codes))
        u, t = user_codes[order], event_us[order]
        new[1:] = (u[1:] != u[:-1]) | (t[1:] - t[:-1] > gap // timedelta(microseconds=1))
    session_of = np.empty(n, dtype=np.int64)
    session_of[order] = np.cumsum(new) - 1
    starts = order[new]  # the first event of each session, as an index into the input
    ids = [hashlib.blake2b(f"session\x1f{names[c]}\x1f{start}".encode(), digest_size=16).hexdigest()
           for c, start in zip(user_codes[starts].tolist(), event_us[starts].tolist(), strict=True)]
    return pa.array(ids, type=pa.string()).take(pa.array(session_of)), len(ids)


# -- the import --------------------------------------------------------------------------------------------------


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
            return (f"source column {column!r}: {_jsonable(sessions[i])!r} is a session of {len(names)} users "
                    f"({shown}); a session belongs to one user: map a column unique across users, or use "
                    "`sessions: {synthesize: true}`")

        self._problem(pd.Series(sessions).isin(list(by_session)).to_numpy(dtype=bool), "session_id", describe)

    def run(self) -> tuple[pa.Table, Counter[str], bool]:
        """(accepted events, dropped rows by reason, whether the source times are bare dates)."""
        cfg, frame, n = self.cfg, self.frame, self.n
        times = _TimeParser(cfg.time)
        # every Kairos field per row: python values for validate_event, typed arrays for the output table
        per_row: dict[str, npt.NDArray[np.object_]] = {}
        numbers: dict[str, npt.NDArray[np.float64]] = {}
        micros: dict[str, npt.NDArray[np.int64]] = {}
        date_only = False
        for kairos_field, column in cfg.columns.items():
            col, all_dates = _convert(kairos_field, frame[column], times)
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
            codes, uniques = _factorize(frame[spec.column])
            mapped = [_map_type(spec, v) for v in uniques]
            per_row["event_type"] = _take(mapped, codes)
            self.origin["event_type"] = f"source column {spec.column!r}"
            known = ", ".join(repr(k) for k in sorted(spec.mapping))
            raw_types = frame[spec.column]

            def unmapped(i: int) -> str:
                value = raw_types.iat[i]
                if _text(value) is None:
                    return f"source column {spec.column!r}: is empty; every row needs an event type"
                return f"source column {spec.column!r}: {_jsonable(value)!r} has no mapping in the import config " \
                       f"(mapped values: {known})"

            self._problem(_take_bool([m is None for m in mapped], codes) | (codes < 0), "event_type", unmapped)
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
            per_row["event_id"] = np.asarray(_row_ids(cfg, frame), dtype=object)
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
        return {str(c): _jsonable(col[i]) for c, col in zip(self.frame.columns, self._raw_rows, strict=True)}


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
        return f"source column {column!r}: cannot read {_jsonable(raw.iat[i])!r} as {expected}"

    return describe


def _map_type(spec: EventTypeFromColumn, raw: Any) -> str | None:
    text = _text(raw)
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
        ids, sessions = _synthesize_sessions(table.column("user_id"), event_us, cfg.sessions.gap,
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.ingest.importer",
                                description="Import a foreign event log (CSV or parquet) as Kairos events")
    p.add_argument("--config", required=True, type=Path, help="import config, e.g. conf/importers/x.yaml")
    p.add_argument("--input", required=True, type=Path, help="the source file")
    p.add_argument("--out", required=True, type=Path, help="event log root to write day partitions into")
    p.add_argument("--dead-letter", type=Path, help="dead-letter JSON-lines file to append to "
                                                    "(default: <out>/../dead_letter/import-<name>-<file>.jsonl)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"validation processes for inputs of {PARALLEL_MIN_ROWS:,}+ rows (default: CPUs, at most 4)")
    a = p.parse_args(argv)
    if a.workers is not None and a.workers < 1:
        p.error("--workers must be at least 1")
    try:
        summary = import_file(a.config, a.input, a.out, a.dead_letter, workers=a.workers)
    except (ImportConfigError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
