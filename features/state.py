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
from features.spec import FeatureView, Window


class _Plan:
    """What a view's state machine needs per event, computed once per view."""

    __slots__ = ("aggs", "by_type", "casts", "derived", "hops", "names", "view")

    def __init__(self, view: FeatureView) -> None:
        self.view = view  # holding the view keeps its id from being reused
        self.aggs = view.aggregations
        self.names = tuple(a.name for a in view.aggregations)
        self.casts = tuple(a.cast for a in view.aggregations)
        self.derived = tuple((d.name, d.cast, d.expr.fn) for d in view.derived)
        windows = list(dict.fromkeys(a.window for a in view.aggregations))
        by_type: dict[str, list[tuple[int, int, Window, Any, Any, Any]]] = {}
        for i, agg in enumerate(view.aggregations):
            where = agg.where.fn if agg.where is not None else None
            w = windows.index(agg.window)
            for et in agg.event_types:
                by_type.setdefault(str(et), []).append((i, w, agg.window, where, agg.input.fn, agg.op))
        self.by_type = {k: tuple(v) for k, v in by_type.items()}


_PLANS: dict[int, _Plan] = {}


def _plan(view: FeatureView) -> _Plan:
    plan = _PLANS.get(id(view))
    if plan is None or plan.view is not view:
        plan = _PLANS[id(view)] = _Plan(view)
    return plan


class ViewState:
    """The live tiles of every aggregation of ``view`` for one key.

    The finalized row is kept between calls: :meth:`values` re-merges and re-casts
    only the aggregations whose tiles changed since the last call, then evaluates
    the derived features.
    """

    __slots__ = ("_dirty", "_expiries", "_plan", "_row", "tiles", "view")

    def __init__(self, view: FeatureView) -> None:
        self.view = view
        self._plan = _plan(view)
        self.tiles: list[dict[datetime, Any]] = [{} for _ in view.aggregations]
        self._expiries: list[tuple[datetime, int, datetime]] = []  # (expiry, aggregation index, tile)
        self._row: dict[str, Any] = {}
        self._dirty: set[int] = set(range(len(view.aggregations)))

    # -- checkpoints (the stream's recovery snapshots) -------------------------------------------
    def snapshot(self) -> tuple[list[dict[datetime, Any]], list[tuple[datetime, int, datetime]]]:
        """The state as plain data: the tiles and the expiry heap."""
        return self.tiles, self._expiries

    @classmethod
    def restore(cls, view: FeatureView,
                snapshot: tuple[list[dict[datetime, Any]], list[tuple[datetime, int, datetime]]]) -> ViewState:
        state = cls(view)
        state.tiles, state._expiries = snapshot
        return state

    # -- events and time -----------------------------------------------------------------------
    def add(self, event: Mapping[str, Any]) -> bool:
        """Fold one admitted event that has arrived; True if any aggregation accepted it."""
        targets = self._plan.by_type.get(event["event_type"])
        if not targets:
            return False
        accepted = False
        now = event["ingest_time"]
        event_time = event["event_time"]
        order_key = None
        tiles_by_window: dict[int, tuple[datetime, datetime]] = {}
        for i, w, window, where, value_of, op in targets:
            if where is not None and not where(event):
                continue
            value = value_of(event)
            if value is None:
                continue
            accepted = True
            hit = tiles_by_window.get(w)
            if hit is None:
                tile = tile_start(event_time, window)
                hit = tiles_by_window[w] = (tile, tile_expiry(tile, window))
            tile, expiry = hit
            if expiry <= now:  # arrived after its tile left the window: never counts
                continue
            if order_key is None:
                order_key = event_order_key(event)
            tiles = self.tiles[i]
            state = tiles.get(tile)
            if state is None:
                state = op.init()
                heapq.heappush(self._expiries, (expiry, i, tile))
            tiles[tile] = op.update(state, value, order_key)
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

    # -- values --------------------------------------------------------------------------------
    def _refresh(self) -> dict[str, Any]:
        plan, row = self._plan, self._row
        if self._dirty:
            for i in self._dirty:
                op = plan.aggs[i].op
                partials = self.tiles[i]
                if not partials:
                    merged = op.init()
                elif len(partials) == 1:
                    (merged,) = partials.values()  # finalize never mutates its state
                else:
                    merged = op.init()
                    for partial in partials.values():
                        merged = op.merge(merged, partial)  # merge mutates only its first argument
                row[plan.names[i]] = plan.casts[i](op.finalize(merged))
            self._dirty.clear()
        return row

    def aggregates(self) -> dict[str, Any]:
        """The aggregations' values, defaults and dtypes applied (no derived features)."""
        row = self._refresh()
        return {n: row[n] for n in self._plan.names}

    def values(self) -> dict[str, Any]:
        """Every feature of the view in spec order: defaults, dtypes and derived features applied.

        Equal to ``view.finalize_row`` of the finalized aggregations; the sweep tests check it against the
        reference at every change point.
        """
        row = self._refresh()
        out = {n: row[n] for n in self._plan.names}
        for name, cast, fn in self._plan.derived:
            out[name] = cast(fn(out))
        return out

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
