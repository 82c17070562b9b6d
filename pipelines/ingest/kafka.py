"""Kafka, the producer side: the topic the stream reads, and publishing events to it in the order it needs.

The consumer is the stream's source (:func:`pipelines.stream.sources.kafka_source`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipelines.ingest.eventlog import decode_json, encode_json


def broker_list(brokers: Sequence[str] | str) -> list[str]:
    """``"a:9092,b:9092"`` or a sequence, as a list of brokers."""
    return [b for b in brokers.split(",") if b] if isinstance(brokers, str) else list(brokers)


def publish_to_kafka(events: Iterable[Mapping[str, Any] | str], brokers: Sequence[str] | str, topic: str, *,
                     partitions: int = 1, create: bool = True, timeout: float = 30.0) -> int:
    """Append events (records or JSON lines) to ``topic``, in the given order, keyed by ``user_id``.

    Keying by user keeps each user's (and each session's) events in one partition, in
    order: the order the stream needs. Creates the topic (``partitions``) if missing.
    Returns how many were published; raises if any delivery failed.
    """
    from confluent_kafka import KafkaException, Producer

    servers = ",".join(broker_list(brokers))
    if create:
        ensure_topic(servers, topic, partitions=partitions, timeout=timeout)
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer({"bootstrap.servers": servers, "linger.ms": 5, "enable.idempotence": False,
                         "acks": "all", "queue.buffering.max.messages": 200_000})
    n = 0
    for e in events:
        if isinstance(e, str):
            line, user = e.strip(), decode_json(e).get("user_id")
        else:
            line, user = encode_json(e), e.get("user_id")
        while True:
            try:
                producer.produce(topic, value=line.encode(), key=None if user is None else str(user).encode(),
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        n += 1
    left = producer.flush(timeout)
    if left or failures:
        raise KafkaException(f"{left} events not delivered to {topic!r}; failures: {failures[:3]}")
    return n


def ensure_topic(brokers: str, topic: str, *, partitions: int = 1, timeout: float = 30.0) -> None:
    """Create ``topic`` unless it exists."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": brokers})
    if topic in admin.list_topics(timeout=timeout).topics:
        return
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in futures.values():
        try:
            f.result(timeout)
        except Exception as exc:  # a concurrent creator won the race
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise

