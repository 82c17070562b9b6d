"""Off-policy evaluation: a candidate policy's value estimated from the decision log.

Over logged rows ``(x_i, a_i, p_i, r_i)`` (context, action, logged propensity of the final policy, reward)
and a target policy ``π`` with ``π(a | x)``, let ``w_i = π(a_i | x_i) / p_i``:

* **IPS**: ``V = (1/n) Σ w_i r_i`` (unbiased when every action ``π`` takes had ``p > 0``);
* **self-normalized IPS**: ``V = Σ w_i r_i / Σ w_i`` (slightly biased, much lower variance);
* **doubly robust**: ``V = (1/n) Σ [ Σ_a π(a | x_i) q(x_i, a) + w_i (r_i − q(x_i, a_i)) ]`` with a reward model
  ``q`` (unbiased if either the propensities or ``q`` are right).

Each comes with a percentile bootstrap confidence interval (rows resampled with replacement; for SNIPS the
numerator and the weights are resampled together). ``scipy.stats.bootstrap`` is not used because it gives
no interval at all when one resample's ratio is undefined (every weight zero), which small logs hit.
:class:`TabularRewardModel` is a simple ``q``: the mean reward per (key, action), shrunk towards the
action's mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
X = TypeVar("X")


@dataclass(frozen=True)
class Estimate:
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float

    def covers(self, x: float) -> bool:
        return self.ci_low <= x <= self.ci_high

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2.0


def _arrays(*xs: Sequence[float] | Array) -> list[Array]:
    out = [np.asarray(x, dtype=np.float64) for x in xs]
    n = len(out[0])
    if n == 0:
        raise ValueError("off-policy evaluation needs at least one logged row")
    if any(a.ndim != 1 or len(a) != n for a in out):
        raise ValueError("every input is one value per logged row")
    if any(not np.all(np.isfinite(a)) for a in out):
        raise ValueError("inputs must be finite")
    return out


def _weights(logging: Array, target: Array) -> Array:
    if np.any(logging <= 0) or np.any(logging > 1):
        raise ValueError("logged propensities must be in (0, 1]")
    if np.any(target < 0) or np.any(target > 1):
        raise ValueError("target probabilities must be in [0, 1]")
    w: Array = target / logging
    return w


def _ci(data: tuple[Array, ...], statistic: Callable[..., Any], confidence: float, n_boot: int,
        seed: int) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over rows resampled with replacement (the arrays of
    ``data`` resampled together). Resamples where the statistic is undefined (SNIPS with no weight) are
    left out."""
    n = len(data[0])
    if n < 2 or all(np.all(d == d[0]) for d in data):  # no variation: the bootstrap distribution is a point
        v = float(statistic(*data, axis=-1))
        return v, v
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # resamples per batch: bounded memory
    values: list[Array] = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        values.append(np.asarray(statistic(*(d[idx] for d in data), axis=-1), dtype=np.float64))
    dist = np.concatenate(values)
    dist = dist[np.isfinite(dist)]
    if len(dist) == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(dist, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _mean(x: Array, axis: int = -1) -> Array | float:
    out: Array | float = np.mean(x, axis=axis)
    return out


def _ratio(num: Array, den: Array, axis: int = -1) -> Array | float:
    d = np.sum(den, axis=axis)
    out: Array | float = np.sum(num, axis=axis) / np.where(d == 0, np.nan, d)
    return out


def ips(rewards: Sequence[float] | Array, logging_propensity: Sequence[float] | Array,
        target_propensity: Sequence[float] | Array, *, confidence: float = 0.95, n_boot: int = 1000,
        seed: int = 0) -> Estimate:
    """Inverse propensity scoring; ``target_propensity[i]`` is ``π(a_i | x_i)`` of the logged action."""
    r, p, t = _arrays(rewards, logging_propensity, target_propensity)
    terms = _weights(p, t) * r
    lo, hi = _ci((terms,), _mean, confidence, n_boot, seed)
    return Estimate("ips", float(terms.mean()), lo, hi, len(r), confidence)


def snips(rewards: Sequence[float] | Array, logging_propensity: Sequence[float] | Array,
          target_propensity: Sequence[float] | Array, *, confidence: float = 0.95, n_boot: int = 1000,
          seed: int = 0) -> Estimate:
    """Self-normalized IPS: ``Σ w r / Σ w``."""
    r, p, t = _arrays(rewards, logging_propensity, target_propensity)
    w = _weights(p, t)
    if w.sum() == 0:
        raise ValueError("the target policy never takes a logged action: SNIPS is undefined")
    lo, hi = _ci((w * r, w), _ratio, confidence, n_boot, seed)
    return Estimate("snips", float((w * r).sum() / w.sum()), lo, hi, len(r), confidence)


def doubly_robust(rewards: Sequence[float] | Array, logging_propensity: Sequence[float] | Array,
                  target_propensity: Sequence[float] | Array, q_logged: Sequence[float] | Array,
                  q_target: Sequence[float] | Array, *, confidence: float = 0.95, n_boot: int = 1000,
                  seed: int = 0) -> Estimate:
    """Doubly robust: ``q_logged[i] = q(x_i, a_i)`` and ``q_target[i] = Σ_a π(a | x_i) q(x_i, a)``."""
    r, p, t, ql, qt = _arrays(rewards, logging_propensity, target_propensity, q_logged, q_target)
    terms = qt + _weights(p, t) * (r - ql)
    lo, hi = _ci((terms,), _mean, confidence, n_boot, seed)
    return Estimate("dr", float(terms.mean()), lo, hi, len(r), confidence)


def effective_sample_size(logging_propensity: Sequence[float] | Array,
                          target_propensity: Sequence[float] | Array) -> float:
    """``(Σ w)² / Σ w²``: how many on-policy rows the weighted log is worth."""
    p, t = _arrays(logging_propensity, target_propensity)
    w = _weights(p, t)
    s2 = float((w**2).sum())
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0


# ---- a log and a policy, rather than arrays ------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedRow(Generic[X]):
    """One row of the decision log joined to its outcome."""

    context: X
    action: str
    propensity: float
    reward: float


class TabularRewardModel:
    """``q(x, a)``: the mean reward of ``a`` among logged rows of the same ``key(x)``, shrunk towards the
    action's overall mean with ``shrinkage`` pseudo-rows (the overall mean of all rows for an unseen action)."""

    def __init__(self, key: Callable[[Any], Hashable], shrinkage: float = 5.0) -> None:
        self.key = key
        self.shrinkage = shrinkage
        self._cell: dict[tuple[Hashable, str], tuple[float, int]] = {}
        self._action: dict[str, float] = {}
        self._overall = 0.0

    def fit(self, rows: Sequence[LoggedRow[Any]]) -> TabularRewardModel:
        sums: dict[tuple[Hashable, str], list[float]] = {}
        by_action: dict[str, list[float]] = {}
        for row in rows:
            sums.setdefault((self.key(row.context), row.action), []).append(row.reward)
            by_action.setdefault(row.action, []).append(row.reward)
        self._overall = float(np.mean([r.reward for r in rows])) if rows else 0.0
        self._action = {a: float(np.mean(v)) for a, v in by_action.items()}
        self._cell = {k: (float(np.sum(v)), len(v)) for k, v in sums.items()}
        return self

    def predict(self, context: Any, action: str) -> float:
        prior = self._action.get(action, self._overall)
        total, n = self._cell.get((self.key(context), action), (0.0, 0))
        return (total + self.shrinkage * prior) / (n + self.shrinkage)


@dataclass(frozen=True)
class OPEReport:
    ips: Estimate
    snips: Estimate
    dr: Estimate
    n: int
    effective_sample_size: float

    def estimates(self) -> tuple[Estimate, Estimate, Estimate]:
        return self.ips, self.snips, self.dr


def evaluate_policy(rows: Sequence[LoggedRow[X]], target: Callable[[X], Mapping[str, float]],
                    reward_model: Callable[[X, str], float], *, confidence: float = 0.95, n_boot: int = 1000,
                    seed: int = 0) -> OPEReport:
    """IPS, SNIPS and DR estimates of ``target``'s value over the log; ``target(x)`` is its probability vector
    and ``reward_model(x, a)`` the DR reward model."""
    rewards = np.array([r.reward for r in rows], dtype=np.float64)
    logging = np.array([r.propensity for r in rows], dtype=np.float64)
    vectors = [target(r.context) for r in rows]
    tp = np.array([v.get(r.action, 0.0) for v, r in zip(vectors, rows, strict=True)], dtype=np.float64)
    ql = np.array([reward_model(r.context, r.action) for r in rows], dtype=np.float64)
    qt = np.array([sum(p * reward_model(r.context, a) for a, p in v.items() if p > 0)
                   for v, r in zip(vectors, rows, strict=True)], dtype=np.float64)
    kw: dict[str, Any] = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    return OPEReport(ips=ips(rewards, logging, tp, **kw), snips=snips(rewards, logging, tp, **kw),
                     dr=doubly_robust(rewards, logging, tp, ql, qt, **kw), n=len(rows),
                     effective_sample_size=effective_sample_size(logging, tp))
