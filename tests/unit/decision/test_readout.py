"""The holdout readout (A/B/n with intervals) and the sample-ratio-mismatch check, by hand."""

from __future__ import annotations

import math

import pytest

from serving.decision import readout, srm_check


def test_srm_by_hand() -> None:
    ok = srm_check({"holdout": 50, "treatment": 950}, {"holdout": 0.05, "treatment": 0.95})
    assert ok.chi2 == 0.0 and ok.p_value == 1.0 and not ok.mismatch
    drift = srm_check({"holdout": 70, "treatment": 930}, {"holdout": 0.05, "treatment": 0.95})
    chi2 = (70 - 50) ** 2 / 50 + (930 - 950) ** 2 / 950
    assert drift.chi2 == pytest.approx(chi2)
    assert drift.p_value == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))  # the chi-square tail at 1 df
    assert not drift.mismatch  # p ≈ 0.004 is above 0.001
    broken = srm_check({"holdout": 100, "treatment": 900}, {"holdout": 0.05, "treatment": 0.95})
    assert broken.chi2 == pytest.approx(50 + 2500 / 950) and broken.mismatch
    assert broken.expected == {"holdout": 50.0, "treatment": 950.0}


def test_srm_refuses_an_arm_without_a_share() -> None:
    with pytest.raises(ValueError, match="no expected share"):
        srm_check({"a": 1, "b": 2}, {"a": 0.5})


def test_an_ab_readout_by_hand() -> None:
    arms = ["c"] * 4 + ["t"] * 6
    rewards = [0, 1, 0, 1, 1, 1, 1, 0, 1, 1]  # control 0 1 0 1, treatment 1 1 1 0 1 1
    r = readout(arms, rewards, control="c", expected_shares={"c": 0.4, "t": 0.6})
    z = 1.959963984540054
    c, t = r.arms["c"], r.arms["t"]
    assert (c.n, c.mean, t.n) == (4, 0.5, 6) and t.mean == pytest.approx(5 / 6)
    assert c.ci_high - c.mean == pytest.approx(z * math.sqrt((1 / 3) / 4))  # sample variance 1/3
    cmp = r.comparisons["t"]
    se = math.sqrt((1 / 6) / 6 + (1 / 3) / 4)  # = 1/3
    assert cmp.difference == pytest.approx(1 / 3) and se == pytest.approx(1 / 3)
    assert cmp.ci_low == pytest.approx(1 / 3 - z / 3) and cmp.ci_high == pytest.approx(1 / 3 + z / 3)
    assert cmp.relative == pytest.approx(2 / 3) and cmp.confidence == 0.95
    assert r.srm.chi2 == pytest.approx(0.0) and not r.srm.mismatch


def test_abn_intervals_are_bonferroni_corrected() -> None:
    arms = ["c", "c", "c", "a", "a", "a", "b", "b", "b"]
    rewards = [0, 1, 0, 1, 1, 0, 0, 0, 1]
    r = readout(arms, rewards, control="c", expected_shares={"c": 1, "a": 1, "b": 1})
    assert set(r.comparisons) == {"a", "b"}
    assert r.comparisons["a"].confidence == pytest.approx(0.975)
    z = 2.241402727604947  # the normal quantile at 1 − 0.025 / 2
    se = math.sqrt(1 / 3 / 3 + 1 / 3 / 3)
    assert r.comparisons["a"].ci_high - r.comparisons["a"].difference == pytest.approx(z * se)
    assert r.comparisons["b"].difference == pytest.approx(0.0)
