"""Turn someone else's event log into Kairos events.

A YAML config maps source columns to Kairos fields and source values to event
types (see ``conf/importers/retail_transactions.yaml``). Every row goes through
the same validation as live events; bad rows go to the dead-letter store with
the Kairos field *and* the source column in the message. Nothing is lost:
``rows_read == accepted + dead_lettered + dropped``.

Sources without sessions can have them synthesised: per user, in time order, a
new session starts after an inactivity gap (date-only data therefore gets one
session per user and day). Event and session ids are deterministic, so importing
the same file twice gives the same events. A historical import has no arrival
time: ``ingest_time`` is the event time unless a column is mapped to it.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from conf.settings import load_settings, parse_duration
from features.events import EVENT_PROPERTIES, FIELDS_BY_NAME, EventType, FieldError, validate_event
from pipelines.eventlog import DeadLetterStore, records_to_table, write_parquet


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Strict):
    delimiter: str = ","
    encoding: str = "utf-8"


class EventTypeFromColumn(_Strict):
    column: str
    mapping: dict[str, EventType]


class TimeOptions(_Strict):
    format: str = "iso"  # "iso" or a strptime format
    timezone: str = "UTC"  # the zone of naive source times

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a known time zone (e.g. UTC, Europe/London)") from None
        return v


class ConsentDefaults(_Strict):
    analytics: bool
    personalization: bool
    marketing: bool


class Sessions(_Strict):
    synthesize: bool = False
    gap: timedelta = timedelta(minutes=30)

    @field_validator("gap", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class ImportConfig(_Strict):
    """The mapping from a source log to Kairos events."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    format: Literal["csv", "parquet"]
    csv: CsvOptions = CsvOptions()
    columns: dict[str, str]
    event_type: EventType | EventTypeFromColumn
    time: TimeOptions = TimeOptions()
    consent: ConsentDefaults  # a source without consent must state what to assume, explicitly
    sessions: Sessions | Literal["none"] = "none"
    negative_quantity: Literal["dead_letter", "drop_with_count"] = "dead_letter"
    amount_from_price: bool = False  # amount = quantity * price when the source has unit prices only

    @model_validator(mode="after")
    def _check(self) -> ImportConfig:
        for kairos_field in self.columns:
            if kairos_field not in FIELDS_BY_NAME:
                raise ValueError(f"columns: {kairos_field!r} is not a Kairos event field")
            if kairos_field in ("event_type", "schema_version"):
                raise ValueError(f"columns: {kairos_field!r} is set by the importer, not mapped")
        for required in ("user_id", "event_time"):
            if required not in self.columns:
                raise ValueError(f"columns: {required!r} must be mapped")
        if self.amount_from_price and not {"quantity", "price"} <= self.columns.keys():
            raise ValueError("amount_from_price needs both 'quantity' and 'price' mapped")
        return self

    @classmethod
    def load(cls, path: str | Path) -> ImportConfig:
        data = yaml.safe_load(Path(path).read_text())
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                                 for e in exc.errors())
            raise ValueError(f"import config {path}: {problems}") from None


@dataclass
class ImportSummary:
    rows_read: int
    accepted: int
    dead_lettered: int
    dropped: int
    by_field: dict[str, int]
    sessions_synthesized: int
    output: str
    dead_letter: str
    seconds: float = 0.0
    dropped_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0


def _read(cfg: ImportConfig, path: Path) -> pd.DataFrame:
    if cfg.format == "csv":
        return pd.read_csv(path, sep=cfg.csv.delimiter, encoding=cfg.csv.encoding, dtype=str,
                           keep_default_na=False)
    return pd.read_parquet(path)


def _missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


