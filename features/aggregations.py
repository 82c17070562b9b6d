"""Aggregation semantics as pure monoids: ``init / update / merge / finalize``.

Written once, here. The plain-Python reference folds events with them; the Spark
engine folds per-tile partials with them; the Bytewax engine keeps them as keyed
state. No engine re-implements what an aggregation means.

Contract (checked by the unit tests with property-style cases):

* ``merge`` is associative and ``init()`` is its identity;
* folding events one by one with ``update`` equals merging partial folds of any
  split of the same events, whatever the order of arrival (``update`` is
  order-insensitive because ``last`` orders by its ``order_key``, not by arrival);
* ``finalize`` never mutates the state and returns ``None`` for "no value", which
  the feature's cold-start default then replaces.

For speed ``update`` and ``merge`` may mutate and return their *first* argument;
they never mutate the second, so merging tile partials into a fresh ``init()``
leaves the partials intact. Callers that need an old first argument keep a
:meth:`copy`.
"""

from __future__ import annotations

import copy as _copy
import heapq
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

# Events are ordered for ``last`` by (event_time, ingest_time, event_id): total and
# identical in every engine.
OrderKey = tuple[Any, ...]


class Aggregator(ABC):
    """A commutative monoid over event values plus a finalizer."""

    kind: ClassVar[str]
    # ``update`` of the merge of every partial equals the merge after updating one partial, exactly (no float
    # rounding in between): a state machine may keep the merged state and update it as events come in.
    incremental: ClassVar[bool] = False

    @abstractmethod
    def init(self) -> Any:
        """The identity state (no events)."""

    @abstractmethod
    def update(self, state: Any, value: Any, order_key: OrderKey) -> Any:
        """Fold one non-null input value into ``state``."""

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """Combine two partial states."""

    @abstractmethod
    def finalize(self, state: Any) -> Any:
        """The feature value of a state, or ``None`` when it has none."""

    def merge_all(self, partials: list[Any]) -> Any:
        """``init()`` merged with each partial in turn (never mutates them); subclasses may do it faster."""
        merged = self.init()
        for p in partials:
            merged = self.merge(merged, p)
        return merged

    def copy(self, state: Any) -> Any:
        return _copy.deepcopy(state)

    def is_empty(self, state: Any) -> bool:
        return bool(state == self.init())


@dataclass(frozen=True, kw_only=True)
class Count(Aggregator):
    kind: ClassVar[str] = "count"
    incremental: ClassVar[bool] = True

    def init(self) -> int:
        return 0

    def update(self, state: int, value: Any, order_key: OrderKey) -> int:
        return state + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def merge_all(self, partials: list[int]) -> int:
        return sum(partials)  # integers: exact, the same as merging one by one

    def finalize(self, state: int) -> int:
        return state


@dataclass(frozen=True, kw_only=True)
class Sum(Aggregator):
    kind: ClassVar[str] = "sum"

    def init(self) -> float | int:
        return 0

    def update(self, state: float, value: Any, order_key: OrderKey) -> float:
        out: float = state + value
        return out

    def merge(self, a: float, b: float) -> float:
        return a + b

    def merge_all(self, partials: list[float]) -> float:
        merged: float = 0
        for p in partials:  # in order, as merge does: float addition is not associative
            merged = merged + p
        return merged

    def finalize(self, state: float) -> float:
        return state


@dataclass(frozen=True, kw_only=True)
class Mean(Aggregator):
    """State ``(sum, count)``; finalizes to ``None`` when empty."""

    kind: ClassVar[str] = "mean"

    def init(self) -> tuple[float, int]:
        return (0.0, 0)

    def update(self, state: tuple[float, int], value: Any, order_key: OrderKey) -> tuple[float, int]:
        return (state[0] + value, state[1] + 1)

    def merge(self, a: tuple[float, int], b: tuple[float, int]) -> tuple[float, int]:
        return (a[0] + b[0], a[1] + b[1])

    def finalize(self, state: tuple[float, int]) -> float | None:
        return state[0] / state[1] if state[1] else None


@dataclass(frozen=True, kw_only=True)
class Min(Aggregator):
    kind: ClassVar[str] = "min"
    incremental: ClassVar[bool] = True

    def init(self) -> Any:
        return None

    def update(self, state: Any, value: Any, order_key: OrderKey) -> Any:
        return value if state is None or value < state else state

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return b if b < a else a

    def merge_all(self, partials: list[Any]) -> Any:
        present = [p for p in partials if p is not None]
        return min(present) if present else None  # the first of equal extremes, as merge keeps

    def finalize(self, state: Any) -> Any:
        return state


