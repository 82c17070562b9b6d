"""Event intake for ``POST /v1/events``: validate each event, honour consent, append to the event topic.

* The service stamps ``ingest_time`` (arrival is the server's to say; a client's value is
  replaced), then :func:`features.events.validate_event` checks the event, as every other
  ingest path does. Each problem is reported with the event's index in the batch, its
  ``event_id`` and the field.
* Invalid events go to the dead-letter store (``data_dir/dead_letter/api.jsonl``) with their
  problems: nothing is lost.
* A valid event of a user without analytics consent is counted and stored nowhere, the
  same rule the engines apply (:class:`features.semantics.EventRules`).
* Accepted events are appended, in batch order, to the event topic: the Kafka topic
  (``stream.source: kafka``, keyed by ``user_id`` as :func:`pipelines.ingest.kafka.publish_to_kafka`
  does, so a user's events stay in order) or the embedded event log, the JSON-lines file
  the Bytewax engine replays (``settings.events_log_path``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from conf.settings import Settings
from features.events import validate_event
from pipelines.ingest.eventlog import DeadLetterStore, encode_json


@dataclass(frozen=True)
class Problem:
    index: int
    event_id: str | None
    field: str
    problem: str


@dataclass
class Intake:
    """What one batch came to."""

    accepted: list[dict[str, Any]] = field(default_factory=list)
    no_consent: int = 0
    rejected: int = 0
    problems: list[Problem] = field(default_factory=list)


def check_batch(raws: Sequence[Any], dead_letters: DeadLetterStore, *, now: datetime | None = None) -> Intake:
    """Validate a batch (see the module docstring); invalid events are dead-lettered here."""
    arrived = now or datetime.now(UTC)
    out = Intake()
    for i, raw in enumerate(raws):
        if not isinstance(raw, dict):
            problem = Problem(i, None, "(event)", f"must be a JSON object, got {type(raw).__name__}")
            out.problems.append(problem)
            out.rejected += 1
            dead_letters.put(raw, [])
            continue
        record, errors = validate_event({**raw, "ingest_time": arrived})
        if record is None:
            eid = raw.get("event_id")
            eid = eid if isinstance(eid, str) else None
            out.problems += [Problem(i, eid, e.field, e.problem) for e in errors]
            out.rejected += 1
            dead_letters.put(raw, errors)
        elif not record["consent_analytics"]:
            out.no_consent += 1
        else:
            out.accepted.append(record)
    return out


class EventTopic(Protocol):
    name: str

    def append(self, records: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class FileTopic:
    """The embedded event topic: JSON lines appended to the stream's replay file, one write per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        text = "".join(encode_json(r) + "\n" for r in records)
        with self._lock:
            self._fh.write(text)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class KafkaTopic:
    """The Kafka event topic, keyed by ``user_id``; a batch is acknowledged once every event is delivered."""

    def __init__(self, brokers: str, topic: str, *, timeout: float = 10.0) -> None:
        from confluent_kafka import Producer

        from pipelines.ingest.kafka import ensure_topic

        ensure_topic(brokers, topic, timeout=timeout)  # as the stream's producer does; an existing topic is kept
        self.name = f"kafka:{topic}"
        self.topic, self.timeout = topic, timeout
        self._producer = Producer({"bootstrap.servers": brokers, "linger.ms": 1, "enable.idempotence": True})

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for r in records:
            self._producer.produce(self.topic, key=str(r["user_id"]).encode(), value=encode_json(r).encode(),
                                   on_delivery=delivered)
        left = self._producer.flush(self.timeout)
        if left or failures:
            raise RuntimeError(f"{left or len(failures)} events not delivered to {self.topic}: "
                               f"{Counter(failures).most_common(1)[0][0] if failures else 'timeout'}")

    def close(self) -> None:
        self._producer.flush(self.timeout)


def event_topic(settings: Settings) -> EventTopic:
    """The topic the settings name: Kafka when ``stream.source`` is ``kafka``, else the embedded event log."""
    if settings.stream.source == "kafka":
        if not settings.stream.brokers:
            raise ValueError("stream.brokers is required when stream.source is kafka")
        return KafkaTopic(settings.stream.brokers, settings.stream.topic)
    return FileTopic(settings.events_log_path)