class _Converter:
    """Raw source value -> Kairos value, with errors that name the source column."""

    def __init__(self, cfg: ImportConfig) -> None:
        self.cfg = cfg
        self.zone = ZoneInfo(cfg.time.timezone)
        self._times: dict[str, datetime] = {}  # exports repeat the same dates and times a lot

    def time(self, raw: Any) -> datetime:
        if isinstance(raw, str):
            hit = self._times.get(raw)
            if hit is None:
                hit = self._times[raw] = self._parse_time(raw)
            return hit
        return self._parse_time(raw)

    def _parse_time(self, raw: Any) -> datetime:
        dt: datetime
        if isinstance(raw, datetime | pd.Timestamp):
            dt = pd.Timestamp(raw).to_pydatetime()
        elif self.cfg.time.format == "iso":
            dt = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        else:
            dt = datetime.strptime(str(raw), self.cfg.time.format)  # noqa: DTZ007 - zone applied next
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=self.zone)
        return dt.astimezone(UTC)

    def value(self, kairos_field: str, raw: Any) -> Any:
        f = FIELDS_BY_NAME[kairos_field]
        if f.dtype == "timestamp":
            return self.time(raw)
        if f.dtype in ("float64", "int64"):
            num = float(raw) if isinstance(raw, str) else raw
            if f.dtype == "int64" and isinstance(num, float) and num.is_integer():
                return int(num)
            return num
        if f.dtype == "bool":
            if isinstance(raw, str):
                low = raw.strip().lower()
                if low in ("true", "1", "yes"):
                    return True
                if low in ("false", "0", "no"):
                    return False
                raise ValueError(f"cannot read {raw!r} as true/false")
            return bool(raw)
        return str(raw)


def _stable_id(*parts: Any) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12).hexdigest()


def import_file(config: ImportConfig | str | Path, source: str | Path, out_dir: str | Path,
                dead_letter_path: str | Path | None = None) -> ImportSummary:
    cfg = config if isinstance(config, ImportConfig) else ImportConfig.load(config)
    source, out_dir = Path(source), Path(out_dir)
    dlq = DeadLetterStore(path=Path(dead_letter_path or out_dir / "dead_letter" / f"{cfg.name}.jsonl"),
                          source=f"import:{cfg.name}:{source.name}")
    t0 = datetime.now(UTC)
    df = _read(cfg, source)
    conv = _Converter(cfg)
    good: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    src_columns = list(df.columns)
    for missing in sorted(set(cfg.columns.values()) - set(src_columns)):
        raise ValueError(f"source {source} has no column {missing!r} (columns: {src_columns})")
    type_col = cfg.event_type.column if isinstance(cfg.event_type, EventTypeFromColumn) else None
    if type_col is not None and type_col not in src_columns:
        raise ValueError(f"source {source} has no column {type_col!r} for event_type")

    for n, row in enumerate(df.itertuples(index=False, name=None), start=1):
        raw_row = dict(zip(src_columns, row, strict=True))
        errors: list[FieldError] = []
        event: dict[str, Any] = {"schema_version": 1,
                                 "consent_analytics": cfg.consent.analytics,
                                 "consent_personalization": cfg.consent.personalization,
                                 "consent_marketing": cfg.consent.marketing}
        if isinstance(cfg.event_type, EventTypeFromColumn):
            src_type = raw_row[cfg.event_type.column]
            mapped = cfg.event_type.mapping.get(str(src_type))
            if mapped is None:
                errors.append(FieldError(field="event_type", problem=f"source column {cfg.event_type.column!r}: "
                                         f"{src_type!r} has no mapping in the import config"))
            else:
                event["event_type"] = mapped.value
        else:
            event["event_type"] = cfg.event_type.value
        for kairos_field, column in cfg.columns.items():
            raw = raw_row[column]
            if _missing(raw):
                continue
            try:
                event[kairos_field] = conv.value(kairos_field, raw)
            except (TypeError, ValueError) as exc:
                errors.append(FieldError(field=kairos_field, problem=f"source column {column!r}: cannot read "
                                                                     f"{raw!r} ({exc})"))
        if cfg.amount_from_price and "amount" not in event and isinstance(event.get("quantity"), int | float) \
                and isinstance(event.get("price"), int | float):
            event["amount"] = round(event["quantity"] * event["price"], 2)
        qty = event.get("quantity")
        if isinstance(qty, int | float) and qty < 0:
            if cfg.negative_quantity == "drop_with_count":
                dropped["negative_quantity"] += 1
                continue
            errors.append(FieldError(field="quantity", problem=f"source column {cfg.columns['quantity']!r}: "
                                     f"{qty:g} is negative (a return or cancellation); set negative_quantity: "
                                     "drop_with_count to skip returns"))
        if errors:
            dlq.put({"row": n, **{k: _jsonable(v) for k, v in raw_row.items()}}, errors)
            continue
        event.setdefault("ingest_time", event.get("event_time"))
        if "event_id" not in event:
            event["event_id"] = _stable_id(cfg.name, n, *row)
        if cfg.amount_from_price and "price" in event and "event_type" in event and \
                "price" not in _allowed(EventType(event["event_type"])):
            event.pop("price")  # an input of the derived amount, not a property of this event type
        record, verrors = validate_event(event)
        if record is None:
            dlq.put({"row": n, **{k: _jsonable(v) for k, v in raw_row.items()}},
                    [FieldError(field=e.field, problem=f"source column {cfg.columns[e.field]!r}: {e.problem}")
                     if e.field in cfg.columns else e for e in verrors])
            continue
        good.append(record)

    sessions = 0
    if isinstance(cfg.sessions, Sessions) and cfg.sessions.synthesize:
        sessions = _sessionize(good, cfg.sessions.gap)
    out = out_dir / "events"
    if good:
        write_parquet(records_to_table(good), out, part=f"import-{cfg.name}-{_stable_id(source.name)}")
    seconds = (datetime.now(UTC) - t0).total_seconds()
    return ImportSummary(rows_read=len(df), accepted=len(good), dead_lettered=dlq.total,
                         dropped=sum(dropped.values()), dropped_reasons=dict(dropped),
                         by_field=dict(dlq.counts.most_common()), sessions_synthesized=sessions, output=str(out),
                         dead_letter=str(dlq.path), seconds=seconds)


