"""The job steps: what ``kairos <command>``, ``make``, the demo and the DAGs all call.

Each step takes the settings object and its interval or inputs, does one thing, and
returns a typed result (no printing: the command renders results, a DAG puts them in
its asset events). Long steps take a :class:`pipelines.progress.Progress`.

=================  =======================================================================
step               does
=================  =======================================================================
:func:`simulate`   a behavioural event log (and its latent truth) under ``data_dir``
:func:`import_log` a foreign export (CSV or parquet) as Kairos events, through a mapping
:func:`apply`      the Feast repo generated from the specs, then ``feast apply``
:func:`backfill`   Spark: every offline table for ``[start, end)`` (UTC days)
:func:`triggers`   Spark: the offline table of trigger firings for ``[start, end)`` (UTC days)
:func:`stream`     Bytewax: the replay file or Kafka topic into the logs and the online store
:func:`parity`     reference vs Spark vs Bytewax vs Feast on a simulated adversarial log
:func:`train`      the tasks of training.run: point-in-time sets, XGBoost vs baselines, MLflow, the gate
=================  =======================================================================

The engines import pyspark, bytewax, feast and mlflow, seconds each; each step imports
what it runs inside its body so that ``kairos --help`` and the quick steps start at once.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conf.settings import Settings, load_settings
from features.registry import REGISTRY
from pipelines.engine import BuildReport
from pipelines.ingest.import_config import ImportConfig
from pipelines.ingest.importer import ImportSummary, import_file
from pipelines.ingest.simulator import SimulationConfig, SimulationSummary, simulate_to_dir
from pipelines.progress import Progress, Silent

if TYPE_CHECKING:
    from training.pipeline import TrainingReport
    from validation.parity import ParityReport


def simulate(settings: Settings, *, users: int | None = None, days: int | None = None, seed: int | None = None,
             out: Path | None = None, workers: int = 1, chunk_users: int = 4000, jsonl: bool = False,
             **rates: float) -> SimulationSummary:
    """Simulate ``users`` over ``days`` (default: ``settings.simulator``) into ``out`` (default: ``data_dir``):
    ``events/`` by day, ``truth/``, and with ``jsonl`` the replay file ``stream.jsonl`` in arrival order.
    ``rates``: ``duplicate_rate``, ``out_of_order_rate``, ``late_rate`` overrides."""
    overrides: dict[str, Any] = {k: v for k, v in {"users": users, "days": days, "seed": seed, **rates}.items()
                                 if v is not None}
    config = SimulationConfig.from_settings(settings, **overrides)
    return simulate_to_dir(config, out or settings.data_path, workers=workers, chunk_users=chunk_users, jsonl=jsonl)


def import_log(settings: Settings, mapping: Path, source: Path, *, out: Path | None = None,
               dead_letter: Path | None = None, workers: int | None = None) -> ImportSummary:
    """Import ``source`` through the mapping ``mapping`` (a ``conf/importers/*.yaml``) into ``out``
    (default: ``settings.events_path``); rejected rows go to the dead-letter store, with counts."""
    return import_file(ImportConfig.load(mapping), source, out or settings.events_path, dead_letter, workers=workers)


@dataclass
class Applied:
    """What ``feast apply`` registered."""

    repo: Path
    registry: str | None = None
    objects: list[str] = field(default_factory=list)  # one line per kind of object


def apply(settings: Settings, *, write_only: bool = False) -> Applied:
    """Generate the Feast repo folder from the specs and, unless ``write_only``, ``feast apply`` it."""
    from pipelines.store.repo import apply_repo, describe, write_repo

    repo = write_repo(settings)
    if write_only:
        return Applied(repo)
    store = apply_repo(settings)
    return Applied(repo, str(store.config.registry.path), describe(store))


def utc_midnight(d: date | None) -> datetime | None:
    return None if d is None else datetime(d.year, d.month, d.day, tzinfo=UTC)


@dataclass
class Backfilled:
    report: BuildReport
    dead_letters: dict[str, int]  # dead-lettered rows per problem column
    start: datetime | None
    end: datetime | None


def backfill(settings: Settings, *, start: date | None = None, end: date | None = None,
             views: list[str] | None = None, progress: Progress | None = None, spark: Any = None) -> Backfilled:
    """Spark: compute every change point of ``views`` (default: all) in ``[start, end)`` and replace those days of
    their offline tables. Reruns of an interval are idempotent."""
    from pipelines.spark.backfill import SparkBackfill

    engine = SparkBackfill(settings, spark=spark)
    engine.progress = progress or Silent()
    chosen = [REGISTRY.view(v) for v in views] if views else None
    lo, hi = utc_midnight(start), utc_midnight(end)
    report = engine.backfill(lo, hi, views=chosen)
    return Backfilled(report, dict(engine.dead_letters), lo, hi)


def triggers(settings: Settings, *, start: date | None = None, end: date | None = None,
             spark: Any = None) -> dict[str, int]:
    """Spark: every trigger firing in ``[start, end)`` from the event log (the stream's trigger history, for
    training and backtests), replacing those days of ``settings.trigger_table_path``; firings per trigger."""
    from pipelines.spark.triggers import SparkTriggers

    return SparkTriggers(settings, spark=spark).build(utc_midnight(start), utc_midnight(end)).fires


def log_end(settings: Settings) -> datetime:
    """The UTC midnight after the last arrival in the event log: where a replay's expiries stop by default."""
    from validation.parity import parity_end

    return parity_end(settings)


def replay_file(settings: Settings, *, rebuild: bool = False) -> tuple[Path, int]:
    """The stream's replay file (``settings.events_log_path``), written from the event log in arrival order if it is
    missing (or ``rebuild``); returns its path and number of events."""
    from pipelines.ingest.eventlog import read_parquet
    from pipelines.ingest.simulator import write_stream
    from pipelines.stream.sources import JsonlReplaySource

    path = settings.events_log_path
    if rebuild or not path.exists():
        return path, write_stream(read_parquet(settings.events_path), path)
    return path, JsonlReplaySource(path).count()


@dataclass
class Streamed:
    report: BuildReport
    source: str
    events: int | None  # the replay's events (None for Kafka)
    workers: int
    until: datetime | None
    outputs: dict[str, str | None]


def stream(settings: Settings, *, path: Path | None = None, workers: int | None = None,
           until: datetime | None = None, live: bool = False, online: bool = True, fresh: bool = True,
           progress: Progress | None = None) -> Streamed:
    """Bytewax: run the feature dataflow over the settings' source into the changelog, the drops log and (with
    ``online``) the Feast online store.

    A replay (``stream.source: file``) reads ``path`` (default: the replay file, written from the event log if
    missing) and runs expiries up to ``until`` (default: the midnight after the log's last arrival). A Kafka
    source reads the topic to its end, or with ``live`` tails it with wall-clock timers until interrupted.
    ``fresh`` clears the previous run's logs first."""
    from pipelines.store.repo import apply_repo
    from pipelines.stream.engine import BytewaxEngine
    from pipelines.stream.types import StreamClock, StreamOutputs

    progress = progress or Silent()
    outputs = StreamOutputs.from_settings(settings, online=online)
    if fresh:
        for d in (outputs.changelog_dir, outputs.drops_dir):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
    if online:
        apply_repo(settings)
    kafka = settings.stream.source == "kafka"
    events: int | None = None
    if kafka:
        clock = StreamClock.live() if live else StreamClock(until=until)
        where = f"kafka {settings.stream.brokers} {settings.stream.topic}"
    else:
        if path is None:
            path, events = replay_file(settings)
        else:
            from pipelines.stream.sources import JsonlReplaySource

            events = JsonlReplaySource(path).count()
        until = until or log_end(settings) - timedelta(microseconds=1)
        clock = StreamClock(until=until)
        where = str(path)
    engine = BytewaxEngine(settings, clock=clock, outputs=outputs)
    engine.progress = progress
    n = workers or settings.stream.workers
    with progress.task("bytewax replay" if not kafka else "bytewax", total=events, unit="events") as task:
        source = engine.default_source(path=path, tail=live, on_batch=task.advance)
        report = engine.run(source, workers=n)
    return Streamed(report, where, events, n, until, {
        "changelog": str(outputs.changelog_dir) if outputs.changelog_dir else None,
        "drops": str(outputs.drops_dir), "dead_letters": str(outputs.dead_letter_dir),
        "online_store": str(settings.online_store_path) if online else None})


@dataclass
class ParityRun:
    report: ParityReport
    simulated: SimulationSummary
    simulated_from: datetime
    path: Path  # the JSON report


def parity(settings: Settings, *, users: int = 300, days: int = 6, start: datetime | None = None,
           workers: int = 2, reference_keys: int | None = 200, data_dir: Path | None = None,
           progress: Progress | None = None) -> ParityRun:
    """Simulate an adversarial log (duplicates, out-of-order and late events) in a directory of its own, run the
    reference, Spark, Bytewax and Feast on it and compare them feature by feature."""
    import json

    from validation.parity import run_parity

    data_dir = data_dir or settings.data_path / "parity-run"
    online = settings.online_store.model_dump()
    if settings.online_store.type == "sqlite":  # a store of its own, beside the run's data
        online["path"] = str(data_dir / "online.db")
    run_settings = load_settings(data_dir=data_dir, online_store=online)
    shutil.rmtree(run_settings.data_path, ignore_errors=True)
    start = start or datetime(2026, 10, 28, tzinfo=UTC)  # the log crosses a month boundary
    cfg = SimulationConfig.from_settings(run_settings, users=users, days=days, start=start,
                                         duplicate_rate=0.05, out_of_order_rate=0.15, late_rate=0.05)
    sim = simulate_to_dir(cfg, run_settings.data_path)
    report = run_parity(run_settings, workers=workers, reference_keys=reference_keys, progress=progress or Silent())
    path = run_settings.data_path / "parity" / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=1, default=str))
    return ParityRun(report, sim, start, path)


def train(settings: Settings, *, events_dir: Path | None = None, truth_dir: Path | None = None,
          progress: Progress | None = None, spark: Any = None, tasks: list[str] | None = None) -> TrainingReport:
    """Train, validate, track and promote the models of ``training.run`` (or ``tasks``) on the event log (Spark
    backfill first of the offline tables they read that are missing)."""
    from training.pipeline import train_all

    return train_all(settings, events_dir=events_dir, truth_dir=truth_dir, spark=spark, progress=progress or Silent(),
                     task_names=tasks)
