"""The import config: a YAML file mapping someone else's columns and values to Kairos events, validated by
:class:`ImportConfig` with errors that name the offending key (see :mod:`pipelines.ingest.importer`)."""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
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
    EventType,
)

CONSENT_FIELDS: Final = ("consent_analytics", "consent_personalization", "consent_marketing")
NOT_MAPPABLE: Final = frozenset({"schema_version", "event_type"})
DERIVED_AMOUNT: Final = "quantity * price"
_TIME_DIRECTIVES: Final = ("%H", "%I", "%M", "%S", "%f", "%p", "%X", "%c", "%T", "%R", "%s")
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


