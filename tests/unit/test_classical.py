"""The BG/NBD baseline: lifetimes' fit reproduces Fader, Hardie and Lee (2005), and the purchase probability."""

from __future__ import annotations

from pathlib import Path

import lifetimes
import numpy as np
import pandas as pd
import pytest

from training.classical import AGE, FREQUENCY, RECENCY, fit_bgnbd, p_purchase_within

CDNOW = Path(lifetimes.__file__).parent / "datasets" / "cdnow_customers_summary.csv"


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    """The CDNOW sample of the paper (2,357 customers, weeks), as the feature columns the model reads."""
    d = pd.read_csv(CDNOW, index_col=0)
    return pd.DataFrame({"user_id": d.index.astype(str), "decision_time": pd.Timestamp("1997-09-30", tz="UTC"),
                         FREQUENCY: d["frequency"], RECENCY: d["recency"], AGE: d["T"]}).reset_index(drop=True)


def test_the_fit_reproduces_the_papers_estimates(cdnow: pd.DataFrame) -> None:
    # Fader, Hardie and Lee (2005), "Counting your customers the easy way", table 1 / section 5: r = 0.243,
    # alpha = 4.414, a = 0.793, b = 2.426 on this sample
    model = fit_bgnbd(cdnow, horizon_days=39.0)
    p = model.params
    assert model.customers == len(cdnow)
    assert p["r"] == pytest.approx(0.243, abs=5e-4) and p["alpha"] == pytest.approx(4.414, abs=5e-3)
    assert p["a"] == pytest.approx(0.793, abs=5e-4) and p["b"] == pytest.approx(2.426, abs=5e-3)


def test_purchase_probability_by_hand() -> None:
    # a customer just acquired (x = 0, T = 0) is alive: P(a purchase within t) = 1 - (alpha / (alpha + t)) ** r,
    # the NBD's P(X(t) > 0); worked by hand for r = 0.243, alpha = 4.414, t = 39: (4.414 / 43.414) ** 0.243
    params = {"r": 0.243, "alpha": 4.414}
    got = p_purchase_within(params, np.array([1.0]), np.array([0.0]), np.array([0.0]), 39.0)
    assert got[0] == pytest.approx(1.0 - (4.414 / 43.414) ** 0.243, rel=1e-12)
    assert got[0] == pytest.approx(0.42621, abs=1e-5)
    # x = 2 repeat purchases at T = 38.86 with P(alive) = 0.5: the posterior rate is Gamma(r + 2, alpha + T)
    got = p_purchase_within(params, np.array([0.5]), np.array([2.0]), np.array([38.86]), 39.0)
    assert got[0] == pytest.approx(0.5 * (1.0 - (43.274 / 82.274) ** 2.243), rel=1e-12)


def test_scores_rank_the_active_above_the_lapsed_and_churn_is_the_complement(cdnow: pd.DataFrame) -> None:
    model = fit_bgnbd(cdnow, horizon_days=39.0)
    rows = pd.DataFrame({FREQUENCY: [5.0, 5.0, 0.0], RECENCY: [38.0, 5.0, 0.0], AGE: [38.86, 38.86, -1.0]})
    p = model.predict_proba(rows)
    assert p[0] > p[1] > 0.0  # the same frequency, a recent last purchase: likelier to buy
    assert 0.0 < p[2] < 1.0  # no history yet (T = -1): a new customer's prior
    churn = fit_bgnbd(cdnow, horizon_days=39.0, churn=True).predict_proba(rows)
    assert np.allclose(churn, 1.0 - p)
    with pytest.raises(KeyError, match="customer_value_v1"):
        model.predict_proba(rows.drop(columns=[AGE]))
