"""The plain-Python reference: any feature, for any entity, as of any time.

It is the oracle the Spark and Bytewax engines are tested against, so it is
written to be obviously right rather than fast: it keeps every admitted event
and, for each question, folds the matching events with the shared monoids under
the rules of :mod:`features.semantics`. No tiles, no incremental state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from features.registry import REGISTRY
from features.semantics import (
    Collision,
    Drop,
    EventRules,
    admitted,
    event_order_key,
    expires,
    in_window,
    tile_expiry,
    tile_start,
)
from features.spec import FeatureService, FeatureView, OnDemandView


class Reference:
    """Answers point-in-time questions over one event log.

    ``events`` are normalised event records (``features.events.validate_event``).
    Late, duplicate and non-consented events are dropped once, up front, and
    counted in :attr:`drops`.
    """

    def __init__(self, events: Iterable[Mapping[str, Any]], *, rules: EventRules,
                 views: Iterable[FeatureView] | None = None) -> None:
        self.rules = rules
        self.drops: dict[Drop, int] = {}
        self.collisions: dict[Collision, int] = {}
        self.events: list[Mapping[str, Any]] = list(admitted(events, rules, self.drops, self.collisions))
        self._by_key: dict[tuple[str, Any], list[Mapping[str, Any]]] = defaultdict(list)
        for e in self.events:
            for key_field in ("user_id", "session_id"):
                if e.get(key_field) is not None:
                    self._by_key[(key_field, e[key_field])].append(e)
        # views whose keys have an owner (a session is one user's): each key's events of its owner only
        self._owned: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
        collided: set[tuple[Any, str]] = set()
        for view in REGISTRY.views if views is None else views:
            if view.entity.owner is not None:
                for key in self.keys(view):
                    self._owned[(view.name, key)] = self._owner_events(view, key, collided)
        if collided:
            self.collisions[Collision.SESSION_ID] = len(collided)

    def _owner_events(self, view: FeatureView, key: Any, collided: set[tuple[Any, str]]) -> list[Mapping[str, Any]]:
        """A key's events of its owner, in arrival order (SEMANTICS.md, "Session ids shared by users").

        The owner is the user of the event that arrives while no event taken so far still has a tile in a window
        (no live state); while one does, another user's event is a collision (kept in ``collided``, once per
        event across views)."""
        field = view.entity.owner.join_key  # type: ignore[union-attr]
        types = view.event_types()
        taken: list[Mapping[str, Any]] = []
        owner: Any = None
        for e in self._by_key.get((view.entity.join_key, key), []):
            if e["event_type"] not in types:
                taken.append(e)  # not the view's: changes nothing
                continue
            t = e["ingest_time"]
            live = any(agg.accepts(x) and agg.value_of(x) is not None
                       and (not expires(agg.window)
                            or tile_expiry(tile_start(x["event_time"], agg.window), agg.window) > t)
                       for x in taken for agg in view.aggregations)
            if not live:
                owner = e.get(field)
            if e.get(field) == owner:
                taken.append(e)
            else:
                collided.add((e.get(field), e["event_id"]))
        return taken

    def entity_events(self, view: FeatureView, key: Any) -> list[Mapping[str, Any]]:
        owned = self._owned.get((view.name, key))
        if owned is not None:
            return owned
        return self._by_key.get((view.entity.join_key, key), [])

    def keys(self, view: FeatureView) -> list[Any]:
        return sorted({k for (f, k) in self._by_key if f == view.entity.join_key})

    def aggregate(self, view: FeatureView, key: Any, as_of: datetime) -> dict[str, Any]:
        """Finalized aggregation values (``None`` where empty), before defaults."""
        events = [e for e in self.entity_events(view, key) if e["ingest_time"] <= as_of]
        out: dict[str, Any] = {}
        for agg in view.aggregations:
            state = agg.op.init()
            for e in events:
                if not in_window(e["event_time"], as_of, agg.window) or not agg.accepts(e):
                    continue
                value = agg.value_of(e)
                if value is not None:
                    state = agg.op.update(state, value, event_order_key(e))
            out[agg.name] = agg.op.finalize(state)
        return out

    def features(self, view: FeatureView, key: Any, as_of: datetime) -> dict[str, Any]:
        """Every feature of ``view`` for ``key`` as of ``as_of``: defaults, dtypes and derived applied."""
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware UTC")
        return view.finalize_row(self.aggregate(view, key, as_of))

    def on_demand(self, odv: OnDemandView, keys: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """On-demand features; source views are read as of ``request['request_time']``."""
        inputs: dict[str, Any] = dict(request)
        as_of = request["request_time"]
        for v in odv.sources:
            inputs.update(self.features(v, keys.get(v.entity.join_key), as_of))
        return odv.compute(inputs)

    def service_row(self, service: FeatureService, keys: Mapping[str, Any], as_of: datetime) -> dict[str, Any]:
        """A training row: every feature of a service for the entity keys, as of ``as_of``."""
        row: dict[str, Any] = {}
        for v in service.views:
            if isinstance(v, OnDemandView):
                row.update(self.on_demand(v, keys, {"request_time": as_of}))
            else:
                row.update(self.features(v, keys.get(v.entity.join_key), as_of))
        return row

    def change_points(self, view: FeatureView, key: Any) -> list[datetime]:
        """Every time at which some value of ``view`` for ``key`` may change.

        That is each arrival of a matching event, and each time one of its tiles
        leaves a window (a lifetime window's never does). The stream engine writes at exactly these times.
        """
        points: set[datetime] = set()
        for e in self.entity_events(view, key):
            for agg in view.aggregations:
                if agg.accepts(e) and agg.value_of(e) is not None:
                    points.add(e["ingest_time"])
                    if not expires(agg.window):  # a lifetime window: its running state never leaves
                        continue
                    expiry = tile_expiry(tile_start(e["event_time"], agg.window), agg.window)
                    if expiry > e["ingest_time"]:
                        points.add(expiry)
        return sorted(points)
