"""Incremental, tiled state of one feature view for one entity key.

This is the shared state machine that the engines adapt: the Spark builder runs
it per key over a key's events in arrival order (a batch sweep), the Bytewax
builder keeps it as keyed state and wakes it with timers. It holds one monoid
partial per (aggregation, tile); a tile is dropped when it leaves its window
(``tile_expiry``; a lifetime window holds one running tile that never leaves). Because
every event it holds has arrived and every live tile is inside its window, the
finalized state *is* the value as of "now"
(features/SEMANTICS.md), which the independent reference checks.

It is the hot path of both engines, so it is compact and incremental: the tiles of one
window share one flat list (per tile its start, then one slot per aggregation of that
window), the last row is kept and only what changed since is recomputed (the aggregations whose
tiles changed, the derived features that read them), and the merged state of an
``incremental`` aggregation (count, min, max, last, distinct, top-k) is updated as
events come instead of re-merging its tiles. Inside, times are integer microseconds
since the Unix epoch (tile starts, expiries, the clock): hashing and arithmetic on
timezone-aware datetimes cost several times more. The methods take and return UTC
datetimes; the ``_us`` variants take the integers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from features.expr import Lit
from features.semantics import EPOCH, MICROSECOND, from_us, to_us
from features.spec import FeatureView, Window


class _Plan:
    """What a view's state machine needs per event, computed once per view.

    Aggregations are grouped by window: a tile (of one window) holds one partial slot per
    aggregation of that window after its start, and a window's tiles share one flat list,
    so one key's state is one small list per window it has tiles in.
    """

    __slots__ = ("blanks", "by_type", "casts", "derived", "empty", "empty_row", "features", "finish", "full",
                 "incremental", "lifetime", "loc", "names", "ops", "spans", "strides", "view", "window_aggs",
                 "window_bits", "window_slots", "windows")

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
        # tile start -> tile expiry (us); a lifetime window's one running tile (start 0) expires at NEVER: never
        self.spans = tuple(NEVER if w.length is None else (w.length + w.hop) // MICROSECOND for w in self.windows)
        self.lifetime = tuple(w for w, win in enumerate(self.windows) if win.length is None)
        window_aggs: list[list[int]] = [[] for _ in self.windows]
        for i, agg in enumerate(aggs):
            window_aggs[self.windows.index(agg.window)].append(i)
        # per window: the length of one tile in its flat list (the start, then a slot per aggregation), and the
        # slots of a new tile after its start
        self.strides = tuple(len(a) + 1 for a in window_aggs)
        self.blanks = tuple([None] * len(a) for a in window_aggs)
        loc: list[tuple[int, int, int]] = []
        for i, agg in enumerate(aggs):
            w = self.windows.index(agg.window)
            # (window, offset in a tile: 0 is the tile start, the window's stride)
            loc.append((w, window_aggs[w].index(i) + 1, self.strides[w]))
        self.loc = tuple(loc)
        self.window_aggs = tuple(tuple(a) for a in window_aggs)
        # per window: (slot, bit, index) of each aggregation, for dropping a tile; the bits of all of them
        self.window_slots = tuple(tuple((j, 1 << i, i) for j, i in enumerate(a, 1)) for a in window_aggs)
        self.window_bits = tuple(sum(1 << i for i in a) for a in window_aggs)
        # the value of an aggregation without partials (finalize of the identity, defaults and dtype applied)
        self.empty = tuple(a.cast(a.op.finalize(a.op.init())) for a in aggs)
        empty_row = dict(zip(self.names, self.empty, strict=True))
        for d in view.derived:
            empty_row[d.name] = d.caster()(d.expr.fn(empty_row))
        self.empty_row = tuple(empty_row.values())  # every feature of a key without partials
        self.full = (1 << len(aggs)) - 1
        # per event type, per window it touches: (window, tile width, tile start to expiry (both in us), the window's
        # stride, and per aggregation reading it (bit, index, offset, where, input (None: the constant), the
        # constant, update, init)); tile_start and tile_expiry are inlined in add
        by_type: dict[str, dict[int, list[tuple[int, int, int, Any, Any, Any, Any, Any]]]] = {}
        for i, agg in enumerate(aggs):
            where = agg.where.fn if agg.where is not None else None
            w, j, _ = loc[i]
            const = agg.input.value if isinstance(agg.input, Lit) else None
            value_of = None if const is not None else agg.input.fn
            for et in agg.event_types:
                by_type.setdefault(str(et), {}).setdefault(w, []).append(
                    (1 << i, i, j, where, value_of, const, agg.op.update, agg.op.init))
        self.by_type = {
            et: tuple((w, NEVER if self.windows[w].length is None else self.windows[w].hop // MICROSECOND,
                       self.spans[w], self.strides[w], tuple(targets))
                      for w, targets in sorted(groups.items()))
            for et, groups in by_type.items()}


# A lifetime window's tile width and span (us): every event time (0 <= t < NEVER) floors to the one tile at 0,
# which expires at NEVER, and NEVER is no expiry (it is kept out of ``_next``: no timer, never dropped).
NEVER = 1 << 62
_AT: dict[int, datetime] = {}  # expiry times, which tiles align: few distinct ones, shared by many keys' rows


def _at(us: int) -> datetime:
    t = _AT.get(us)
    if t is None:
        if len(_AT) >= 100_000:
            _AT.clear()
        t = _AT[us] = from_us(us)
    return t


_PLANS: dict[int, _Plan] = {}


def _plan(view: FeatureView) -> _Plan:
    plan = _PLANS.get(id(view))
    if plan is None or plan.view is not view:
        plan = _PLANS[id(view)] = _Plan(view)
    return plan


_UNKNOWN: Any = object()  # a merged state that must be merged from the tiles again

# per window: its live tiles in tile order, flat: [start (us), one partial (or None) per aggregation of the window,
# the next tile's start, ...] (None: no tiles)
Tiles = list[list[Any] | None]
Snapshot = Tiles


class ViewState:
    """The live tiles of every aggregation of ``view`` for one key.

    Tiles are kept per window, oldest first, in one flat list: ``tiles[w]`` holds per tile its
    start, then the partial of each aggregation of window w (None where it has none), so the
    partials of one aggregation are the slice ``tiles[w][offset::stride]``; a window without
    live tiles holds ``None``. Events mostly land in a window's newest tile and tiles leave a
    window oldest first, so a list beats a map here (and one list per window, not one per
    tile, is fewer objects to allocate and for the cyclic collector to walk), and the next
    expiry is the earliest of each window's oldest tile (kept in ``_next``, no timer heap). The
    finalized aggregations are kept between calls: :meth:`row` and :meth:`values` re-merge
    and re-cast only the aggregations whose tiles changed since the last call, then
    evaluate the derived features.
    """

    __slots__ = ("_dirty", "_merged", "_next", "_plan", "_row", "tiles")

    def __init__(self, view: FeatureView) -> None:
        self._plan = _plan(view)
        self.tiles: Tiles = [None] * len(self._plan.windows)
        self._next: int | None = None  # the next tile expiry (us), None without tiles
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
        """The state as plain data: the tiles (the next expiry follows from them)."""
        return self.tiles

    @classmethod
    def restore(cls, view: FeatureView, snapshot: Snapshot) -> ViewState:
        state = cls(view)
        state.tiles = snapshot
        state._dirty = state._plan.full  # every aggregation may have partials
        spans = state._plan.spans
        state._next = min((wt[0] + spans[w] for w, wt in enumerate(snapshot) if wt and spans[w] < NEVER),
                          default=None)
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
        now_us = et_us = 0
        order_key = None
        dirty = self._dirty
        merged = self._merged
        if merged is None and self._row is not None:  # a key with more than one change: keep merged states
            merged = self._merged = [_UNKNOWN] * len(self._plan.loc)
        live: list[Any] = []
        for w, hop, span, stride, targets in groups:
            base = -2  # where the event's tile of this window starts in its list; -2: not looked up, -1: expired
            for bit, i, j, where, value_of, value, update, init in targets:
                if where is not None and not where(event):
                    continue
                if value_of is not None:
                    value = value_of(event)
                    if value is None:
                        continue
                accepted = True
                if base == -2:
                    if not et_us:
                        et_us = (event_time - EPOCH) // MICROSECOND
                        now_us = (now - EPOCH) // MICROSECOND
                    tile = et_us - et_us % hop  # tile_start
                    expiry = tile + span  # tile_expiry
                    if expiry <= now_us:  # arrived after its tile left the window: never counts
                        base = -1
                    else:
                        base = self._tile(w, tile, expiry, stride)
                        live = self.tiles[w]  # type: ignore[assignment]
                if base < 0:
                    continue
                if order_key is None:
                    order_key = (event_time, now, event["event_id"])  # event_order_key
                k = base + j
                state = live[k]
                live[k] = update(init() if state is None else state, value, order_key)
                dirty |= bit
                if merged is not None:
                    m = merged[i]
                    if m is not _UNKNOWN:
                        merged[i] = update(m, value, order_key)
        self._dirty = dirty
        return accepted

    def _tile(self, w: int, tile: int, expiry: int, stride: int) -> int:
        """Where window ``w``'s tile starting at ``tile`` starts in ``tiles[w]``, made if new (in order: usually
        the newest)."""
        live = self.tiles[w]
        if live is not None:
            n = len(live)
            newest = n - stride
            start = live[newest]
            if start == tile:
                return newest
            if start < tile:
                live.append(tile)
                live += self._plan.blanks[w]
                return n
            k = newest - stride  # an out-of-order event: an older tile
            while k >= 0 and live[k] > tile:
                k -= stride
            if k >= 0 and live[k] == tile:
                return k
            at = k + stride
            live[at:at] = [tile, *self._plan.blanks[w]]
            if k >= 0:
                return at
        else:
            self.tiles[w] = [tile, *self._plan.blanks[w]]
        nxt = self._next  # a window's oldest tile is new: it may leave first (a lifetime tile never does)
        if (nxt is None or expiry < nxt) and expiry < NEVER:
            self._next = expiry
        return 0

    def next_expiry(self) -> datetime | None:
        """When the next tile leaves its window (a timer for the stream)."""
        return None if self._next is None else from_us(self._next)

    def next_expiry_us(self) -> int | None:
        return self._next

    def advance(self, now: datetime) -> bool:
        """Drop every tile whose window has passed by ``now``; True if any was dropped."""
        return self.advance_us(to_us(now))

    def advance_us(self, now: int) -> bool:
        nxt = self._next
        if nxt is None or nxt > now:
            return False
        plan = self._plan
        spans, strides, window_slots, all_tiles, merged = (plan.spans, plan.strides, plan.window_slots, self.tiles,
                                                           self._merged)
        dirty = self._dirty
        nxt = None
        for w, live in enumerate(all_tiles):
            if live is None:
                continue
            span, stride = spans[w], strides[w]
            if span == NEVER:  # a lifetime window's running state: nothing leaves it
                continue
            if live[-stride] + span <= now:  # the whole window empties: its aggregations go to their empty values
                all_tiles[w] = None
                dirty |= plan.window_bits[w]
                if merged is not None:
                    for i in plan.window_aggs[w]:
                        merged[i] = _UNKNOWN
                continue
            k = 0
            while live[k] + span <= now:  # the newest stays: k stops before it
                for j, bit, i in window_slots[w]:
                    if live[k + j] is not None:
                        dirty |= bit
                        if merged is not None:
                            merged[i] = _UNKNOWN
                k += stride
            if k:
                del live[:k]
            expiry = live[0] + span
            if nxt is None or expiry < nxt:
                nxt = expiry
        self._next = nxt
        self._dirty = dirty
        return True

    def run_expiries(self, limit: datetime | None, inclusive: bool, make: Callable[[datetime, tuple[Any, ...]], Any],
                     out: list[Any]) -> datetime | None:
        """Run the expiries before ``limit`` (up to it if ``inclusive``; all if ``None``), appending
        ``make(expiry, row())`` per distinct expiry time to ``out``; returns the last expiry run, if any."""
        stop = None if limit is None else to_us(limit)
        last = None
        while True:
            nxt = self._next
            if nxt is None or (stop is not None and (nxt > stop or (nxt == stop and not inclusive))):
                break
            self.advance_us(nxt)
            last = _at(nxt)
            out.append(make(last, self.row()))
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
            w, j, stride = loc[i]
            live = all_tiles[w]
            if live is None:  # no tiles left in its window
                vals[i] = empty[i]
                continue
            merge_all, finalize, cast = finish[i]
            if merged is not None:
                m = merged[i]
                if m is not _UNKNOWN:  # kept up to date by add
                    vals[i] = cast(finalize(m))
                    continue
            if merged is None and len(live) == stride:  # one tile (a new key, a short window): no list to gather
                p = live[j]
                vals[i] = empty[i] if p is None else cast(finalize(p))
                continue
            partials = [p for p in live[j::stride] if p is not None]
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
        """No live tile: nothing to expire, and no lifetime window's running state."""
        if self._next is not None:
            return False
        tiles = self.tiles
        return not any(tiles[w] for w in self._plan.lifetime)


