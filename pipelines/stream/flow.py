"""The stream's entry points: the dataflow for ``python -m bytewax.run``, and the report of a run's logs.

Public functions (the ``kairos stream`` command calls them):

* :func:`build_flow` - the dataflow from settings and overrides,
  ``python -m bytewax.run "pipelines.stream.flow:build_flow(source='kafka')"``;
* ``flow`` - the settings' dataflow, built on first access: ``python -m bytewax.run pipelines.stream.flow:flow``;
* :func:`stream_report` - rows per view and drops per reason from a run's logs (a :class:`BuildReport`);
* ``kairos stream`` runs it in this process with a progress bar, ``kairos stream --report-only`` reports the logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow

from conf.settings import load_settings
from features.events import parse_time
from features.registry import REGISTRY
from pipelines.engine import BuildReport
from pipelines.stream.engine import BytewaxEngine, read_report, relax_gc
from pipelines.stream.types import DEFAULT_PARTS, StreamClock, StreamOutputs


def build_flow(source: str | None = None, path: str | None = None, *, brokers: str | None = None,
               topic: str | None = None, tail: bool = True, live: bool | None = None,
               offset_seconds: float | None = None, grace_seconds: float = 2.0, until: str | None = None,
               flush_at_eof: bool = True, online: bool | None = None,
               changelog: str | None = None, drops: str | None = None, rate: float | None = None,
               views: Sequence[str] | None = None, parts: int = DEFAULT_PARTS) -> Dataflow:
    """The dataflow for ``python -m bytewax.run "pipelines.stream.flow:build_flow(...)"``.

    Defaults come from the settings (``stream.source``, ``brokers``, ``topic``; the
    replay file ``data_path/stream.jsonl``). ``live`` (default: a tailing Kafka source, or
    an ``offset_seconds``) turns on wall-clock wake-ups for expiries: wall time = data
    time + ``offset_seconds`` (default 0: ``ingest_time`` is wall time; a replay of
    history at its own pace passes now minus its first arrival). ``online`` (default:
    live) writes the Feast online store, applying the repo first if it was never applied.
    ``until`` is an ISO time bounding the EOF flush; ``changelog=''`` turns the changelog off.
    """
    overrides: dict[str, Any] = {}
    if source or brokers or topic:
        base = load_settings().stream
        overrides["stream"] = base.model_copy(update={k: v for k, v in
                                                      (("source", source), ("brokers", brokers), ("topic", topic))
                                                      if v is not None}).model_dump()
    settings = load_settings(**overrides)
    is_kafka = settings.stream.source == "kafka"
    live = (is_kafka and tail) or offset_seconds is not None if live is None else live
    online = live if online is None else online
    offset = timedelta(seconds=offset_seconds or 0.0) if live else None
    clock = StreamClock(offset=offset, grace=timedelta(seconds=grace_seconds),
                        until=parse_time(until) if until else None, flush_at_eof=flush_at_eof)
    outputs = StreamOutputs.from_settings(settings, online=online)
    if changelog is not None:
        outputs.changelog_dir = Path(changelog) if changelog else None
    if drops:
        outputs.drops_dir = Path(drops)
    outputs.parts = parts
    if online and not (settings.data_path / "registry.db").exists():
        from pipelines.store.repo import apply_repo

        apply_repo(settings)
    engine = BytewaxEngine(settings, clock=clock, outputs=outputs)
    relax_gc()  # this process runs the dataflow (python -m bytewax.run)
    chosen = [REGISTRY.view(v) for v in views] if views else None
    return engine.dataflow(engine.default_source(path=path, tail=tail, rate=rate), chosen)


def __getattr__(name: str) -> Any:
    """``flow``: the settings' dataflow, built on first access.

    For ``python -m bytewax.run pipelines.stream.flow:flow``; lazily, so importing this module builds nothing."""
    if name == "flow":
        return build_flow()
    raise AttributeError(name)



def stream_report(changelog: Path | None = None, drops: Path | None = None) -> BuildReport:
    """Rows per view (distinct change points), drops per reason and collisions per kind, from the logs of a run
    (default: the settings' log directories)."""
    settings = load_settings()
    outputs = StreamOutputs.from_settings(settings)
    return read_report(StreamOutputs(changelog_dir=changelog or outputs.changelog_dir,
                                     drops_dir=drops or outputs.drops_dir, dead_letter_dir=outputs.dead_letter_dir))
