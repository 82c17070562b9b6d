"""The classical baseline: the BG/NBD buy-till-you-die model (Fader, Hardie and Lee 2005), from ``lifetimes``.

BG/NBD describes a customer by three numbers at a moment ``T`` days after their first purchase: the frequency
``x`` (repeat purchase days), the recency ``t_x`` (days from the first to the latest purchase) and the age ``T``.
While alive a customer buys as a Poisson process of rate ``lambda ~ Gamma(r, alpha)``; after each purchase they
drop out with probability ``p ~ Beta(a, b)``. ``lifetimes.BetaGeoFitter`` fits ``(r, alpha, a, b)`` by maximum
likelihood (its fit on the CDNOW sample reproduces the paper's estimates: the tests check it).

The question a cutoff task asks is whether the customer buys within ``h`` days. In BG/NBD a customer alive at
``T`` makes no purchase in ``(T, T + h]`` with probability ``E[exp(-lambda h)]`` (dropping out happens only right
after a purchase), and given the history and being alive, ``lambda ~ Gamma(r + x, alpha + T)``; so

    P(a purchase in (T, T + h] | x, t_x, T) = P(alive | x, t_x, T) * (1 - ((alpha + T) / (alpha + T + h)) ** (r + x))

with ``P(alive)`` from ``BetaGeoFitter.conditional_probability_alive``. For ``target: churn`` (no event within
``h``) the score is one minus that.

The model reads x, t_x and T from the feature service (``customer_value_v1``): the same point-in-time features
as the other scorers, so it is fitted on the same train period and scored on the same holdout rows. It is fitted
on one row per customer: their summary at the latest train cutoff (all the training period's history).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from lifetimes import BetaGeoFitter

FloatArray = npt.NDArray[np.float64]

FREQUENCY: Final = "user_repeat_purchase_days_lifetime"  # x
RECENCY: Final = "user_purchase_span_days_lifetime"  # t_x
AGE: Final = "user_days_since_first_purchase"  # T (-1: no purchase yet)
BGNBD_FEATURES: Final = (FREQUENCY, RECENCY, AGE)


def p_purchase_within(params: dict[str, float], p_alive: FloatArray, x: FloatArray, age: FloatArray,
                      horizon_days: float) -> FloatArray:
    """``P(alive) * (1 - ((alpha + T) / (alpha + T + h)) ** (r + x))`` (module docstring)."""
    r, alpha = params["r"], params["alpha"]
    out: FloatArray = p_alive * (1.0 - ((alpha + age) / (alpha + age + horizon_days)) ** (r + x))
    return out


@dataclass
class BGNBDModel:
    """A fitted BG/NBD model scoring ``P(a purchase within horizon)`` (or churn, its complement) per row."""

    fitter: BetaGeoFitter
    horizon_days: float
    churn: bool = False
    customers: int = 0

    @property
    def features(self) -> list[str]:
        return list(BGNBD_FEATURES)

    @property
    def params(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.fitter.params_.items()}

    def predict_proba(self, frame: pd.DataFrame) -> FloatArray:
        x, t_x, age = _summary(frame)
        bought = age >= 0  # a customer without a purchase yet: no BG/NBD history (T = 0, nothing to lose)
        age0 = np.where(bought, age, 0.0)
        p_alive = np.asarray(self.fitter.conditional_probability_alive(x, t_x, age0), dtype=float)
        p = p_purchase_within(self.params, p_alive, x, age0, self.horizon_days)
        out: FloatArray = np.clip(1.0 - p if self.churn else p, 0.0, 1.0).astype(np.float64)
        return out


def _summary(frame: pd.DataFrame) -> tuple[FloatArray, FloatArray, FloatArray]:
    missing = [f for f in BGNBD_FEATURES if f not in frame.columns]
    if missing:
        raise KeyError(f"BG/NBD reads {missing}, which the frame lacks: use a feature service with them "
                       "(customer_value_v1)")
    x = frame[FREQUENCY].to_numpy(float)
    t_x = frame[RECENCY].to_numpy(float)
    age = frame[AGE].to_numpy(float)
    return x, np.minimum(t_x, np.maximum(age, 0.0)), age


def fit_bgnbd(train: pd.DataFrame, *, horizon_days: float, churn: bool = False, penalizer: float = 0.0,
              decision_time: str = "decision_time", key: str = "user_id") -> BGNBDModel:
    """Maximum likelihood on each customer's summary at the latest train decision time they have (one row per
    customer, every customer who has bought by then)."""
    last = train.sort_values(decision_time, kind="stable").drop_duplicates(key, keep="last")
    x, t_x, age = _summary(last)
    keep = age > 0
    if keep.sum() < 10:
        raise ValueError(f"{int(keep.sum())} customers with a purchase history are too few to fit BG/NBD")
    fitter = BetaGeoFitter(penalizer_coef=penalizer)
    fitter.fit(x[keep], t_x[keep], age[keep])
    return BGNBDModel(fitter=fitter, horizon_days=horizon_days, churn=churn, customers=int(keep.sum()))
