"""Column conversion for the importer: each distinct raw value of a source column parsed once, into Kairos
field values, with the rows that cannot be read (see :mod:`pipelines.ingest.importer`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from features.events import (
    FIELDS_BY_NAME,
)
from pipelines.ingest.import_config import ImportConfig, TimeOptions

BoolArray = npt.NDArray[np.bool_]


@dataclass
class Column:
    """One Kairos field parsed from one source column: python values (None when empty) and unreadable rows."""

    values: npt.NDArray[np.object_]
    unreadable: BoolArray
    expected: str  # what an unreadable value should have been, for the problem text
    numbers: npt.NDArray[np.float64] | None = None  # numeric fields: the values as floats (NaN when empty)
    micros: npt.NDArray[np.int64] | None = None  # time fields: µs since the epoch (UTC); with ``values`` None: null


def factorize(s: pd.Series) -> tuple[npt.NDArray[np.intp], Any]:
    """(per-row code, distinct values); a null cell gets code -1. Uniques of a timestamp column stay an index."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.intp), uniques if isinstance(uniques, pd.DatetimeIndex) else list(uniques)


def take(converted: Sequence[Any], codes: npt.NDArray[np.intp]) -> npt.NDArray[np.object_]:
    """Per-row values from per-unique values; code -1 (a null cell) becomes None."""
    table = np.empty(len(converted) + 1, dtype=object)
    table[: len(converted)] = converted
    table[-1] = None
    out: npt.NDArray[np.object_] = table[codes]
    return out


def take_bool(flags: Sequence[bool], codes: npt.NDArray[np.intp]) -> BoolArray:
    table = np.zeros(len(flags) + 1, dtype=bool)
    table[: len(flags)] = flags
    out: BoolArray = table[codes]
    return out


def is_empty(v: Any) -> bool:
    return (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def text_value(v: Any) -> str | None:
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


def parse_boolean(v: Any) -> tuple[bool | None, bool]:
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


def parse_numbers(uniques: list[Any], integer: bool) -> tuple[list[Any], list[bool], npt.NDArray[np.float64]]:
    raw = pd.Series(uniques, dtype=object)
    empty = raw.map(is_empty).to_numpy(dtype=bool)
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


class TimeParser:
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
            elif not is_empty(v):
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


def convert_column(kairos_field: str, raw: pd.Series, times: TimeParser) -> tuple[Column, bool]:
    """Parse one source column as ``kairos_field``; also return whether every value was a bare date."""
    dtype = FIELDS_BY_NAME[kairos_field].dtype
    codes, uniques = factorize(raw)
    if dtype == "timestamp":
        utc, bad, date_only = times.parse(uniques)
        missing = utc.isna()
        python = [None if m else v for v, m in zip(utc.to_pydatetime().tolist(), missing.tolist(), strict=True)]
        all_dates = bool((~missing).any()) and all(d for d, m in zip(date_only, missing, strict=True) if not m)
        micros = np.append(utc.asi8 // 1000, 0)[codes]
        return Column(take(python, codes), take_bool(bad, codes), times.expected, micros=micros), all_dates
    if dtype in ("int64", "float64"):
        nums, bad, parsed = parse_numbers(uniques, integer=dtype == "int64")
        floats = np.append(parsed, np.nan)[codes]
        expected = "an integer" if dtype == "int64" else "a number"
        return Column(take(nums, codes), take_bool(bad, codes), expected, floats), False
    if dtype == "bool":
        pairs = [parse_boolean(v) for v in uniques]
        return Column(take([p[0] for p in pairs], codes), take_bool([not p[1] for p in pairs], codes),
                       "true or false"), False
    return Column(take([text_value(v) for v in uniques], codes), np.zeros(len(raw), dtype=bool), "text"), False


def row_ids(cfg: ImportConfig, frame: pd.DataFrame) -> list[str]:
    """Deterministic event ids: source name, 1-based row number and the raw values of the mapped columns."""
    cols = [frame[c].astype(str).tolist() for c in cfg.source_columns]
    prefix = f"{cfg.name}\x1f"
    return [hashlib.blake2b((prefix + str(n) + "\x1f" + "\x1f".join(vals)).encode(), digest_size=16).hexdigest()
            for n, vals in enumerate(zip(*cols, strict=True), start=1)]


def jsonable(v: Any) -> Any:
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


def synthesize_sessions(users: pa.ChunkedArray, event_us: npt.NDArray[np.int64], gap: timedelta, by_day: bool,
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


