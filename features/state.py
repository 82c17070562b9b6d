"""Incremental, tiled state of one feature view for one entity key.

This is the shared state machine that the engines adapt: the Spark builder runs
it per key over a key's events in arrival order (a batch sweep), the Bytewax
builder keeps it as keyed state and wakes it with timers. It holds one monoid
partial per (aggregation, tile); a tile is dropped when it leaves its window
(``tile_expiry``). Because every event it holds has arrived and every live tile
is inside its window, the finalized state *is* the value as of "now"
(features/SEMANTICS.md), which the independent reference checks.

It is the hot path of both engines, so it is compact and incremental: the partials of
one tile of one window share a list (one slot per aggregation of that window), the
last row is kept and only what changed since is recomputed (the aggregations whose
tiles changed, the derived features that read them), and the merged state of an
``incremental`` aggregation (count, min, max, last, distinct, top-k) is updated as
events come instead of re-merging its tiles.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from features.expr import Lit
from features.semantics import EPOCH
from features.spec import FeatureView, Window


class _Plan:
    """What a view's state machine needs per event, computed once per view.

    Aggregations are grouped by window: a tile (of one window) holds one partial slot per
    aggregation of that window, so one key's state is a few small dicts and lists.
    """

    __slots__ = ("by_type", "casts", "derived", "empty", "empty_row", "features", "finish", "full", "incremental",
                 "loc", "names", "ops", "spans", "view", "window_aggs", "windows")

    def __init__(self, view: FeatureView) -> None:
        self.view = view  # holding the view keeps its id from being reused
        aggs = view.aggregations
        self.names = tuple(a.name for a in aggs)
        self.features = view.feature_names
        self.casts = tuple(a.cast for a in aggs)
        self.ops = tuple(a.op for a in aggs)
        self.finish = tuple((a.op.merge_all, a.op.finalize, a.caster()) for a in aggs)
        self.incremental = tuple(a.op.incremental for a in aggs)
        # derived features: (name, cast, fn, the aggregations it depends on as a bit mask (-1: unknown inputs),
        # whether fn reads the row as a sequence in feature order rather than a mapping)
        deps: dict[str, int] = {a.name: 1 << i for i, a in enumerate(aggs)}
        derived: list[tuple[str, Any, Any, int, bool]] = []
        for d in view.derived:
            mask = 0
            for c in d.expr.columns():
                m = deps.get(c)
                mask = -1 if m is None or m == -1 or mask == -1 else mask | m
            deps[d.name] = mask
            over_row = d.expr.columns() <= set(self.features)  # reads only features: evaluate over the row
            derived.append((d.name, d.caster(), d.expr.fn_over(self.features) if over_row else d.expr.fn, mask,
                            over_row))
        self.derived = tuple(derived)
        self.windows: tuple[Window, ...] = tuple(dict.fromkeys(a.window for a in aggs))
        self.spans = tuple(w.length + w.hop for w in self.windows)  # tile start -> tile expiry
        window_aggs: list[list[int]] = [[] for _ in self.windows]
        loc: list[tuple[int, int]] = []
        for i, agg in enumerate(aggs):
            w = self.windows.index(agg.window)
            loc.append((w, len(window_aggs[w])))
            window_aggs[w].append(i)
        self.loc = tuple(loc)
        self.window_aggs = tuple(tuple(a) for a in window_aggs)
        # the value of an aggregation without partials (finalize of the identity, defaults and dtype applied)
        self.empty = tuple(a.cast(a.op.finalize(a.op.init())) for a in aggs)
        empty_row = dict(zip(self.names, self.empty, strict=True))
        for d in view.derived:
            empty_row[d.name] = d.caster()(d.expr.fn(empty_row))
        self.empty_row = tuple(empty_row.values())  # every feature of a key without partials
        self.full = (1 << len(aggs)) - 1
        # per event type, per window it touches: (window, tile width, tile start to expiry, slots per tile, and
        # per aggregation reading it (bit, index, slot, where, input (None: the constant), the constant, update,
        # init)); tile_start and tile_expiry are inlined in add
        by_type: dict[str, dict[int, list[tuple[int, int, int, Any, Any, Any, Any, Any]]]] = {}
        for i, agg in enumerate(aggs):
            where = agg.where.fn if agg.where is not None else None
            w, j = loc[i]
            const = agg.input.value if isinstance(agg.input, Lit) else None
            value_of = None if const is not None else agg.input.fn
            for et in agg.event_types:
                by_type.setdefault(str(et), {}).setdefault(w, []).append(
                    (1 << i, i, j, where, value_of, const, agg.op.update, agg.op.init))
        self.by_type = {
            et: tuple((w, self.windows[w].hop, self.windows[w].length + self.windows[w].hop,
                       len(self.window_aggs[w]), tuple(targets)) for w, targets in sorted(groups.items()))
            for et, groups in by_type.items()}


_PLANS: dict[int, _Plan] = {}


def _plan(view: FeatureView) -> _Plan:
    plan = _PLANS.get(id(view))
    if plan is None or plan.view is not view:
        plan = _PLANS[id(view)] = _Plan(view)
    return plan


_UNKNOWN: Any = object()  # a merged state that must be merged from the tiles again
_PENDING: Any = object()  # a tile not looked up yet

Tiles = list[dict[datetime, list[Any]] | None]  # per window: tile start -> one partial (or None) per aggregation
Snapshot = Tiles


class ViewState:
    """The live tiles of every aggregation of ``view`` for one key.

    Tiles are kept per window (``tiles[w][tile_start]`` is a list with one partial per
    aggregation of window ``w``, ``None`` where it has none); a window without live tiles
    holds ``None``. The finalized aggregations are kept between calls: :meth:`row` and
    :meth:`values` re-merge and re-cast only the aggregations whose tiles changed since the
    last call, then evaluate the derived features.
    """

    __slots__ = ("_dirty", "_expiries", "_merged", "_plan", "_row", "tiles")

    def __init__(self, view: FeatureView) -> None:
        self._plan = _plan(view)
        self.tiles: Tiles = [None] * len(self._plan.windows)
        self._expiries: list[tuple[datetime, int, datetime]] = []  # (expiry, window index, tile)
        self._row: tuple[Any, ...] | None = None  # the last row, once computed
        self._dirty = 0  # bit i: aggregation i changed since the last row (a new state is all defaults)
        # the merged state of each incremental aggregation, kept up to date by add (_UNKNOWN: merge the tiles);
        # made once a key changes again after its first row (a key seen once never needs it)
        self._merged: list[Any] | None = None

    @property
    def view(self) -> FeatureView:
        return self._plan.view

    # -- checkpoints (the stream's recovery snapshots) -------------------------------------------
    def snapshot(self) -> Snapshot:
        """The state as plain data: the tiles (the expiry heap follows from them)."""
        return self.tiles

    @classmethod
    def restore(cls, view: FeatureView, snapshot: Snapshot) -> ViewState:
        state = cls(view)
        state.tiles = snapshot
        state._dirty = state._plan.full  # every aggregation may have partials
        spans = state._plan.spans
        state._expiries = [(tile + spans[w], w, tile) for w, tiles in enumerate(snapshot) if tiles for tile in tiles]
        heapq.heapify(state._expiries)
        return state

    # -- events and time -----------------------------------------------------------------------
    def add(self, event: Mapping[str, Any]) -> bool:
        """Fold one admitted event that has arrived; True if any aggregation accepted it."""
        groups = self._plan.by_type.get(event["event_type"])
        if not groups:
            return False
        accepted = False
        now = event["ingest_time"]
        event_time = event["event_time"]
        order_key = None
        dirty = self._dirty
        merged = self._merged
        if merged is None and self._row is not None:  # a key with more than one change: keep merged states
            merged = self._merged = [_UNKNOWN] * len(self._plan.loc)
        for w, hop, span, width, targets in groups:
            slots: list[Any] | None = _PENDING  # the event's tile of this window; None: it has expired
            for bit, i, j, where, value_of, value, update, init in targets:
                if where is not None and not where(event):
                    continue
                if value_of is not None:
                    value = value_of(event)
                    if value is None:
                        continue
                accepted = True
                if slots is _PENDING:
                    tile = event_time - (event_time - EPOCH) % hop  # tile_start
                    expiry = tile + span  # tile_expiry
                    if expiry <= now:  # arrived after its tile left the window: never counts
                        slots = None
                    else:
                        tiles = self.tiles[w]
                        if tiles is None:
                            tiles = self.tiles[w] = {}
                        slots = tiles.get(tile)
                        if slots is None:
                            slots = tiles[tile] = [None] * width
                            heapq.heappush(self._expiries, (expiry, w, tile))
                if slots is None:
                    continue
                if order_key is None:
                    order_key = (event_time, now, event["event_id"])  # event_order_key
                state = slots[j]
                slots[j] = update(init() if state is None else state, value, order_key)
                dirty |= bit
                if merged is not None:
                    m = merged[i]
                    if m is not _UNKNOWN:
                        merged[i] = update(m, value, order_key)
        self._dirty = dirty
        return accepted

    def next_expiry(self) -> datetime | None:
        """When the next tile leaves its window (a timer for the stream)."""
        return self._expiries[0][0] if self._expiries else None

    def advance(self, now: datetime) -> bool:
        """Drop every tile whose window has passed by ``now``; True if any was dropped."""
        expiries = self._expiries
        if not expiries or expiries[0][0] > now:
            return False
        window_aggs, all_tiles = self._plan.window_aggs, self.tiles
        while expiries and expiries[0][0] <= now:
            _, w, tile = heapq.heappop(expiries)
            tiles = all_tiles[w]
            assert tiles is not None
            slots = tiles.pop(tile)
            if not tiles:
                all_tiles[w] = None
            merged = self._merged
            for j, i in enumerate(window_aggs[w]):
                if slots[j] is not None:
                    self._dirty |= 1 << i
                    if merged is not None:
                        merged[i] = _UNKNOWN
        return True

    def run_expiries(self, limit: datetime | None, inclusive: bool, make: Callable[[datetime, tuple[Any, ...]], Any],
                     out: list[Any]) -> datetime | None:
        """Run the expiries before ``limit`` (up to it if ``inclusive``; all if ``None``), appending
        ``make(expiry, row())`` per distinct expiry time to ``out``; returns the last expiry run, if any."""
        expiries = self._expiries
        last = None
        while expiries:
            nxt = expiries[0][0]
            if limit is not None and (nxt > limit or (nxt == limit and not inclusive)):
                break
            self.advance(nxt)
            out.append(make(nxt, self.row()))
            last = nxt
        return last

    # -- values --------------------------------------------------------------------------------
    def row(self) -> tuple[Any, ...]:
        """Every feature of the view in spec order (:attr:`FeatureView.feature_names`), as :meth:`values`.

        The last row is kept: only the aggregations whose tiles changed since it are re-merged and re-cast,
        and only the derived features that read them are evaluated again.
        """
        row = self._row
        dirty = self._dirty
        if not dirty:
            if row is None:
                row = self._row = self._plan.empty_row
            return row
        plan = self._plan
        vals = list(plan.empty_row if row is None else row)
        changed = dirty
        loc, finish, empty, incremental, all_tiles = plan.loc, plan.finish, plan.empty, plan.incremental, self.tiles
        merged = self._merged
        while dirty:
            low = dirty & -dirty
            dirty ^= low
            i = low.bit_length() - 1
            merge_all, finalize, cast = finish[i]
            if merged is not None:
                m = merged[i]
                if m is not _UNKNOWN:  # kept up to date by add
                    vals[i] = cast(finalize(m))
                    continue
            w, j = loc[i]
            tiles = all_tiles[w]
            partials = [s[j] for s in tiles.values() if s[j] is not None] if tiles else None
            if not partials:
                vals[i] = empty[i]
            elif merged is not None and incremental[i]:
                # merge_all returns a state of its own (it never mutates nor returns a partial's container)
                m = merged[i] = merge_all(partials)
                vals[i] = cast(finalize(m))
            else:
                # one partial is finalized as is (finalize never mutates); merge_all never mutates the partials
                vals[i] = cast(finalize(partials[0] if len(partials) == 1 else merge_all(partials)))
        self._dirty = 0
        if plan.derived:
            named: dict[str, Any] | None = None
            k = len(plan.names)
            for name, cast, fn, mask, over_row in plan.derived:
                if changed & mask:  # the others still hold their values (the defaults' for a new state)
                    if over_row:
                        vals[k] = cast(fn(vals))
                    else:
                        if named is None:
                            named = dict(zip(plan.features, vals, strict=True))
                        vals[k] = cast(fn(named))
                    if named is not None:
                        named[name] = vals[k]
                k += 1
        row = self._row = tuple(vals)
        return row

    def aggregates(self) -> dict[str, Any]:
        """The aggregations' values, defaults and dtypes applied (no derived features)."""
        return dict(zip(self._plan.names, self.row(), strict=False))

    def values(self) -> dict[str, Any]:
        """Every feature of the view in spec order: defaults, dtypes and derived features applied.

        Equal to ``view.finalize_row`` of the finalized aggregations; the sweep tests check it against the
        reference at every change point.
        """
        return dict(zip(self._plan.features, self.row(), strict=True))

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
