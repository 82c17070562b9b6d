"""The dataflow process runs without the cyclic collector (``relax_gc``): safe only if the engine leaves no cyclic
garbage behind, whatever it processes.

The whole dataflow (validation with dead letters, admission with late, duplicate and non-consented events, every
view's keyed state, the changelog and drops logs, the Feast SQLite online writer; then the Kafka source against a
real Tansu broker) runs in-process with the collector off, over a log and over one eight times longer.
``gc.collect()`` after each run finds what it left unreachable in cycles: a leak per event, message, batch or epoch
would grow with the log; the run's fixed set-up may not.
"""

from __future__ import annotations

import gc
import uuid
from pathlib import Path
from typing import Any

from bytewax.testing import TestingSource, run_main

from pipelines.ingest.eventlog import encode_json
from pipelines.ingest.kafka import publish_to_kafka
from pipelines.store.repo import apply_repo
from pipelines.stream.engine import BytewaxEngine, relaxed_gc
from pipelines.stream.sources import kafka_source
from pipelines.stream.types import StreamClock, StreamOutputs
from tests.adversarial import adversarial_log
from tests.conftest import settings_in
from tests.integration.test_kafka_stream import broker  # noqa: F401 - the Tansu broker fixture
from tests.parity.test_stream_reference import in_arrival_order, replay_items


def cyclic_garbage_after_run(root: Path, events: int) -> tuple[int, int]:
    """(objects ``gc.collect()`` finds unreachable after the run, changelog rows written)."""
    settings = settings_in(root)
    apply_repo(settings)
    log = adversarial_log(5, users=20, events=events)
    items: list[Any] = replay_items(log)
    items += [(f"log:bad-{i}", "{nope" if i % 2 else encode_json({**log[i], "amount": -5}))
              for i in range(events // 50)]  # dead letters too
    memory: list[Any] = []
    builder = BytewaxEngine(settings, outputs=StreamOutputs.from_settings(settings, online=True, memory=memory))
    flow = builder.dataflow(TestingSource(items, batch_size=64))
    gc.collect()
    with relaxed_gc():
        assert not gc.isenabled(), "the dataflow runs without the cyclic collector"
        run_main(flow)
        found = gc.collect()
    return found, len(memory)


def test_the_engine_leaves_no_cyclic_garbage_that_grows_with_the_events(tmp_path: Path) -> None:
    # the least of two runs of each size: other threads of the test process (a Spark gateway, MLflow, earlier
    # tests' clients) can only add garbage while the collector is off, never take the dataflow's away
    small, small_rows = min(cyclic_garbage_after_run(tmp_path / f"small{i}", 300) for i in range(2))
    large, large_rows = min(cyclic_garbage_after_run(tmp_path / f"large{i}", 2400) for i in range(2))
    assert large_rows > 5 * small_rows > 0, (small_rows, large_rows)
    # what a run leaves once (Bytewax's and Feast's set-up) is the same for both; a cycle per event, row or batch
    # would leave at least one object per extra row (thousands); a tenth of that is the bar
    assert large - small < (large_rows - small_rows) / 10, (
        f"{small} objects in cycles after {small_rows} rows, {large} after {large_rows}")


def cyclic_garbage_after_kafka_run(brokers: str, root: Path, events: int) -> tuple[int, int]:
    """As :func:`cyclic_garbage_after_run`, from a Kafka topic (2 partitions) read to its end."""
    settings = settings_in(root)
    log = adversarial_log(6, users=20, events=events)
    topic = f"kairos.cycles.{uuid.uuid4().hex[:8]}"
    assert publish_to_kafka(in_arrival_order(log), brokers, topic, partitions=2) == len(log)
    until = max(e["ingest_time"] for e in log)
    outputs = StreamOutputs.from_settings(settings)
    builder = BytewaxEngine(settings, clock=StreamClock(until=until), outputs=outputs)
    gc.collect()
    gc.disable()  # also around what run() does after the dataflow (its report), until the count below
    try:
        report = builder.run(kafka_source(brokers, topic, tail=False), workers=1)
        found = gc.collect()
    finally:
        gc.enable()
    return found, sum(report.views.values())


def test_the_kafka_source_leaves_no_cyclic_garbage_that_grows_with_the_events(broker: str,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    small, small_rows = cyclic_garbage_after_kafka_run(broker, tmp_path / "small", 300)
    large, large_rows = cyclic_garbage_after_kafka_run(broker, tmp_path / "large", 2400)
    assert large_rows > 5 * small_rows > 0, (small_rows, large_rows)
    assert large - small < 200, f"{small} objects in cycles after {small_rows} rows, {large} after {large_rows}"
