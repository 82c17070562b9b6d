"""Fixtures of the decision-layer unit tests: the default policy and a context factory."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from serving.decision import DecisionContext, PolicyConfig, load_policy

NOON = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
BOTH = frozenset({"personalization", "marketing"})


@pytest.fixture(scope="session")
def policy() -> PolicyConfig:
    """conf/policy.yaml, with the holdout off so that no test user lands in it by chance."""
    cfg = load_policy()
    return cfg.model_copy(update={"holdout": cfg.holdout.model_copy(update={"fraction": 0.0})})


@pytest.fixture
def make_ctx() -> Callable[..., DecisionContext]:
    def make(**kw: Any) -> DecisionContext:
        base: dict[str, Any] = {"user_id": "user-a", "now": NOON, "trigger": "cart_abandoned", "consents": BOTH,
                                "timezone": "UTC", "scores": {"purchase_propensity": 0.5, "churn": 0.2},
                                "model_versions": {"purchase_propensity": "3", "churn": "5"},
                                "feature_ages": {"user_commerce": 12.0, "session_activity": None}}
        base.update(kw)
        return DecisionContext(**base)

    return make
