"""Engine-free feature specifications.

Frozen, keyword-only dataclasses in the spirit of Chronon's ``GroupBy``: an
entity, one event source that names both its batch table and its stream topic,
windowed aggregations over filtered event types, derived features, request-time
(on-demand) features and feature services. Names and dtypes live here; engines
(Spark, Bytewax) and the generated Feast repo take them from here and never make
up their own.

This module never imports pyspark, bytewax or feast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from features.aggregations import Aggregator
from features.events import EventType
from features.expr import Expr, lit

DType = Literal["int64", "float64", "string", "bool", "timestamp", "array<string>"]
# what serving answers with for a stale stored row: the view's cold-start row (flagged) or the stored values
StalePolicy = Literal["default", "serve"]
DTYPES: Final[frozenset[str]] = frozenset({"int64", "float64", "string", "bool", "timestamp", "array<string>"})
ALL_EVENT_TYPES: Final[frozenset[EventType]] = frozenset(EventType)


def _fmt(td: timedelta) -> str:
    s = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0 and s >= size:
            n = s // size
            return f"{n * 24}h" if unit == "d" and n == 1 else f"{n}{unit}"
    return f"{s}s"


@dataclass(frozen=True, kw_only=True)
class Entity:
    """What features are keyed by. ``owner``: the entity each key of this one belongs to (a session is one
    user's): its key is still unique on its own. Engines check it: while a key's state lives, an event of another
    owner carrying the key is a ``session_collision``, left out of the key's features (``features.state.Owner``,
    SEMANTICS.md)."""

    name: str
    join_key: str
    description: str
    dtype: DType = "string"
    owner: Entity | None = None


@dataclass(frozen=True, kw_only=True)
class EventSource:
    """One stream of events: its batch table (day-partitioned parquet) and its topic."""

    name: str
    batch_table: str
    stream_topic: str
    description: str
    timestamp_field: str = "event_time"
    arrival_field: str = "ingest_time"
    id_field: str = "event_id"
    consent_field: str = "consent_analytics"


@dataclass(frozen=True, kw_only=True)
class Window:
    """A sliding window of ``length`` with tail precision ``hop``, or the key's whole history.

    As of time ``t`` the window holds events with
    ``floor(t, hop) - length <= event_time <= t`` (see SEMANTICS.md). ``length=None`` is a *lifetime*
    window (Chronon's unbounded window): every event with ``event_time <= t`` since the key's first, kept as
    one running state that never expires (``hop`` must then be one day: no tail ever leaves, so there is no
    tail precision to choose).
    """

    length: timedelta | None
    hop: timedelta

    def __post_init__(self) -> None:
        if self.hop <= timedelta(0) or (self.length is not None and self.length <= timedelta(0)):
            raise ValueError("window length and hop must be positive")
        if self.length is None:
            if self.hop != timedelta(days=1):
                raise ValueError(f"a lifetime window has one running state: its hop must be 1 day, got {self.hop}")
            return
        if self.length % self.hop:
            raise ValueError(f"hop {self.hop} must divide window length {self.length}")
        if timedelta(days=1) % self.hop:
            raise ValueError(f"hop {self.hop} must divide one day, so tiles align to UTC midnight")

    @property
    def lifetime(self) -> bool:
        """Everything since the key's first event: one running state, no expiry."""
        return self.length is None

    @property
    def span(self) -> timedelta | None:
        """How long after a tile's start it leaves the window (``length + hop``); None: never (lifetime)."""
        return None if self.length is None else self.length + self.hop

    @property
    def name(self) -> str:
        return "lifetime" if self.length is None else _fmt(self.length)


W5M: Final = Window(length=timedelta(minutes=5), hop=timedelta(minutes=1))
W1H: Final = Window(length=timedelta(hours=1), hop=timedelta(minutes=5))
W24H: Final = Window(length=timedelta(hours=24), hop=timedelta(hours=1))
W7D: Final = Window(length=timedelta(days=7), hop=timedelta(hours=1))
W30D: Final = Window(length=timedelta(days=30), hop=timedelta(days=1))
# 30 days at the 7-day window's hourly hop: their difference is then exactly the 23 days before the week
W30D_HOURLY: Final = Window(length=timedelta(days=30), hop=timedelta(hours=1))
# Long windows on day tiles: a key holds at most one tile per day with an event (366 for a year), each a few
# partials; the lifetime window is one running state per key, which never expires.
W90D: Final = Window(length=timedelta(days=90), hop=timedelta(days=1))
W180D: Final = Window(length=timedelta(days=180), hop=timedelta(days=1))
W365D: Final = Window(length=timedelta(days=365), hop=timedelta(days=1))
LIFETIME: Final = Window(length=None, hop=timedelta(days=1))
WINDOWS: Final = (W5M, W1H, W24H, W7D, W30D, W30D_HOURLY, W90D, W180D, W365D, LIFETIME)
# The TTL of a view with a lifetime window: its values never go back to the defaults by themselves
NO_TTL: Final = timedelta.max


@dataclass(frozen=True, kw_only=True)
class Feature:
    """What every feature carries: identity, type, documentation and its cold-start default."""

    name: str
    dtype: DType
    description: str
    default: Any
    owner: str = "personalization@kairos"
    tags: Mapping[str, str] = field(default_factory=dict)
    min_value: float | None = None
    max_value: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"feature {self.name!r}: dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if not self.description:
            raise ValueError(f"feature {self.name!r}: a description is required")

    @property
    def nullable(self) -> bool:
        """A feature may be null only when its cold-start default is null."""
        return self.default is None

    def cast(self, value: Any) -> Any:
        """Apply the cold-start default and the spec dtype to a finalized value."""
        if value is None:
            return self.default
        convert = _CONVERT.get(self.dtype)
        return value if convert is None else convert(value)

    def caster(self) -> Callable[[Any], Any]:
        """:meth:`cast` as one function specialised to this feature's dtype and default, for hot loops."""
        if type(self).cast is not Feature.cast:
            return self.cast
        default, convert = self.default, _CONVERT.get(self.dtype)
        if convert is None:
            return lambda v: default if v is None else v
        if convert is _whole_seconds:
            # a timestamp feature is re-cast each time its aggregation changes, mostly to the same datetime
            # (a first-seen time, a minimum): remember the last one, (value, result) swapped in one assignment
            memo: list[tuple[Any, Any]] = [(None, default)]

            def cast_time(v: Any) -> Any:
                last = memo[0]
                if v is last[0]:
                    return last[1]
                out = _whole_seconds(v)
                memo[0] = (v, out)
                return out

            return cast_time
        return lambda v: default if v is None else convert(v)


def _whole_seconds(ts: datetime) -> datetime:
    # Feast stores timestamps as whole Unix seconds; the spec says so, for every engine.
    us = ts.microsecond
    return ts - timedelta(microseconds=us) if us else ts


# dtype -> conversion of a non-null finalized value (other dtypes are kept as they are)
_CONVERT: Final[dict[str, Callable[[Any], Any]]] = {
    "int64": int,
    "float64": float,
    "array<string>": lambda v: [str(x) for x in v],
    "timestamp": _whole_seconds,
}


@dataclass(frozen=True, kw_only=True)
class Aggregation(Feature):
    """``op`` over ``input`` for events of ``event_types`` (and ``where``) within ``window``."""

    op: Aggregator
    window: Window
    event_types: frozenset[EventType] = ALL_EVENT_TYPES
    input: Expr = field(default_factory=lambda: lit(1))
    where: Expr | None = None

    def accepts(self, event: Mapping[str, Any]) -> bool:
        if event["event_type"] not in self.event_types:
            return False
        return self.where is None or bool(self.where.fn(event))

    def value_of(self, event: Mapping[str, Any]) -> Any:
        """The input value of an accepted event, or ``None`` (nulls are not aggregated)."""
        return self.input.fn(event)


@dataclass(frozen=True, kw_only=True)
class Derived(Feature):
    """A feature computed from other features of the same view, after defaults apply."""

    expr: Expr


@dataclass(frozen=True, kw_only=True)
class FeatureView:
    """A group of windowed aggregations of one source, keyed by one entity (Chronon's GroupBy)."""

    name: str
    entity: Entity
    source: EventSource
    aggregations: tuple[Aggregation, ...]
    derived: tuple[Derived, ...] = ()
    description: str
    owner: str = "personalization@kairos"
    tags: Mapping[str, str] = field(default_factory=dict)
    online: bool = True
    # Freshness on online reads (Feast does not enforce a view's TTL online): a stored row older than
    # ``max_age`` (default: the TTL) is stale; ``on_stale`` says what serving answers with then
    max_age: timedelta | None = None
    on_stale: StalePolicy = "default"

    @property
    def features(self) -> tuple[Feature, ...]:
        return (*self.aggregations, *self.derived)

    @property
    def freshness_limit(self) -> timedelta:
        """How old a stored row may be before serving treats it as stale: ``max_age``, else the TTL."""
        return self.max_age if self.max_age is not None else self.ttl

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def hops(self) -> frozenset[timedelta]:
        return frozenset(a.window.hop for a in self.aggregations)

    @property
    def lifetime(self) -> bool:
        """Whether some aggregation has a lifetime window: the view's values never expire by themselves."""
        return any(a.window.lifetime for a in self.aggregations)

    @property
    def ttl(self) -> timedelta:
        """After this long without events every windowed value is back at its default: the longest window plus
        its hop, or :data:`NO_TTL` (``timedelta.max``) for a view with a lifetime window, which never is."""
        spans = [a.window.span for a in self.aggregations]
        return max(s for s in spans if s is not None) if None not in spans else NO_TTL

    def event_types(self) -> frozenset[str]:
        """The event types any aggregation of the view reads: the only events its state needs to see."""
        return frozenset(str(t) for a in self.aggregations for t in a.event_types)

    def event_fields(self) -> frozenset[str]:
        """Event fields that the view reads (keys, times, inputs and filters)."""
        out = {self.entity.join_key, self.source.timestamp_field, self.source.arrival_field,
               self.source.id_field, self.source.consent_field, "event_type"}
        for a in self.aggregations:
            out |= a.input.columns()
            if a.where is not None:
                out |= a.where.columns()
        return frozenset(out)

    def tags_of(self, feature: Feature) -> dict[str, str]:
        """Tags of one feature: the view's, the feature's own, and its window and aggregation."""
        out = {"view": self.name, "entity": self.entity.name, **self.tags, **feature.tags}
        if isinstance(feature, Aggregation):
            out |= {"window": feature.window.name, "aggregation": feature.op.kind}
        else:
            out["derived"] = "true"
        return out

    def finalize_row(self, aggregated: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults and dtypes for the aggregations, then the derived features, in spec order."""
        row = {a.name: a.cast(aggregated.get(a.name)) for a in self.aggregations}
        for d in self.derived:
            row[d.name] = d.cast(d.expr.fn(row))
        return row


@dataclass(frozen=True, kw_only=True)
class RequestField:
    name: str
    dtype: DType
    description: str


REQUEST_TIME: Final = RequestField(name="request_time", dtype="timestamp",
                                   description="When the caller asks for features (UTC)")


@dataclass(frozen=True, kw_only=True)
class OnDemandFeature(Feature):
    """A request-time feature: an expression over view features and request fields."""

    expr: Expr


@dataclass(frozen=True, kw_only=True)
class OnDemandView:
    name: str
    sources: tuple[FeatureView, ...]
    request_fields: tuple[RequestField, ...]
    features: tuple[OnDemandFeature, ...]
    description: str
    owner: str = "personalization@kairos"

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def tags_of(self, feature: Feature) -> dict[str, str]:
        return {"view": self.name, "on_demand": "true", **feature.tags}

    def compute(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The on-demand features from view features and request fields.

        Timestamp request fields are read at whole-second precision, as Feast
        transmits them, so every caller computes the same value.
        """
        row = dict(inputs)
        for r in self.request_fields:
            if r.dtype == "timestamp" and row.get(r.name) is not None:
                row[r.name] = row[r.name].replace(microsecond=0)
        return {f.name: f.cast(f.expr.fn(row)) for f in self.features}


@dataclass(frozen=True, kw_only=True)
class FeatureService:
    """A named, versioned set of features a model consumes."""

    name: str
    description: str
    views: tuple[FeatureView | OnDemandView, ...]
    owner: str = "personalization@kairos"
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def feature_refs(self) -> tuple[str, ...]:
        """Feast-style ``view:feature`` references."""
        return tuple(f"{v.name}:{n}" for v in self.views for n in v.feature_names)

    @property
    def stored_views(self) -> tuple[FeatureView, ...]:
        """The stored views the service reads: its feature views and the sources of its on-demand views."""
        out: list[FeatureView] = []
        for v in self.views:
            for fv in (v,) if isinstance(v, FeatureView) else v.sources:
                if fv not in out:
                    out.append(fv)
        return tuple(out)

    @property
    def features(self) -> tuple[Feature, ...]:
        """Its features in service order (stored and on-demand)."""
        return tuple(f for v in self.views for f in v.features)


def check_unique(kind: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{kind} name {n!r} is declared twice")
        seen.add(n)


def as_utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        raise ValueError(f"{ts!r} has no timezone; Kairos times are UTC")
    return ts
