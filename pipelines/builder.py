"""The template every feature engine fills in, like Feast's ``FeatureBuilder``.

``build`` runs the same steps in the same order for every engine; the Spark
builder (batch backfills, training sets) and the Bytewax builder (the live
stream) implement the hooks with their own data structures. The semantics behind
the hooks are not theirs: admission rules come from :mod:`features.semantics`,
aggregation from :mod:`features.state` over :mod:`features.aggregations`, names
and dtypes from :mod:`features.spec`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from conf.settings import Settings
from features.registry import REGISTRY, Registry
from features.semantics import EventRules
from features.spec import FeatureView

Events = TypeVar("Events")  # the engine's collection of events (DataFrame, stream, ...)
Rows = TypeVar("Rows")  # the engine's collection of feature rows


@dataclass
class BuildReport:
    """What a build did, per view and per drop reason; engines fill it in."""

    views: dict[str, int] = field(default_factory=dict)  # rows written per view
    dropped: dict[str, int] = field(default_factory=dict)  # late / duplicate / no_consent / invalid
    # id_collision / session_collision (features.semantics.Collision): counted, not drops
    collisions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class FeatureBuilder(ABC, Generic[Events, Rows]):
    """Compile feature views into an engine's jobs, step by step."""

    def __init__(self, settings: Settings, registry: Registry = REGISTRY) -> None:
        self.settings = settings
        self.registry = registry
        self.rules = EventRules(allowed_lateness=settings.events.allowed_lateness)
        self.progress: Callable[[str], None] = lambda _message: None  # e.g. ``print``: one line per finished step

    def build(self, source: Events, views: Sequence[FeatureView] | None = None) -> BuildReport:
        report = BuildReport()
        t0 = time.perf_counter()
        events = self.admit(self.validate(source, report), report)
        dropped = ", ".join(f"{k} {v:,}" for k, v in report.dropped.items() if v)
        self.progress(f"validated and admitted events ({time.perf_counter() - t0:.1f}s); not counted: {dropped or '-'}")
        for view in views or self.registry.views:
            t0 = time.perf_counter()
            rows = self.aggregate(view, self.key_by_entity(view, events))
            report.views[view.name] = self.write(view, rows)
            self.progress(f"{view.name}: {report.views[view.name]:,} change points ({time.perf_counter() - t0:.1f}s)")
        return report

    @abstractmethod
    def validate(self, source: Events, report: BuildReport) -> Events:
        """Reject malformed events to the dead-letter store, counting them."""

    @abstractmethod
    def admit(self, events: Events, report: BuildReport) -> Events:
        """Apply ``self.rules``: consent, lateness, then first-arrival de-duplication."""

    @abstractmethod
    def key_by_entity(self, view: FeatureView, events: Events) -> Events:
        """Route events to the view's entity key, in arrival order per key."""

    @abstractmethod
    def aggregate(self, view: FeatureView, keyed: Events) -> Rows:
        """Run :class:`features.state.ViewState` per key: one row per change point."""

    @abstractmethod
    def write(self, view: FeatureView, rows: Rows) -> int:
        """Write feature rows to the engine's sink; return how many were written."""
