from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from features.aggregations import Count
from features.expr import col
from features.registry import REGISTRY, Registry
from features.spec import LIFETIME, NO_TTL, W90D, W180D, W365D, Aggregation, Derived, FeatureView, Window

SEED_FEATURES = [
    "user_total_spend_30d",
    "session_engagement_score_5m",
    "session_top3_categories_24h",
    "user_items_in_cart_not_purchased_24h",
    "user_login_freq_change_7d",
    "user_help_searches_7d",
    "user_distinct_devices_24h",
]


def test_the_seeds_features_are_declared() -> None:
    for name in SEED_FEATURES:
        assert REGISTRY.feature(name).description


def test_every_feature_is_documented_typed_owned_tagged_and_defaulted() -> None:
    for v in REGISTRY.views:
        for f in v.features:
            assert f.description and f.owner and f.dtype
            assert v.tags_of(f)["view"] == v.name
            assert f.cast(None) == f.default  # the cold-start default is the value of nothing
    for o in REGISTRY.on_demand_views:
        for f in o.features:
            assert f.description and f.owner and o.tags_of(f)["on_demand"] == "true"


def test_every_window_and_all_aggregations_are_used() -> None:
    windows = {a.window.name for v in REGISTRY.views for a in v.aggregations}
    assert windows == {"5m", "1h", "24h", "7d", "30d", "90d", "180d", "365d", "lifetime"}
    kinds = {a.op.kind for v in REGISTRY.views for a in v.aggregations}
    assert kinds == {"count", "sum", "mean", "min", "max", "last", "count_distinct", "top_k"}


def test_window_must_tile_a_day() -> None:
    with pytest.raises(ValueError, match="must divide window length"):
        Window(length=timedelta(minutes=5), hop=timedelta(minutes=2))
    with pytest.raises(ValueError, match="must divide one day"):
        Window(length=timedelta(hours=14), hop=timedelta(hours=7))


def test_long_windows_tile_by_day_and_lifetime_is_one_running_state() -> None:
    for w in (W90D, W180D, W365D):
        assert w.hop == timedelta(days=1) and not w.lifetime and w.span == w.length + w.hop  # type: ignore[operator]
    assert LIFETIME.lifetime and LIFETIME.span is None and LIFETIME.name == "lifetime"
    with pytest.raises(ValueError, match="lifetime window has one running state"):
        Window(length=None, hop=timedelta(hours=1))
    value = REGISTRY.view("user_value")
    assert value.lifetime and value.ttl == NO_TTL
    assert not REGISTRY.view("user_commerce").lifetime
    assert REGISTRY.view("user_commerce").ttl == timedelta(days=31)  # 30 days on a daily hop


def test_bad_declarations_fail_with_their_name() -> None:
    v = REGISTRY.view("user_commerce")
    broken = FeatureView(
        name="broken", entity=v.entity, source=v.source, description="x",
        aggregations=(Aggregation(name="a", op=Count(), window=v.aggregations[0].window, dtype="int64",
                                  description="a", default=0),),
        derived=(Derived(name="b", dtype="int64", default=0, description="b", expr=col("nope") + 1),),
    )
    with pytest.raises(ValueError, match="derived feature 'b' reads unknown \\['nope'\\]"):
        Registry(entities=REGISTRY.entities, sources=REGISTRY.sources, views=(broken,), on_demand_views=(),
                 services=())
    dup = FeatureView(name="dup", entity=v.entity, source=v.source, description="x", aggregations=v.aggregations)
    with pytest.raises(ValueError, match="feature name 'user_total_spend_30d' is declared twice"):
        Registry(entities=REGISTRY.entities, sources=REGISTRY.sources, views=(v, dup), on_demand_views=(),
                 services=())
    with pytest.raises(ValueError, match="dtype 'decimal'"):
        Aggregation(name="x", op=Count(), window=v.aggregations[0].window, dtype="decimal",  # type: ignore[arg-type]
                    description="x", default=0)


def test_services_reference_registered_views() -> None:
    names = {v.name for v in REGISTRY.views} | {o.name for o in REGISTRY.on_demand_views}
    for s in REGISTRY.services:
        assert {r.split(":")[0] for r in s.feature_refs} <= names


def test_features_package_imports_no_engine() -> None:
    code = (
        "import sys, features.registry, features.reference, features.semantics\n"
        "bad = [m for m in ('pyspark', 'bytewax', 'feast') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compiled_expressions_equal_the_tree_walk() -> None:
    import random

    from tests.builders import T0

    rng = random.Random(3)
    for v in REGISTRY.views:
        for d in v.derived:
            for _ in range(50):
                row = {n: rng.choice([None, T0, T0 + timedelta(days=rng.randint(1, 400))]) if "_at_" in n
                       else rng.choice([None, 0, 1, 2.5, 100.0, -3.0]) for n in d.expr.columns()}
                assert d.expr.fn(row) == d.expr.evaluate(row), d.name
    for o in REGISTRY.on_demand_views:
        for f in o.features:
            row = {n: rng.choice([None, T0]) if "at_" in n or n == "request_time" else rng.choice([None, 0, 3])
                   for n in f.expr.columns()}
            assert f.expr.fn(row) == f.expr.evaluate(row), f.name


def test_cancel_intent_searches_match_words_not_whole_queries() -> None:
    from features.catalog import CANCEL_INTENT_WORDS
    from features.expr import col, contains_any

    agg = next(a for a in REGISTRY.view("user_account").aggregations if a.name == "user_cancel_intent_searches_7d")
    assert agg.where is not None
    matches = {q: agg.where.fn({"query": q}) for q in ("How do I CANCEL my plan", "refund please", "track order",
                                                        "close account now", "size guide")}
    assert matches == {"How do I CANCEL my plan": True, "refund please": True, "track order": False,
                       "close account now": True, "size guide": False}
    assert agg.where.fn({"query": None}) is None and agg.where.evaluate({"query": "unsubscribe"}) is True
    with pytest.raises(ValueError, match="lower-case"):
        contains_any(col("query"), ("Cancel",))
    assert CANCEL_INTENT_WORDS