@dataclass(frozen=True, kw_only=True)
class Max(Aggregator):
    kind: ClassVar[str] = "max"
    incremental: ClassVar[bool] = True

    def init(self) -> Any:
        return None

    def update(self, state: Any, value: Any, order_key: OrderKey) -> Any:
        return value if state is None or value > state else state

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return b if b > a else a

    def merge_all(self, partials: list[Any]) -> Any:
        present = [p for p in partials if p is not None]
        return max(present) if present else None  # the first of equal extremes, as merge keeps

    def finalize(self, state: Any) -> Any:
        return state


@dataclass(frozen=True, kw_only=True)
class Last(Aggregator):
    """The value of the latest event by ``order_key``; state ``(order_key, value)``."""

    kind: ClassVar[str] = "last"
    incremental: ClassVar[bool] = True

    def init(self) -> Any:
        return None

    def update(self, state: Any, value: Any, order_key: OrderKey) -> Any:
        return (order_key, value) if state is None or order_key > state[0] else state

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return b if b[0] > a[0] else a

    def finalize(self, state: Any) -> Any:
        return None if state is None else state[1]


@dataclass(frozen=True, kw_only=True)
class CountDistinct(Aggregator):
    """Exact distinct count; state is the values seen (windows bound their number).

    A few values are kept as a tuple, more as a set: most states (a tile, a user seen once) hold one or
    two values, and an empty tuple is a shared constant where an empty set costs 216 bytes.
    """

    kind: ClassVar[str] = "count_distinct"
    incremental: ClassVar[bool] = True
    small: ClassVar[int] = 8  # values kept in a tuple before the state becomes a set

    def init(self) -> tuple[Any, ...]:
        return ()

    def update(self, state: tuple[Any, ...] | set[Any], value: Any, order_key: OrderKey) -> tuple[Any, ...] | set[Any]:
        if type(state) is set:
            state.add(value)
            return state
        if value in state:
            return state
        if len(state) < self.small:
            return (*state, value)
        out = set(state)
        out.add(value)
        return out

    def merge(self, a: tuple[Any, ...] | set[Any], b: tuple[Any, ...] | set[Any]) -> tuple[Any, ...] | set[Any]:
        if not b:
            return a
        if type(a) is set:
            a.update(b)
            return a
        if type(b) is set:
            out = set(a)  # a new set: b is never returned nor mutated
            out.update(b)
            return out
        for v in b:
            a = self.update(a, v, ())
        return a

    def merge_all(self, partials: list[Any]) -> set[Any]:
        out: set[Any] = set()  # always a new set, whatever the partials hold
        for p in partials:
            out.update(p)
        return out

    def finalize(self, state: tuple[Any, ...] | set[Any]) -> int:
        return len(state)

    def copy(self, state: tuple[Any, ...] | set[Any]) -> tuple[Any, ...] | set[Any]:
        return set(state) if type(state) is set else state  # a tuple is never mutated


@dataclass(frozen=True, kw_only=True)
class TopK(Aggregator):
    """The ``k`` most frequent values, most frequent first, ties by value ascending.

    State is a value -> count mapping (exact, bounded by the window).
    """

    kind: ClassVar[str] = "top_k"
    incremental: ClassVar[bool] = True
    k: int = 3

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"TopK.k must be >= 1, got {self.k}")

    def init(self) -> dict[Any, int]:
        return {}

    def update(self, state: dict[Any, int], value: Any, order_key: OrderKey) -> dict[Any, int]:
        state[value] = state.get(value, 0) + 1
        return state

    def merge(self, a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
        for v, c in b.items():
            a[v] = a.get(v, 0) + c
        return a

    def finalize(self, state: dict[Any, int]) -> list[Any]:
        if len(state) > 64:
            return [v for v, _ in heapq.nsmallest(self.k, state.items(), key=_by_count_then_value)]
        # (-count, value) pairs sort as _by_count_then_value orders them, without a call per item; keys differ
        return [v for _, v in sorted([(-c, v) for v, c in state.items()])[:self.k]]


def _by_count_then_value(vc: tuple[Any, int]) -> tuple[int, Any]:
    return (-vc[1], vc[0])


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.kind: cls for cls in (Count, Sum, Mean, Min, Max, Last, CountDistinct, TopK)
}
