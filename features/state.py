"""Incremental, tiled state of one feature view for one entity key.

This is the shared state machine that the engines adapt: the Spark builder runs
it per key over a key's events in arrival order (a batch sweep), the Bytewax
builder keeps it as keyed state and wakes it with timers. It holds one monoid
partial per (aggregation, tile); a tile is dropped when it leaves its window
(``tile_expiry``). Because every event it holds has arrived and every live tile
is inside its window, the finalized state *is* the value as of "now"
(features/SEMANTICS.md), which the independent reference checks.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from features.semantics import event_order_key, tile_expiry, tile_start
from features.spec import FeatureView

_DISPATCH: dict[int, tuple[FeatureView, dict[str, tuple[int, ...]]]] = {}


def _dispatch(view: FeatureView) -> dict[str, tuple[int, ...]]:
    """event type -> indices of the view's aggregations that filter on it (computed once per view)."""
    hit = _DISPATCH.get(id(view))
    if hit is not None and hit[0] is view:
        return hit[1]
    by_type: dict[str, list[int]] = {}
    for i, agg in enumerate(view.aggregations):
        for et in agg.event_types:
            by_type.setdefault(str(et), []).append(i)
    table = {k: tuple(v) for k, v in by_type.items()}
    _DISPATCH[id(view)] = (view, table)  # holding the view keeps its id from being reused
    return table


class ViewState:
    """The live tiles of every aggregation of ``view`` for one key."""

    __slots__ = ("_cache", "_dirty", "_expiries", "tiles", "view")

    def __init__(self, view: FeatureView) -> None:
        self.view = view
        self.tiles: list[dict[datetime, Any]] = [{} for _ in view.aggregations]
        self._expiries: list[tuple[datetime, int, datetime]] = []  # (expiry, aggregation index, tile)
        self._cache: list[Any] = [a.op.finalize(a.op.init()) for a in view.aggregations]
        self._dirty: set[int] = set()

    def add(self, event: Mapping[str, Any]) -> bool:
        """Fold one admitted event that has arrived; True if any aggregation accepted it."""
        accepted = False
        now = event["ingest_time"]
        event_time = event["event_time"]
        tiles_by_hop: dict[Any, datetime] = {}
        for i in _dispatch(self.view).get(event["event_type"], ()):
            agg = self.view.aggregations[i]
            if agg.where is not None and not agg.where.fn(event):
                continue
            value = agg.value_of(event)
            if value is None:
                continue
            accepted = True
            hop = agg.window.hop
            tile = tiles_by_hop.get(hop)
            if tile is None:
                tile = tiles_by_hop[hop] = tile_start(event_time, agg.window)
            expiry = tile_expiry(tile, agg.window)
            if expiry <= now:  # arrived after its tile left the window: never counts
                continue
            tiles = self.tiles[i]
            state = tiles.get(tile)
            if state is None:
                state = agg.op.init()
                heapq.heappush(self._expiries, (expiry, i, tile))
            tiles[tile] = agg.op.update(state, value, event_order_key(event))
            self._dirty.add(i)
        return accepted

    def next_expiry(self) -> datetime | None:
        """When the next tile leaves its window (a timer for the stream)."""
        return self._expiries[0][0] if self._expiries else None

    def advance(self, now: datetime) -> bool:
        """Drop every tile whose window has passed by ``now``; True if any was dropped."""
        dropped = False
        while self._expiries and self._expiries[0][0] <= now:
            _, i, tile = heapq.heappop(self._expiries)
            del self.tiles[i][tile]
            self._dirty.add(i)
            dropped = True
        return dropped

    def aggregates(self) -> list[Any]:
        """Finalized aggregation values (``None`` where empty), recomputing only what changed."""
        for i in self._dirty:
            op = self.view.aggregations[i].op
            merged = op.init()
            for partial in self.tiles[i].values():
                merged = op.merge(merged, partial)  # merge mutates only its first argument
            self._cache[i] = op.finalize(merged)
        self._dirty.clear()
        return self._cache

    def values(self) -> dict[str, Any]:
        """Every feature of the view: defaults, dtypes and derived features applied."""
        aggs = self.aggregates()
        return self.view.finalize_row({a.name: v for a, v in zip(self.view.aggregations, aggs, strict=True)})

    def is_empty(self) -> bool:
        return not self._expiries


def sweep(
    view: FeatureView, events: Iterable[Mapping[str, Any]], *, until: datetime | None = None
) -> Iterator[tuple[datetime, dict[str, Any]]]:
    """The timeline of one key: ``(change point, values)`` in time order.

    ``events`` are one key's admitted events in arrival order. A row is emitted at
    each arrival of an accepted event (once per distinct arrival time) and at each
    tile expiry, up to ``until`` (inclusive) or until every window is empty.
    """
    state = ViewState(view)
    pending: datetime | None = None  # arrival time whose row is not yet emitted
    for e in events:
        now = e["ingest_time"]
        if pending is not None and now != pending:
            yield pending, state.values()
            pending = None
        expiry = state.next_expiry()
        while expiry is not None and expiry < now:
            state.advance(expiry)
            yield expiry, state.values()
            expiry = state.next_expiry()
        dropped = state.advance(now)
        if state.add(e) or dropped:
            pending = now
    if pending is not None:
        yield pending, state.values()
    expiry = state.next_expiry()
    while expiry is not None and (until is None or expiry <= until):
        state.advance(expiry)
        yield expiry, state.values()
        expiry = state.next_expiry()
