"""The three scorers of each task: XGBoost, the logistic-regression baseline and a heuristic.

Every scorer reads its own feature columns by name from any frame that holds
them (a training frame, a serving request), so extra columns never change a
score. XGBoost is tuned by cross-validation inside the train period, with folds
grouped by user (rows of one user never sit on both sides of a fold) and early
stopping on the folds' log loss; the number of rounds found there is used to fit
the final model on the whole train period.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
import xgboost as xgb
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from conf.settings import XGBoostSettings
from training.metrics import auc

FloatArray = npt.NDArray[np.float64]
Folds = list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]
LOGREG_C: Final = (0.01, 0.1, 1.0)
OnFit = Callable[[float, str], None]  # (fits done, what was fitted): a progress task's ``advance``


def matrix(frame: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """The model's columns, in order, as float64 (bools and ints included)."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise KeyError(f"the frame lacks the model's features {missing}")
    return frame[list(features)].astype("float64")


def user_folds(groups: pd.Series, k: int, label: npt.ArrayLike | None = None) -> Folds:
    """``k`` folds with every user's rows on one side; folds whose sides lack a class are dropped."""
    n_groups = groups.nunique()
    if n_groups < k:
        raise ValueError(f"{n_groups} users are too few for {k} cross-validation folds")
    idx = np.arange(len(groups))
    y = None if label is None else np.asarray(label)
    out: Folds = []
    for tr, va in GroupKFold(n_splits=k).split(idx, groups=groups.to_numpy()):
        if y is not None and (len(np.unique(y[tr])) < 2 or len(np.unique(y[va])) < 2):
            continue
        out.append((tr.astype(np.int64), va.astype(np.int64)))
    if not out:
        raise ValueError(f"no cross-validation fold has both labels on both sides ({n_groups} users)")
    return out


# ------------------------------------------------------------------------------------------------ XGBoost
@dataclass
class XGBoostModel:
    booster: xgb.Booster
    features: list[str]
    params: dict[str, Any]
    rounds: int
    cv: dict[str, float] = field(default_factory=dict)
    grid: list[dict[str, Any]] = field(default_factory=list)

    def predict_proba(self, frame: pd.DataFrame) -> FloatArray:
        out: FloatArray = self.booster.predict(xgb.DMatrix(matrix(frame, self.features)))
        return out.astype(np.float64)

    def contributions(self, frame: pd.DataFrame) -> FloatArray:
        """SHAP values (TreeSHAP, log-odds), one column per feature, without the bias column."""
        out: FloatArray = self.booster.predict(xgb.DMatrix(matrix(frame, self.features)), pred_contribs=True)
        return out[:, :-1].astype(np.float64)

    def importance(self) -> dict[str, float]:
        gain = self.booster.get_score(importance_type="total_gain")
        out: dict[str, float] = {}
        for f in self.features:
            value = gain.get(f, 0.0)
            out[f] = float(value if isinstance(value, int | float) else sum(value))
        return out


def train_xgboost(frame: pd.DataFrame, label: npt.ArrayLike, features: Sequence[str], folds: Folds,
                  cfg: XGBoostSettings, *, seed: int, on_fit: OnFit | None = None) -> XGBoostModel:
    """Grid over ``max_depth`` x ``min_child_weight``, each cross-validated with early stopping; best CV AUC wins.

    ``on_fit(folds, note)`` after each grid point's cross-validation (``len(folds)`` fits)."""
    y = np.asarray(label, dtype=float)
    dtrain = xgb.DMatrix(matrix(frame, features), label=y)
    base = {"objective": "binary:logistic", "eta": cfg.learning_rate, "subsample": cfg.subsample,
            "colsample_bytree": cfg.colsample_bytree, "lambda": cfg.reg_lambda, "nthread": cfg.nthread,
            "seed": seed, "eval_metric": ["auc", "logloss"], "tree_method": "hist"}
    best: tuple[float, dict[str, Any], int, dict[str, float]] | None = None
    grid: list[dict[str, Any]] = []
    for depth, mcw in product(cfg.max_depth, cfg.min_child_weight):
        params = {**base, "max_depth": depth, "min_child_weight": mcw}
        hist = xgb.cv(params, dtrain, num_boost_round=cfg.max_rounds, folds=folds,
                      early_stopping_rounds=cfg.early_stopping_rounds, seed=seed, as_pandas=True)
        assert isinstance(hist, pd.DataFrame)
        rounds = len(hist)
        last = hist.iloc[-1]
        cv = {"cv_auc": float(last["test-auc-mean"]), "cv_auc_std": float(last["test-auc-std"]),
              "cv_log_loss": float(last["test-logloss-mean"])}
        grid.append({"max_depth": depth, "min_child_weight": mcw, "rounds": rounds, **cv})
        if on_fit is not None:
            on_fit(len(folds), f"xgboost depth {depth}, min child weight {mcw}: cv auc {cv['cv_auc']:.4f}, "
                               f"{rounds} rounds")
        if best is None or cv["cv_auc"] > best[0]:
            best = (cv["cv_auc"], params, rounds, cv)
    assert best is not None, "the xgboost grid is empty"
    _, params, rounds, cv = best
    booster = xgb.train(params, dtrain, num_boost_round=rounds)
    return XGBoostModel(booster=booster, features=list(features), params=params, rounds=rounds, cv=cv, grid=grid)


