"""The stream's vocabulary: the rows and records it emits, its clock, where it writes, and the items between steps.

Every other module of :mod:`pipelines.stream` speaks these; none of them needs Bytewax.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from conf.settings import Settings

INVALID = "invalid"
ADMISSION_KEY = "user_id"  # admission is per user; views keyed by it share its step
KEY_SEP = "|"
EVENT_TIMESTAMP = "event_timestamp"
DEFAULT_PARTS = 4
ID_BUCKET_CHARS = 2  # the ids step is keyed by an id's last characters: a few hundred keys, whatever the load

Raw = tuple[str, Any]  # (source position, payload: JSON text/bytes or a mapping)
Event = dict[str, Any]
Positioned = tuple[str, Event]  # (source position, validated event)
Claim = tuple[str, Event]  # an admitted event and its source position, for the id-collision check
Forward = tuple[str, tuple[str, Event]]  # an admitted event for the key (``view|key``) of a view routed on

STATS: Counter[str] = Counter()  # process-wide diagnostics (clock regressions of live timers)


class FeatureRow(NamedTuple):
    """One emitted row: the values of ``view`` for ``key`` from ``event_timestamp`` on."""

    view: str
    key: str
    event_timestamp: datetime
    values: dict[str, Any]


class DropRecord(NamedTuple):
    """An event that does not count, named by its source position."""

    reason: str
    id: str
    event_id: str | None
    ingest_time: datetime | None


class Invalid(NamedTuple):
    """An invalid event: its source position, payload and ``(field, problem)`` pairs."""

    pos: str
    payload: Any
    errors: tuple[tuple[str, str], ...]


class Row(msgspec.Struct, gc=False):
    """One emitted row, compact: the features of ``view`` for ``key`` from ``event_timestamp`` on, as a tuple in
    spec order (``FeatureView.feature_names``). It is the changelog line as is; :meth:`feature_row` names them."""

    view: str
    key: str
    event_timestamp: datetime
    values: tuple[Any, ...]

    def feature_row(self, names: Mapping[str, Sequence[str]]) -> FeatureRow:
        return FeatureRow(self.view, self.key, self.event_timestamp,
                          dict(zip(names[self.view], self.values, strict=True)))


class Drops(NamedTuple):
    """The drop (or collision) records one call of a keyed step emitted."""

    records: list[DropRecord]


class Claims(NamedTuple):
    """The events one call of the admission step admitted, keyed by their id's bucket (the ids step)."""

    items: list[tuple[str, Claim]]


class Admitted(NamedTuple):
    """The events one call of the admission step admitted, in arrival order, for the views routed on."""

    events: list[Event]


# What one call of the admission step emits, each its own item, told apart by type (one ``branch`` step, no copies
# of the step's output for several readers): the rows of its views (a ``list``), the drops, the claims, the
# admitted events.
Emitted = list[Row] | Drops | Claims | Admitted


@dataclass(frozen=True, kw_only=True)
class StreamClock:
    """How the stream's data time (``ingest_time``) drives timers; see the module docstring.

    ``offset``: wall time = data time + offset for live wake-ups; ``None`` runs on data
    time only (a replay). ``grace``: how long a live wake-up waits past an expiry for
    events of that key still in flight. ``until``: at EOF, run expiries up to this time
    (``None``: until every window is empty). ``flush_at_eof``: run them at all.
    """

    offset: timedelta | None = None
    grace: timedelta = timedelta(seconds=2)
    until: datetime | None = None
    flush_at_eof: bool = True

    @classmethod
    def live(cls, offset: timedelta = timedelta(0), grace: timedelta = timedelta(seconds=2)) -> StreamClock:
        return cls(offset=offset, grace=grace)

    @property
    def is_live(self) -> bool:
        return self.offset is not None

    def wall(self, data_time: datetime) -> datetime:
        assert self.offset is not None
        return data_time + self.offset + self.grace

    def due(self) -> datetime:
        """The latest data time whose expiries a live wake-up may run now."""
        assert self.offset is not None
        return datetime.now(UTC) - self.offset - self.grace


@dataclass(kw_only=True)
class StreamOutputs:
    """Where the dataflow writes: file logs, Feast, memory. ``parts`` files per log."""

    changelog_dir: Path | None
    drops_dir: Path
    dead_letter_dir: Path
    online: bool = False
    memory: list[FeatureRow] | None = None
    parts: int = DEFAULT_PARTS
    online_parts: int | None = None  # Feast writers; default one per view
    # the trigger output (pipelines.stream.triggers): the trigger log's directory, or a Kafka topic (and brokers);
    # neither: the stream fires no trigger
    triggers_dir: Path | None = None
    trigger_topic: str | None = None
    trigger_brokers: list[str] = field(default_factory=list)

    @property
    def fires_trigger(self) -> bool:
        return self.triggers_dir is not None or self.trigger_topic is not None

    @classmethod
    def from_settings(cls, settings: Settings, *, online: bool = False, changelog: bool = True,
                      memory: list[FeatureRow] | None = None, triggers: bool = True) -> StreamOutputs:
        root = settings.data_path / "stream"
        stream = settings.stream
        kafka = triggers and stream.trigger_output == "kafka"
        if kafka and not stream.brokers:
            raise ValueError("stream.brokers is required when stream.trigger_output is kafka")
        return cls(changelog_dir=root / "changelog" if changelog else None, drops_dir=root / "drops",
                   dead_letter_dir=settings.dead_letter_path, online=online, memory=memory,
                   triggers_dir=settings.trigger_log_path if triggers and not kafka else None,
                   trigger_topic=stream.trigger_topic if kafka else None,
                   trigger_brokers=[b for b in stream.brokers.split(",") if b] if kafka else [])



def kafka_raw(msg: Any) -> Raw:
    """A Kafka message as a source item: ``("topic:partition:offset", value)``."""
    return (f"{msg.topic}:{msg.partition}:{msg.offset}", msg.value)
