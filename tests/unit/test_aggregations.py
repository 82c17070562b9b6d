"""The monoid laws, checked on random inputs for every aggregator."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from features.aggregations import AGGREGATORS, Aggregator, Count, CountDistinct, Last, Mean, TopK

T = datetime(2026, 1, 1, tzinfo=UTC)


def sample(kind: str, rng: random.Random, n: int) -> list[tuple[Any, tuple[Any, ...]]]:
    out = []
    for i in range(n):
        key = (T + timedelta(seconds=rng.randint(0, 50)), T + timedelta(seconds=rng.randint(50, 60)), f"e{i}")
        value: Any = rng.choice(["a", "b", "c", "d"]) if kind in {"top_k", "count_distinct", "last"} else \
            rng.randint(-5, 20)
        out.append((value, key))
    return out


def fold(agg: Aggregator, items: list[tuple[Any, tuple[Any, ...]]]) -> Any:
    state = agg.init()
    for value, key in items:
        state = agg.update(state, value, key)
    return state


AGGS = [cls() if cls is not TopK else TopK(k=2) for cls in AGGREGATORS.values()]


@pytest.mark.parametrize("agg", AGGS, ids=lambda a: a.kind)
def test_fold_equals_merge_of_any_split_in_any_order(agg: Aggregator) -> None:
    rng = random.Random(agg.kind)
    for _ in range(200):
        items = sample(agg.kind, rng, rng.randint(0, 12))
        whole = agg.finalize(fold(agg, items))
        shuffled = items[:]
        rng.shuffle(shuffled)
        cut = rng.randint(0, len(shuffled))
        merged = agg.merge(fold(agg, shuffled[:cut]), fold(agg, shuffled[cut:]))
        assert agg.finalize(merged) == whole


@pytest.mark.parametrize("agg", AGGS, ids=lambda a: a.kind)
def test_identity_and_associativity(agg: Aggregator) -> None:
    rng = random.Random(1)
    for _ in range(100):
        a, b, c = (fold(agg, sample(agg.kind, rng, rng.randint(0, 5))) for _ in range(3))
        left = agg.merge(agg.merge(agg.copy(a), agg.copy(b)), agg.copy(c))
        right = agg.merge(agg.copy(a), agg.merge(agg.copy(b), agg.copy(c)))
        assert agg.finalize(left) == agg.finalize(right)
        assert agg.finalize(agg.merge(agg.init(), agg.copy(a))) == agg.finalize(a)
        assert agg.finalize(agg.merge(agg.copy(a), agg.init())) == agg.finalize(a)


def test_empty_states_finalize_to_documented_values() -> None:
    assert {kind: cls().finalize(cls().init()) for kind, cls in AGGREGATORS.items()} == {
        "count": 0, "sum": 0, "mean": None, "min": None, "max": None, "last": None,
        "count_distinct": 0, "top_k": [],
    }


def test_last_orders_by_event_time_not_arrival() -> None:
    agg = Last()
    late_arrival_earlier_event = ("old", (T, T + timedelta(minutes=9), "e2"))
    newer = ("new", (T + timedelta(minutes=1), T + timedelta(minutes=1), "e1"))
    assert agg.finalize(fold(agg, [newer, late_arrival_earlier_event])) == "new"
    # ties on event time fall back to arrival, then id
    tie_a = ("a", (T, T, "e1"))
    tie_b = ("b", (T, T + timedelta(seconds=1), "e0"))
    assert agg.finalize(fold(agg, [tie_b, tie_a])) == "b"


def test_top_k_ties_break_by_value() -> None:
    agg = TopK(k=2)
    state = fold(agg, [(v, (T, T, str(i))) for i, v in enumerate(["b", "c", "a", "c", "b", "a", "d"])])
    assert agg.finalize(state) == ["a", "b"]
    with pytest.raises(ValueError, match="k must be >= 1"):
        TopK(k=0)


def test_mean_count_and_distinct() -> None:
    items = [(v, (T, T, str(i))) for i, v in enumerate([2, 4, 4, 6])]
    assert Mean().finalize(fold(Mean(), items)) == 4.0
    assert Count().finalize(fold(Count(), items)) == 4
    assert CountDistinct().finalize(fold(CountDistinct(), items)) == 3


def test_count_distinct_grows_from_a_tuple_to_a_set_and_merges_across_the_two() -> None:
    agg = CountDistinct()
    rng = random.Random(5)
    for _ in range(200):
        items = [rng.randrange(30) for _ in range(rng.randint(0, 40))]
        cut = rng.randint(0, len(items))
        a, b = fold(agg, [(v, ()) for v in items[:cut]]), fold(agg, [(v, ()) for v in items[cut:]])
        b_before = agg.copy(b)
        assert agg.finalize(agg.merge(agg.copy(a), b)) == len(set(items))
        assert b == b_before, "merge never mutates its second argument"
        merged = agg.merge_all([a, b])
        assert merged == set(items) and merged is not a and merged is not b
    few, many = ([(v, ()) for v in range(n)] for n in (agg.small, agg.small + 1))
    assert type(fold(agg, few)) is tuple and type(fold(agg, many)) is set
