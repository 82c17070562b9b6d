"""Rule conditions: text compiled to the specs' expression language, nulls make a condition false."""

from __future__ import annotations

from typing import Any

import pytest

from features import expr as fx
from serving.decision import ConditionError, compile_condition, holds
from serving.decision.conditions import columns


@pytest.mark.parametrize(("text", "row", "expected"), [
    ("purchase_propensity > 0.8", {"purchase_propensity": 0.81}, True),
    ("purchase_propensity > 0.8", {"purchase_propensity": 0.8}, False),
    ("purchase_propensity >= 0.8", {"purchase_propensity": 0.8}, True),
    ("purchase_propensity < 0.8", {"purchase_propensity": 0.8}, False),
    ("purchase_propensity <= 0.8", {"purchase_propensity": 0.8}, True),
    ("cart_items == 3", {"cart_items": 3}, True),
    ("cart_items != 3", {"cart_items": 3}, False),
    ("0.2 < churn <= 0.6", {"churn": 0.6}, True),
    ("0.2 < churn <= 0.6", {"churn": 0.2}, False),
    ("login_frequency_decrease > 0.5 and help_search > 3", {"login_frequency_decrease": 0.6, "help_search": 4}, True),
    ("login_frequency_decrease > 0.5 and help_search > 3", {"login_frequency_decrease": 0.6, "help_search": 3}, False),
    ("a > 1 or b > 1", {"a": 0, "b": 2}, True),
    ("not (a > 1)", {"a": 0}, True),
    ("page in ['checkout', 'cart']", {"page": "cart"}, True),
    ("page not in ['checkout', 'cart']", {"page": "cart"}, False),
    ("trigger == 'cart_abandoned'", {"trigger": "cart_abandoned"}, True),
    ("breaking_news == True", {"breaking_news": True}, True),
    ("spend / sessions > 10", {"spend": 100.0, "sessions": 5}, True),
    ("spend / sessions > 10", {"spend": 100.0, "sessions": 0}, False),  # division by zero is null
    ("-x > 1", {"x": -2}, True),
    ("activity_score > 70", {"activity_score": 71}, True),
])
def test_conditions_evaluate(text: str, row: dict[str, Any], expected: bool) -> None:
    assert holds(text, row) is expected


@pytest.mark.parametrize("text", ["purchase_propensity > 0.8", "not (purchase_propensity > 0.8)",
                                  "purchase_propensity > 0.8 or churn > 0.5", "x in [1, 2]"])
def test_a_missing_or_null_value_never_makes_a_condition_hold(text: str) -> None:
    assert holds(text, {}) is False
    assert holds(text, {"purchase_propensity": None, "churn": None, "x": float("nan")}) is False


def test_the_condition_is_a_features_expression_and_the_tree_walk_agrees() -> None:
    tree = compile_condition("churn > 0.6 and help_search > 3")
    assert isinstance(tree, fx.Expr)
    assert columns("churn > 0.6 and help_search > 3") == {"churn", "help_search"}
    for row in ({"churn": 0.7, "help_search": 4}, {"churn": 0.7, "help_search": 1}, {"churn": None}):
        assert bool(tree.evaluate(row)) == bool(tree.fn(row))


@pytest.mark.parametrize("text", ["__import__('os')", "x.y > 1", "x[0] > 1", "x ** 2 > 1", "lambda: 1",
                                  "x in y", "x is None", "[1, 2]", "x >"])
def test_anything_outside_the_grammar_is_refused(text: str) -> None:
    with pytest.raises(ConditionError):
        compile_condition(text)
