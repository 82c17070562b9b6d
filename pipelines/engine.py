"""The two shapes every feature engine fills in, like Feast's ``ComputeEngine``.

Materialization (events to feature rows) and retrieval (point-in-time training
sets) are apart, as Feast keeps ``materialize`` apart from
``get_historical_features``:

* :class:`MaterializationEngine` runs the same steps in the same order for every
  engine (:meth:`~MaterializationEngine.materialize`, which no engine overrides).
  The Spark engine (:mod:`pipelines.spark.backfill`: batch backfills) and the
  Bytewax engine (:mod:`pipelines.stream.engine`: the live stream) implement the
  hooks with their own data structures: a DataFrame per step, or a branch of one
  dataflow. Spark is eager, so its :meth:`~MaterializationEngine.write` already
  knows how many rows it wrote; the stream's write gives a handle to the step's
  sink streams, :meth:`~MaterializationEngine.finish` attaches the sinks, and the
  rows are counted from the logs once the dataflow has run.
* :class:`RetrievalEngine` answers "each entity row's features as of its
  timestamp": Spark's as-of join (:mod:`pipelines.spark.retrieval`) and Feast's
  ``get_historical_features`` (:mod:`pipelines.store.retrieval`).

The semantics behind the hooks are not the engines': admission rules come from
:mod:`features.semantics`, aggregation from :mod:`features.state` over
:mod:`features.aggregations`, names and dtypes from :mod:`features.spec`, the
views a selection reads from :meth:`features.registry.Registry.resolve`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from conf.settings import Settings
from features import spec
from features.registry import REGISTRY, FeatureSelection, Registry
from features.semantics import EventRules
from pipelines.progress import Progress, Silent

Source = TypeVar("Source")  # what the engine reads: a path, a Bytewax source, ...
Events = TypeVar("Events")  # the engine's collection of events (DataFrame, stream, ...)
Keyed = TypeVar("Keyed")  # events hashed by a step's key, in arrival order per key
Rows = TypeVar("Rows")  # the engine's collection of feature rows
Written = TypeVar("Written")  # what writing rows gives back: a count (eager), a sink handle (lazy)
Frame = TypeVar("Frame")  # the engine's table of entity rows (Spark or pandas DataFrame)

@dataclass
class BuildReport:
    """What a build did, per view and per drop reason; engines fill it in."""

    views: dict[str, int] = field(default_factory=dict)  # rows written per view
    dropped: dict[str, int] = field(default_factory=dict)  # late / duplicate / no_consent / invalid
    # id_collision / session_collision (features.semantics.Collision): counted, not drops
    collisions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Step:
    """Views that one keyed state per key serves: hashed by ``key``, fed in arrival order per key.

    ``key`` is an event field (a join key) or the engine's composite state key. An engine with one
    job per view plans one step per view; the stream plans one step per keyed state it keeps."""

    name: str
    key: str
    views: tuple[spec.FeatureView, ...]


def one_step_per_view(views: Sequence[spec.FeatureView]) -> list[Step]:
    return [Step(v.name, v.entity.join_key, (v,)) for v in views]


class MaterializationEngine(ABC, Generic[Source, Events, Keyed, Rows, Written]):
    """Events to feature rows, step by step; :meth:`materialize` is the template (engines fill the hooks)."""

    name = "engine"  # how progress names this engine
    eager = True  # each hook runs as it is called (Spark); a lazy engine (the stream) runs in finish or later

    def __init__(self, settings: Settings, registry: Registry = REGISTRY) -> None:
        self.settings = settings
        self.registry = registry
        self.rules = EventRules(allowed_lateness=settings.events.allowed_lateness)
        self.progress: Progress = Silent()  # a task over the steps, a note per finished step

    def materialize(self, source: Source, views: Sequence[spec.FeatureView] | None = None) -> BuildReport:
        """Validate, admit, then per step: key, aggregate, write; ``finish`` completes the report."""
        report = BuildReport()
        t0 = time.perf_counter()
        steps = self.plan(list(views or self.registry.views))
        self.prepare(steps)
        events = self.admit(self.validate(self.read(source), report), report)
        # a lazy engine only wires its steps here: its progress is its run's (the stream's replay)
        progress = self.progress if self.eager else Silent()
        dropped = ", ".join(f"{k} {v:,}" for k, v in report.dropped.items() if v)
        progress.log(f"   {self.name}: validated and admitted events ({time.perf_counter() - t0:.1f}s); "
                     f"not counted: {dropped or '-'}")
        written: list[tuple[Step, Written]] = []
        with progress.task(f"{self.name} steps", total=len(steps), unit="steps") as task:
            for step in steps:
                t1 = time.perf_counter()
                out = self.write(step, self.aggregate(step, self.key_by_entity(step, events)))
                written.append((step, out))
                seconds = time.perf_counter() - t1
                done = f"{out:,} change points in {seconds:.1f}s ({out / max(seconds, 1e-9):,.0f}/s)" \
                    if isinstance(out, int) else "planned"
                task.advance(1, note=f"{step.name}: {done}")
        report = self.finish(written, report)
        report.seconds = time.perf_counter() - t0
        return report

    def plan(self, views: Sequence[spec.FeatureView]) -> list[Step]:
        """Which keyed steps serve the views (default: one per view)."""
        return one_step_per_view(views)

    def prepare(self, steps: Sequence[Step]) -> None:
        """Learn the plan before reading (default: nothing). An engine that wires one graph for every step (the
        stream, whose admission step also keeps the user-keyed views' state) needs it before :meth:`admit`."""

    @abstractmethod
    def read(self, source: Source) -> Events:
        """The engine's events from its source (a day-pruned event log, a stream input)."""

    @abstractmethod
    def validate(self, events: Events, report: BuildReport) -> Events:
        """Reject malformed events to the dead-letter store, counting them."""

    @abstractmethod
    def admit(self, events: Events, report: BuildReport) -> Events:
        """Apply ``self.rules``: consent, lateness, then first-arrival de-duplication."""

    @abstractmethod
    def key_by_entity(self, step: Step, events: Events) -> Keyed:
        """Route events to the step's key, in arrival order per key."""

    @abstractmethod
    def aggregate(self, step: Step, keyed: Keyed) -> Rows:
        """Run the shared stepper (:mod:`features.state`) per key: one row per change point."""

    @abstractmethod
    def write(self, step: Step, rows: Rows) -> Written:
        """Send the step's rows to the engine's sinks."""

    @abstractmethod
    def finish(self, written: Sequence[tuple[Step, Written]], report: BuildReport) -> BuildReport:
        """Complete the report once every step is written (a lazy engine runs here)."""


class RetrievalEngine(ABC, Generic[Frame]):
    """Point-in-time training sets; :meth:`get_historical_features` is the template.

    Each entity row gets the selected features as of its timestamp: for each view,
    the offline row of its key with the latest ``event_timestamp <= timestamp``, or
    the spec's cold-start defaults; on-demand features are computed from the spec
    with ``request_time`` = the row's timestamp. The output holds the input columns,
    then the features in selection order, one row per input row."""

    def __init__(self, registry: Registry = REGISTRY) -> None:
        self.registry = registry

    def get_historical_features(self, entity_df: Frame, features: FeatureSelection,
                                timestamp_col: str) -> Frame:
        fvs, odvs, names = self.registry.resolve(features)
        frame = self.entity_frame(entity_df, timestamp_col)
        columns = self.columns(frame)
        clash = set(columns) & {f for v in fvs for f in v.feature_names}
        if clash:
            raise ValueError(f"entity_df columns {sorted(clash)} clash with feature names")
        for key, views in self.by_key(fvs).items():
            if key not in columns:
                raise ValueError(f"entity_df has no column {key!r}, the join key of {views[0].name!r}")
            frame = self.as_of_join(frame, key, views, timestamp_col)
        if odvs:
            frame = self.on_demand(frame, odvs, timestamp_col)
        return self.select(frame, columns, names)

    @staticmethod
    def by_key(views: Iterable[spec.FeatureView]) -> dict[str, list[spec.FeatureView]]:
        """Views grouped by join key: views of one entity can share a scan."""
        out: dict[str, list[spec.FeatureView]] = defaultdict(list)
        for v in views:
            out[v.entity.join_key].append(v)
        return dict(out)

    @abstractmethod
    def entity_frame(self, entity_df: Frame, timestamp_col: str) -> Frame:
        """Checked entity rows (``timestamp_col`` an aware UTC instant), as the engine joins them."""

    @abstractmethod
    def columns(self, frame: Frame) -> list[str]:
        """The entity frame's column names."""

    @abstractmethod
    def as_of_join(self, frame: Frame, key: str, views: Sequence[spec.FeatureView], timestamp_col: str) -> Frame:
        """Add the views' features as of each row's timestamp, defaults where no row is in effect."""

    @abstractmethod
    def on_demand(self, frame: Frame, views: Sequence[spec.OnDemandView], timestamp_col: str) -> Frame:
        """Add the on-demand features, computed by the spec's expressions."""

    @abstractmethod
    def select(self, frame: Frame, columns: Sequence[str], names: Sequence[str]) -> Frame:
        """The input columns, then the features ``names``, in that order."""
