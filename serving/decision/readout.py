"""The holdout readout: an A/B/n comparison of arms against the control, and a sample-ratio-mismatch check.

Each arm's mean reward has a normal-approximation confidence interval; each arm is compared with the
control by Welch's difference of means (its interval, and a two-sided p-value from Welch's t-test), at a
confidence Bonferroni-corrected for the number of comparisons. The **sample-ratio-mismatch** check is a
chi-square goodness-of-fit test of the arms' counts against their expected shares (5% holdout: 0.05 and
0.95): a p-value below ``srm_alpha`` (0.001 by default) means the assignment or the logging is broken and
the comparison should not be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    share: float  # observed share of the rows
    expected_share: float


@dataclass(frozen=True)
class Comparison:
    arm: str
    control: str
    difference: float  # arm mean minus control mean
    ci_low: float
    ci_high: float
    relative: float | None  # difference / control mean
    p_value: float
    confidence: float  # after the Bonferroni correction

    def covers(self, x: float) -> bool:
        return self.ci_low <= x <= self.ci_high


@dataclass(frozen=True)
class SRMCheck:
    chi2: float
    p_value: float
    observed: Mapping[str, int]
    expected: Mapping[str, float]  # expected counts
    mismatch: bool


@dataclass(frozen=True)
class Readout:
    arms: Mapping[str, ArmSummary]
    comparisons: Mapping[str, Comparison]
    srm: SRMCheck


def srm_check(counts: Mapping[str, int], expected_shares: Mapping[str, float], *,
              alpha: float = 0.001) -> SRMCheck:
    """Chi-square test of the observed counts against the expected shares (normalized to sum to 1)."""
    arms = sorted(expected_shares)
    if set(counts) - set(arms):
        raise ValueError(f"arms {sorted(set(counts) - set(arms))} have no expected share")
    total_share = sum(expected_shares.values())
    if total_share <= 0 or any(expected_shares[a] <= 0 for a in arms):
        raise ValueError("expected shares must be positive")
    observed = np.array([counts.get(a, 0) for a in arms], dtype=np.float64)
    n = observed.sum()
    expected = np.array([expected_shares[a] / total_share * n for a in arms])
    chi2, p = stats.chisquare(observed, expected)
    return SRMCheck(chi2=float(chi2), p_value=float(p),
                    observed={a: int(o) for a, o in zip(arms, observed, strict=True)},
                    expected={a: float(e) for a, e in zip(arms, expected, strict=True)}, mismatch=bool(p < alpha))


def readout(arms: Sequence[str], rewards: Sequence[float], *, control: str, expected_shares: Mapping[str, float],
            confidence: float = 0.95, srm_alpha: float = 0.001) -> Readout:
    """The A/B/n readout of rows given as one arm label and one reward each."""
    labels = np.asarray(arms, dtype=object)
    r = np.asarray(rewards, dtype=np.float64)
    if len(labels) != len(r):
        raise ValueError("one arm per reward")
    if control not in expected_shares:
        raise ValueError(f"the control {control!r} has no expected share")
    names = sorted(expected_shares)
    n_total = len(r)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    summaries: dict[str, ArmSummary] = {}
    groups: dict[str, np.ndarray] = {}
    total_share = sum(expected_shares.values())
    for a in names:
        x = r[labels == a]
        groups[a] = x
        mean = float(x.mean()) if len(x) else math.nan
        se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
        summaries[a] = ArmSummary(arm=a, n=len(x), mean=mean, ci_low=mean - z * se, ci_high=mean + z * se,
                                  share=len(x) / n_total if n_total else math.nan,
                                  expected_share=expected_shares[a] / total_share)
    others = [a for a in names if a != control]
    level = 1.0 - (1.0 - confidence) / max(len(others), 1)
    zc = float(stats.norm.ppf(0.5 + level / 2))
    comparisons: dict[str, Comparison] = {}
    c = groups[control]
    for a in others:
        x = groups[a]
        if len(x) < 2 or len(c) < 2:
            continue
        diff = float(x.mean() - c.mean())
        se = math.sqrt(float(x.var(ddof=1)) / len(x) + float(c.var(ddof=1)) / len(c))
        p = float(stats.ttest_ind(x, c, equal_var=False).pvalue) if se > 0 else (1.0 if diff == 0 else 0.0)
        comparisons[a] = Comparison(arm=a, control=control, difference=diff, ci_low=diff - zc * se,
                                    ci_high=diff + zc * se, relative=diff / float(c.mean()) if c.mean() else None,
                                    p_value=p, confidence=level)
    srm = srm_check({a: s.n for a, s in summaries.items()}, expected_shares, alpha=srm_alpha)
    return Readout(arms=summaries, comparisons=comparisons, srm=srm)