# ------------------------------------------------------------------------------------------------ baselines
def _signed_log1p(x: FloatArray) -> FloatArray:
    out: FloatArray = np.sign(x) * np.log1p(np.abs(x))
    return out


@dataclass
class LogRegModel:
    """Logistic regression on the same features: signed log1p, standardised, L2; ``C`` by cross-validation."""

    pipeline: Pipeline
    features: list[str]
    c: float
    cv_auc: float

    def predict_proba(self, frame: pd.DataFrame) -> FloatArray:
        out: FloatArray = self.pipeline.predict_proba(matrix(frame, self.features).to_numpy())[:, 1]
        return out.astype(np.float64)


def _logreg(c: float, seed: int) -> Pipeline:
    return Pipeline([("log1p", FunctionTransformer(_signed_log1p)), ("scale", StandardScaler()),
                     ("logreg", LogisticRegression(C=c, max_iter=5000, random_state=seed))])


def train_logreg(frame: pd.DataFrame, label: npt.ArrayLike, features: Sequence[str], folds: Folds, *,
                 seed: int, on_fit: OnFit | None = None) -> LogRegModel:
    """``C`` from :data:`LOGREG_C` by cross-validated AUC; ``on_fit(1, note)`` after each fold's fit (the note
    with the mean AUC after a ``C``'s last fold)."""
    x = matrix(frame, features).to_numpy()
    y = np.asarray(label, dtype=int)
    best_c, best_auc = LOGREG_C[0], -1.0
    for c in LOGREG_C:
        scores = []
        for tr, va in folds:
            if len(np.unique(y[tr])) < 2 or len(np.unique(y[va])) < 2:
                continue
            scores.append(auc(y[va], _logreg(c, seed).fit(x[tr], y[tr]).predict_proba(x[va])[:, 1]))
            if on_fit is not None and len(scores) < len(folds):
                on_fit(1, "")
        mean = float(np.mean(scores)) if scores else float("nan")
        if on_fit is not None and scores:
            on_fit(1, f"logreg C={c}: cv auc {mean:.4f}")
        if mean > best_auc:
            best_c, best_auc = c, mean
    return LogRegModel(pipeline=_logreg(best_c, seed).fit(x, y), features=list(features), c=best_c, cv_auc=best_auc)


@dataclass(frozen=True)
class Heuristic:
    """A rule of thumb: a score from a few features, turned into a probability by isotonic regression on train."""

    description: str
    features: tuple[str, ...]
    score: Callable[[pd.DataFrame], FloatArray]


def _purchase_rule(df: pd.DataFrame) -> FloatArray:
    out: FloatArray = (df["session_items_in_cart_not_purchased_24h"].to_numpy(float)
                       + 0.1 * np.minimum(df["user_purchases_30d"].to_numpy(float), 9.0))
    return out


def _churn_rule(df: pd.DataFrame) -> FloatArray:
    out: FloatArray = (df["user_help_searches_7d"].to_numpy(float)
                       + df["user_failed_feature_uses_7d"].to_numpy(float))
    return out


HEURISTICS: Final[dict[str, Heuristic]] = {
    "purchase_propensity": Heuristic(
        description="units in the session's cart now, then the user's orders in 30 days (tie-break)",
        features=("session_items_in_cart_not_purchased_24h", "user_purchases_30d"), score=_purchase_rule),
    "churn": Heuristic(
        description="frustration: help searches plus failed feature uses in the last 7 days",
        features=("user_help_searches_7d", "user_failed_feature_uses_7d"), score=_churn_rule),
}


def _repurchase_rule(df: pd.DataFrame) -> FloatArray:
    out: FloatArray = (np.minimum(df["user_orders_365d"].to_numpy(float), 99.0)
                       - 0.001 * np.clip(df["user_days_since_last_purchase"].to_numpy(float), 0.0, 999.0))
    return out


def _lapse_rule(df: pd.DataFrame) -> FloatArray:
    out: FloatArray = -_repurchase_rule(df)
    return out


# for tasks configured in settings (training.tasks), by target: RFM's rule of thumb on the customer-value features
TARGET_HEURISTICS: Final[dict[str, Heuristic]] = {
    "purchase": Heuristic(
        description="orders in the last 365 days, then the more recent last purchase (tie-break)",
        features=("user_orders_365d", "user_days_since_last_purchase"), score=_repurchase_rule),
    "churn": Heuristic(
        description="fewer orders in the last 365 days, then the older last purchase (tie-break)",
        features=("user_orders_365d", "user_days_since_last_purchase"), score=_lapse_rule),
}


@dataclass
class HeuristicModel:
    rule: Heuristic
    calibration: IsotonicRegression

    @property
    def features(self) -> list[str]:
        return list(self.rule.features)

    def predict_proba(self, frame: pd.DataFrame) -> FloatArray:
        out: FloatArray = np.asarray(self.calibration.predict(self.rule.score(frame)), dtype=np.float64)
        return out


def fit_heuristic(rule: Heuristic, frame: pd.DataFrame, label: npt.ArrayLike) -> HeuristicModel:
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4)
    iso.fit(rule.score(frame), np.asarray(label, dtype=float))
    return HeuristicModel(rule=rule, calibration=iso)
