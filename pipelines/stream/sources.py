"""Where the stream's events come from: a JSON-lines replay of the event log, or a Kafka topic.

Every item carries its source position (``file:line`` or ``topic:partition:offset``), which names dead letters
and drops. The producer side of Kafka (publishing, topics) is ingest's: :mod:`pipelines.ingest.kafka`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition

from pipelines.ingest.kafka import broker_list
from pipelines.stream.types import Raw

log = logging.getLogger(__name__)


class JsonlReplayPartition(StatefulSourcePartition[Raw, tuple[int, int]]):  # type: ignore[misc]
    """The one partition of :class:`JsonlReplaySource`: reads ``batch_size`` lines per batch from a byte offset."""

    def __init__(self, path: Path, batch_size: int, rate: float | None, resume: tuple[int, int] | None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        offset, self._line = resume if resume is not None else (0, 0)
        self._on_batch = on_batch
        self._name = path.name
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._fh.seek(offset)
        if resume is not None:
            log.warning("replay of %s resumes at line %d (byte %d) from a recovery snapshot", path, self._line, offset)
        self._batch = batch_size if rate is None else max(1, min(batch_size, round(rate / 100)))
        self._pause = None if rate is None else timedelta(seconds=self._batch / rate)
        self._awake: datetime | None = None

    def next_batch(self) -> list[Raw]:
        out: list[Raw] = []
        while len(out) < self._batch:
            line = self._fh.readline()
            if not line:
                if not out:
                    raise StopIteration
                break
            self._line += 1
            if line.strip():
                out.append((f"{self._name}:{self._line}", line))
        if self._pause is not None:
            self._awake = datetime.now(UTC) + self._pause
        if self._on_batch is not None:
            self._on_batch(len(out))
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        return (self._fh.tell(), self._line)

    def close(self) -> None:
        self._fh.close()


class JsonlReplaySource(FixedPartitionedSource[Raw, tuple[int, int]]):  # type: ignore[misc]
    """Replay a JSON-lines event log (one partition, read in file order = arrival order).

    Items are ``("<file>:<line>", line bytes)``, ``batch_size`` per read: a batch holds several events of
    each active key, so the keyed steps' per-key, per-call costs are shared by more events. ``rate`` paces
    the replay (events per second of wall time); resume state is the byte offset and line number.
    ``on_batch`` is called with the number of events of each batch read (a progress display; the worker's
    thread calls it, so it must be thread-safe, as rich's progress is).
    """

    def __init__(self, path: str | Path, *, batch_size: int = 50_000, rate: float | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.rate = rate
        self.on_batch = on_batch

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(self, step_id: str, for_part: str, resume_state: tuple[int, int] | None) -> JsonlReplayPartition:
        return JsonlReplayPartition(self.path, self.batch_size, self.rate, resume_state, self.on_batch)

    def count(self) -> int:
        """The events in the file (non-blank lines): a replay's total, for progress."""
        with open(self.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())


def kafka_source(brokers: Sequence[str] | str, topic: str, *, tail: bool = True, batch_size: int = 1000,
                 add_config: Mapping[str, str] | None = None) -> Source:
    """A ``bytewax.connectors.kafka.KafkaSource`` (partitions assigned, no consumer group).

    ``tail=False`` ends at the end of every partition (a bounded run). Fetches wait at
    most 20 ms, for freshness.
    """
    from bytewax.connectors.kafka import KafkaSource

    config = {"fetch.wait.max.ms": "20", "socket.nagle.disable": "true", **(add_config or {})}
    return KafkaSource(broker_list(brokers), [topic], tail=tail, batch_size=batch_size, add_config=config)