def _allowed(etype: EventType) -> frozenset[str]:
    required, optional = EVENT_PROPERTIES[etype]
    return required | optional


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime | pd.Timestamp):
        return pd.Timestamp(v).isoformat()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


def _sessionize(events: list[dict[str, Any]], gap: timedelta) -> int:
    """Give sessionless events a session: per user, a new one after more than ``gap`` without events."""
    events.sort(key=lambda e: (e["user_id"], e["event_time"], e["event_id"]))
    made = 0
    user, last, sid = None, None, None
    for e in events:
        if e["session_id"] is not None:
            continue
        if e["user_id"] != user or last is None or e["event_time"] - last > gap:
            user, sid = e["user_id"], _stable_id("session", e["user_id"], e["event_time"].isoformat())
            made += 1
        last = e["event_time"]
        e["session_id"] = sid
    return made


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Import an external event log into Kairos events")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--out", type=Path, default=load_settings().data_path / "imported")
    p.add_argument("--dead-letter", type=Path)
    a = p.parse_args(argv)
    s = import_file(a.config, a.input, a.out, a.dead_letter)
    print(f"read {s.rows_read:,} rows in {s.seconds:.2f}s ({s.rows_per_second:,.0f} rows/s): "
          f"{s.accepted:,} accepted, {s.dead_lettered:,} dead-lettered, {s.dropped:,} dropped {s.dropped_reasons}")
    if s.by_field:
        print("dead letters by field: " + ", ".join(f"{k} {v}" for k, v in s.by_field.items()))
    print(f"sessions synthesized: {s.sessions_synthesized:,}")
    print(f"events -> {s.output}\ndead letters -> {s.dead_letter}")


if __name__ == "__main__":
    main()
