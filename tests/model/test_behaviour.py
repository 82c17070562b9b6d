"""Behavioural tests of the registered champions (loaded from MLflow with their feature contracts).

Directional: more cart activity raises the purchase propensity. Invariance: columns
the model does not read leave its score unchanged. Minimum functionality: obvious
buyers rank above obvious non-buyers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.model.conftest import Trained
from training.pipeline import CHURN, PURCHASE
from training.registry import LoadedModel, load_model

CART = ("session_cart_adds_5m", "session_cart_qty_added_24h", "session_items_in_cart_not_purchased_24h",
        "user_cart_qty_added_24h", "user_items_in_cart_not_purchased_24h", "user_cart_adds_30d")


@pytest.fixture(scope="module")
def purchase_model(trained: Trained) -> LoadedModel:
    return load_model(trained.settings, PURCHASE)


@pytest.fixture(scope="module")
def churn_model(trained: Trained) -> LoadedModel:
    return load_model(trained.settings, CHURN)


def _with_cart(rows: pd.DataFrame, units: int) -> pd.DataFrame:
    """The same moments with ``units`` more units added to the cart in this session, none bought."""
    out = rows.copy()
    for c in CART:
        out[c] = out[c] + (1 if c in ("session_cart_adds_5m", "user_cart_adds_30d") else units)
    out["session_cart_idle_seconds"] = np.maximum(out["session_cart_idle_seconds"], 30.0)
    return out


def test_more_cart_activity_gives_a_higher_propensity(purchase_model: LoadedModel,
                                                     purchase_frame: pd.DataFrame) -> None:
    empty = purchase_frame[purchase_frame["session_items_in_cart_not_purchased_24h"] == 0]
    rows = empty.sample(min(500, len(empty)), random_state=1)
    base = purchase_model.predict(rows)
    one, three = purchase_model.predict(_with_cart(rows, 1)), purchase_model.predict(_with_cart(rows, 3))
    assert one.mean() > 1.5 * base.mean(), (base.mean(), one.mean())
    assert (one >= base).mean() >= 0.9, "a cart add lowered the score for more than 10% of moments"
    assert three.mean() >= one.mean() * 0.95


def test_fields_the_model_does_not_read_do_not_change_the_score(purchase_model: LoadedModel,
                                                               churn_model: LoadedModel,
                                                               purchase_frame: pd.DataFrame) -> None:
    rows = purchase_frame.sample(300, random_state=2).reset_index(drop=True)
    changed = rows.copy()
    changed["user_id"] = "someone-else"
    changed["session_id"] = "another-session"
    changed["user_top3_categories_24h"] = [["toys", "home", "beauty"]] * len(rows)
    changed["user_last_viewed_category_24h"] = "watches"
    changed["session_last_page_24h"] = "/sale"
    changed["decision_time"] = changed["decision_time"] + pd.Timedelta(days=3)
    changed["label"] = 1 - changed["label"]
    for c in (c for c in rows.columns if c.endswith("_at_24h") or c.endswith("_at_30d")):
        changed[c] = changed[c] - pd.Timedelta(hours=5)  # raw timestamps: only their on-demand durations count
    untouched = set(purchase_model.features)
    assert not untouched & {"user_id", "session_id", "user_top3_categories_24h", "user_last_viewed_category_24h",
                            "session_last_page_24h", "decision_time", "label"}
    np.testing.assert_array_equal(purchase_model.predict(rows), purchase_model.predict(changed))
    # the churn model reads user features only: the session's activity is irrelevant to it
    session_cols = [c for c in rows.columns if c.startswith("session_")]
    assert not set(churn_model.features) & set(session_cols)
    busy = rows.copy()
    for c in session_cols:
        if pd.api.types.is_numeric_dtype(busy[c]):
            busy[c] = busy[c] * 3 + 7
    np.testing.assert_array_equal(churn_model.predict(rows), churn_model.predict(busy))
    # ... while changing the features it does read changes its scores (so the check above could fail)
    moved = rows.assign(**{f: rows[f] * 3 + 7 for f in churn_model.features})
    assert not np.array_equal(churn_model.predict(rows), churn_model.predict(moved))


def test_obvious_buyers_rank_above_obvious_non_buyers(purchase_model: LoadedModel,
                                                      purchase_frame: pd.DataFrame) -> None:
    quiet = purchase_frame[(purchase_frame["session_items_in_cart_not_purchased_24h"] == 0)
                           & (purchase_frame["user_purchases_30d"] == 0)
                           & (purchase_frame["session_product_views_5m"] == 0)]
    non_buyers = quiet.sample(min(200, len(quiet)), random_state=3).reset_index(drop=True)
    keen = purchase_frame[purchase_frame["session_items_in_cart_not_purchased_24h"] >= 1]
    buyers = keen.sample(min(200, len(keen)), random_state=4).reset_index(drop=True)
    # make them unmistakable: a fresh cart of 3 units, product views now, and a history of orders
    buyers = buyers.assign(session_items_in_cart_not_purchased_24h=3, session_cart_qty_added_24h=3,
                           user_items_in_cart_not_purchased_24h=3, user_cart_qty_added_24h=3,
                           session_cart_adds_5m=2, session_product_views_5m=4, user_product_views_1h=8,
                           user_purchases_30d=3, user_cart_adds_30d=6, user_cart_conversion_30d=0.5,
                           session_cart_idle_seconds=20.0)
    b, n = purchase_model.predict(buyers), purchase_model.predict(non_buyers)
    ranked = (b[:, None] > n[None, :]).mean()
    assert ranked >= 0.9, f"only {ranked:.0%} of (buyer, non-buyer) pairs ranked correctly"
    assert b.min() > np.median(n), "some obvious buyer scored below the typical non-buyer"
