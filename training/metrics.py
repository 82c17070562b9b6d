"""Holdout metrics (AUC, PR-AUC, log loss, Brier, ECE) and the ROC, PR and calibration plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

FloatArray = npt.NDArray[np.float64]
_EPS = 1e-6


def expected_calibration_error(y: npt.ArrayLike, p: npt.ArrayLike, bins: int = 10) -> float:
    """Mean |observed rate - mean prediction| over equal-width probability bins, weighted by bin size."""
    yy = np.asarray(y, dtype=float)
    pp = np.asarray(p, dtype=float)
    idx = np.minimum((pp * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += float(m.sum()) * abs(float(yy[m].mean()) - float(pp[m].mean()))
    return total / max(len(yy), 1)


def binary_metrics(y: npt.ArrayLike, p: npt.ArrayLike, *, bins: int = 10) -> dict[str, float]:
    """AUC, PR-AUC (average precision), log loss, Brier score and ECE of probabilities ``p`` for labels ``y``."""
    yy = np.asarray(y, dtype=int)
    pp = np.clip(np.asarray(p, dtype=float), _EPS, 1.0 - _EPS)
    if len(np.unique(yy)) < 2:
        raise ValueError(f"the holdout has only label {yy[0] if len(yy) else None}: AUC is undefined")
    return {
        "auc": float(roc_auc_score(yy, pp)),
        "pr_auc": float(average_precision_score(yy, pp)),
        "log_loss": float(log_loss(yy, pp, labels=[0, 1])),
        "brier": float(brier_score_loss(yy, pp)),
        "ece": expected_calibration_error(yy, pp, bins),
        "label_rate": float(yy.mean()),
        "rows": float(len(yy)),
    }


def auc(y: npt.ArrayLike, score: npt.ArrayLike) -> float:
    return float(roc_auc_score(np.asarray(y, dtype=int), np.asarray(score, dtype=float)))


# ------------------------------------------------------------------------------------------------- plots
def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(y: npt.ArrayLike, scores: Mapping[str, npt.ArrayLike], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(y: npt.ArrayLike, scores: Mapping[str, npt.ArrayLike], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, s in scores.items():
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, s):.3f})")
    ax.axhline(float(np.mean(np.asarray(y, dtype=float))), color="grey", linestyle=":", linewidth=1,
               label="label rate")
    ax.set(xlabel="recall", ylabel="precision", title=title)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_calibration(y: npt.ArrayLike, probs: Mapping[str, npt.ArrayLike], path: Path, title: str,
                     bins: int = 10) -> Path:
    """Reliability diagram: observed label rate against mean prediction, per quantile bin."""
    yy = np.asarray(y, dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for name, p in probs.items():
        pp = np.asarray(p, dtype=float)
        edges = np.unique(np.quantile(pp, np.linspace(0, 1, bins + 1)))
        idx = np.clip(np.searchsorted(edges, pp, side="right") - 1, 0, max(len(edges) - 2, 0))
        xs = [float(pp[idx == b].mean()) for b in np.unique(idx)]
        ys = [float(yy[idx == b].mean()) for b in np.unique(idx)]
        top = max(top, *xs, *ys)
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {expected_calibration_error(yy, pp):.3f})")
    top = min(1.0, top * 1.05 + 0.01)
    ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=title, xlim=(0, top), ylim=(0, top))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_importance(importance: Mapping[str, float], path: Path, title: str, top: int = 20) -> Path:
    items = sorted(importance.items(), key=lambda kv: kv[1])[-top:]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4C72B0")
    ax.set(xlabel="total gain", title=title)
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def plot_shap_summary(contribs: FloatArray, values: FloatArray, names: list[str], path: Path, title: str,
                      top: int = 20, seed: int = 0) -> Path:
    """A SHAP beeswarm: per feature (by mean |SHAP|), each row's contribution, coloured by the feature's value."""
    order = np.argsort(np.abs(contribs).mean(axis=0))[::-1][:top][::-1]
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(order) + 1.4))
    for row, j in enumerate(order):
        v = values[:, j].astype(float)
        lo, hi = np.nanpercentile(v, 5), np.nanpercentile(v, 95)
        colour = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.full(len(v), 0.5)
        ax.scatter(contribs[:, j], row + rng.uniform(-0.3, 0.3, len(v)), c=colour, cmap="coolwarm", s=4,
                   alpha=0.6, linewidths=0)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(order)), [names[j] for j in order], fontsize=8)
    ax.set(xlabel="SHAP value (log-odds contribution)", title=title)
    sm = plt.cm.ScalarMappable(cmap="coolwarm")
    cbar = fig.colorbar(sm, ax=ax, pad=0.01)
    cbar.set_ticks([0, 1], labels=["low", "high"])
    cbar.set_label("feature value")
    return _save(fig, path)