class Owner:
    """Whose key it is: the rule for a view whose entity has an ``owner`` (a session is one user's).

    The owner of a key is the owner field (``user_id``) of the event that finds the key's state empty (no live
    tile) at its arrival. While the state holds tiles, an event of another owner carrying the key is a
    ``session_collision``: it is not part of the key's features. Once every tile has expired the key is free
    again. Call :meth:`admits` after advancing the state to the event's arrival, before adding it.
    """

    __slots__ = ("field", "owner", "types")

    def __init__(self, field: str, types: frozenset[str], owner: Any = None) -> None:
        self.field = field
        self.types = types  # events of other types are not the view's: they take no part
        self.owner = owner

    def admits(self, state: ViewState, event: Mapping[str, Any]) -> bool:
        if event["event_type"] not in self.types:
            return True
        who = event.get(self.field)
        if state.is_empty():
            self.owner = who
            return True
        return bool(who == self.owner)


def owner_of(view: FeatureView) -> Owner | None:
    """The owner rule of ``view``'s keys, if its entity has an owner."""
    owner = view.entity.owner
    return None if owner is None else Owner(owner.join_key, frozenset(view.event_types()))


class Stepper:
    """The change-point loop of one key, written once: :func:`sweep` and the stream's keyed steps drive it.

    It holds the key's :class:`ViewState`, its owner rule (:class:`Owner`, for views whose keys have one) and
    its data clock ``now`` (the latest time processed), and appends ``make(change point, row)`` to a list:
    one per distinct arrival time of an accepted event (stamped with that ``ingest_time``, after the tiles
    expiring by then are dropped) and one per tile expiry (stamped with the expiry), the rows of
    ``features/SEMANTICS.md``. :meth:`fold` takes a key's events in arrival order, :meth:`expire` runs its
    timers to a limit; called batch after batch they emit what one call over all the events would (but a
    batch ending within one arrival time writes its row, and the next batch's row at that time follows it).
    ``make`` is bound once per key (the stream's is ``partial(Row, view, key)``): no per-row allocation but
    the row's own.
    """

    __slots__ = ("make", "now", "owner", "regressed", "state")

    def __init__(self, state: ViewState, make: Callable[[datetime, tuple[Any, ...]], Any],
                 owner: Owner | None = None, now: datetime | None = None,
                 regressed: Callable[[Mapping[str, Any], datetime], None] | None = None) -> None:
        self.state = state
        self.make = make
        self.owner = owner
        self.now = now  # the key's data clock: the latest time processed
        # called with an event that arrived behind the clock (a live timer ran ahead of it): it counts from now
        self.regressed = regressed

    def fold(self, events: Iterable[Mapping[str, Any]], out: list[Any],
             collided: list[Mapping[str, Any]] | None = None) -> None:
        """Fold one key's events (arrival order) into its state, appending the change points to ``out``.

        With an owner rule, an event of another owner while the key is held is left out and appended to
        ``collided``. An event behind the clock is counted from the clock (``regressed`` is told)."""
        state, owner, make, now = self.state, self.owner, self.make, self.now
        advance_us, add, next_expiry_us = state.advance_us, state.add, state.next_expiry_us
        pending: datetime | None = None  # an arrival time whose row is not yet emitted (ties share one row)
        for e in events:
            t: datetime = e["ingest_time"]
            if now is not None and t < now:  # a live wake-up ran ahead of this event
                if self.regressed is not None:
                    self.regressed(e, now)
                t = now
                e = {**e, "ingest_time": t}
            if pending is not None and t != pending:
                out.append(make(pending, state.row()))
                pending = None
            t_us = (t - EPOCH) // MICROSECOND
            nxt = next_expiry_us()
            if nxt is not None and nxt < t_us:  # the expiries before this arrival are change points of their own
                last = state.run_expiries(t, False, make, out)
                if last is not None and (now is None or now < last):
                    now = last
            dropped = advance_us(t_us)  # tiles expiring at the arrival itself: its row shows them gone
            if owner is not None and not owner.admits(state, e):
                if collided is not None:
                    collided.append(e)
                if dropped:
                    pending = t
            elif add(e) or dropped:
                pending = t
            now = t
        if pending is not None:
            out.append(make(pending, state.row()))
        self.now = now

    def expire(self, limit: datetime | None, out: list[Any]) -> None:
        """Run the timers up to ``limit`` (inclusive; ``None``: until every window is empty), one change point
        per distinct expiry time; the clock moves to the last expiry run."""
        last = self.state.run_expiries(limit, True, self.make, out)
        if last is not None and (self.now is None or self.now < last):
            self.now = last


def _timed(t: datetime, row: tuple[Any, ...]) -> tuple[datetime, tuple[Any, ...]]:
    return t, row


def sweep(
    view: FeatureView, events: Iterable[Mapping[str, Any]], *, until: datetime | None = None,
    collided: list[Mapping[str, Any]] | None = None,
) -> Iterator[tuple[datetime, dict[str, Any]]]:
    """The timeline of one key: ``(change point, values)`` in time order.

    ``events`` are one key's admitted events in arrival order. A row is emitted at
    each arrival of an accepted event (once per distinct arrival time) and at each
    tile expiry, up to ``until`` (inclusive) or until every window is empty. For a
    view whose entity has an owner, events of another owner while the key is held
    (:class:`Owner`) are left out and appended to ``collided``. One :class:`Stepper`
    over all the events, as the stream drives one batch after batch.
    """
    stepper = Stepper(ViewState(view), _timed, owner_of(view))
    out: list[tuple[datetime, tuple[Any, ...]]] = []
    stepper.fold(events, out, collided)
    stepper.expire(until, out)
    names = view.feature_names
    for t, row in out:
        yield t, dict(zip(names, row, strict=True))
