"""The control holdout: sticky, versioned, deterministic; pinned by test vectors."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import pytest

from serving.decision import DecisionContext, Holdout, PolicyConfig, decide, holdout_unit, in_holdout

Make = Callable[..., DecisionContext]

# (user id, version) -> the first 8 bytes of sha256("kairos-holdout:v<version>:<user id>") and the unit they give
VECTORS = [
    ("u1", 1, "d9f7eb5e5a14a6d0", 0.8514391999579681),
    ("u1", 2, None, 0.8169227254405089),
    ("user-42", 1, None, 0.6136721121956903),
    ("user-42", 2, None, 0.8816376433433057),
    ("alice", 1, None, 0.9296806021378353),
    ("alice", 2, None, 0.2996352747733984),
    ("", 1, None, 0.9047493457338487),
]
# the users among user-0 ... user-199 held out at 5% under version 1
HELD_OUT_V1 = ["user-0", "user-14", "user-60", "user-63", "user-68", "user-100", "user-130", "user-179", "user-197"]


@pytest.mark.parametrize(("user", "version", "prefix", "unit"), VECTORS)
def test_the_hash_vectors(user: str, version: int, prefix: str | None, unit: float) -> None:
    assert holdout_unit(user, "kairos-holdout", version) == unit
    digest = hashlib.sha256(f"kairos-holdout:v{version}:{user}".encode()).digest()
    if prefix is not None:
        assert digest[:8].hex() == prefix
    assert int.from_bytes(digest[:8], "big") / 2**64 == unit


def test_membership_vectors_at_five_percent() -> None:
    h = Holdout()
    assert [u for u in (f"user-{i}" for i in range(200)) if in_holdout(u, h)] == HELD_OUT_V1


def test_the_share_is_the_fraction_and_growing_it_keeps_the_members() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    five = {u for u in users if in_holdout(u, Holdout(fraction=0.05))}
    ten = {u for u in users if in_holdout(u, Holdout(fraction=0.10))}
    sd = math.sqrt(20_000 * 0.05 * 0.95)
    assert abs(len(five) - 1000) < 4 * sd
    assert five <= ten
    v2 = {u for u in users if in_holdout(u, Holdout(fraction=0.05, version=2))}
    assert abs(len(v2 & five) - 50) < 4 * math.sqrt(50)  # a new version re-draws independently
    salted = {u for u in users if in_holdout(u, Holdout(fraction=0.05, salt="other"))}
    assert salted != five


def test_holdout_users_get_the_default_action_logged(policy: PolicyConfig, make_ctx: Make) -> None:
    cfg = policy.model_copy(update={"holdout": Holdout(fraction=0.05)})
    held = decide(make_ctx(user_id="user-14"), cfg)
    assert held.holdout and held.action == "no_action" and held.propensity == 1.0
    assert held.probabilities == {**dict.fromkeys(cfg.action_names, 0.0), "no_action": 1.0}
    assert "holdout: the default action" in held.reasons.notes
    assert held.log_row()["holdout"] is True
    treated = decide(make_ctx(user_id="user-15"), cfg)
    assert not treated.holdout and treated.probabilities["discount_offer"] > 0
    again = [decide(make_ctx(user_id="user-14", decision_id=f"d{i}"), cfg).holdout for i in range(5)]
    assert all(again)  # sticky
