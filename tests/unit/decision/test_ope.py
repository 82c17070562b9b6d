"""The off-policy estimators against values worked out by hand, and their bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from serving.decision import (
    LoggedRow,
    TabularRewardModel,
    doubly_robust,
    effective_sample_size,
    evaluate_policy,
    ips,
    snips,
)

# four logged rows: reward, logged propensity of the logged action, target probability of the logged action
R = [1.0, 0.0, 1.0, 0.5]
P = [0.5, 0.25, 0.8, 0.1]
T = [1.0, 0.5, 0.2, 0.0]  # weights 2, 2, 0.25, 0
Q_LOGGED = [0.6, 0.2, 0.5, 0.4]
Q_TARGET = [0.6, 0.3, 0.45, 0.1]


def test_ips_by_hand() -> None:
    e = ips(R, P, T)
    assert e.value == pytest.approx((2 * 1 + 2 * 0 + 0.25 * 1 + 0 * 0.5) / 4)  # 0.5625
    assert e.estimator == "ips" and e.n == 4 and e.ci_low <= e.value <= e.ci_high


def test_snips_by_hand() -> None:
    e = snips(R, P, T)
    assert e.value == pytest.approx(2.25 / 4.25)  # Σ w r / Σ w
    assert 0.0 <= e.ci_low <= e.value <= e.ci_high <= 1.0  # resamples with no weight are left out


def test_doubly_robust_by_hand() -> None:
    e = doubly_robust(R, P, T, Q_LOGGED, Q_TARGET)
    terms = [0.6 + 2 * (1 - 0.6), 0.3 + 2 * (0 - 0.2), 0.45 + 0.25 * (1 - 0.5), 0.1 + 0 * (0.5 - 0.4)]
    assert terms == pytest.approx([1.4, -0.1, 0.575, 0.1])
    assert e.value == pytest.approx(sum(terms) / 4)  # 0.49375


def test_effective_sample_size_by_hand() -> None:
    assert effective_sample_size(P, T) == pytest.approx(4.25**2 / (4 + 4 + 0.0625))


def test_the_bootstrap_interval_of_two_rows_by_hand() -> None:
    # terms 0 and 2: a resample's mean is 0, 1 or 2 with probabilities 1/4, 1/2, 1/4
    e = ips([0.0, 1.0], [1.0, 0.5], [1.0, 1.0], n_boot=4000)
    assert e.value == 1.0 and (e.ci_low, e.ci_high) == (0.0, 2.0)
    narrow = ips([0.0, 1.0], [1.0, 0.5], [1.0, 1.0], n_boot=4000, confidence=0.4)
    assert (narrow.ci_low, narrow.ci_high) == (1.0, 1.0)


def test_constant_terms_have_a_point_interval() -> None:
    e = ips([1.0] * 10, [0.5] * 10, [0.5] * 10)
    assert (e.value, e.ci_low, e.ci_high) == (1.0, 1.0, 1.0)


def test_dr_with_the_true_reward_model_is_the_target_value_exactly() -> None:
    rng = np.random.default_rng(0)
    n, k = 500, 3
    reward = rng.random((n, k))  # deterministic reward of each action in each context
    logging = rng.dirichlet(np.ones(k), n)
    target = rng.dirichlet(np.ones(k), n)
    a = np.array([rng.choice(k, p=p) for p in logging])
    rows = np.arange(n)
    e = doubly_robust(reward[rows, a], logging[rows, a], target[rows, a], reward[rows, a], (target * reward).sum(1))
    assert e.value == pytest.approx(float((target * reward).sum(1).mean()))


def test_the_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    """Two actions with known Bernoulli rewards; a uniform logger, a target preferring action 1."""
    rng = np.random.default_rng(42)
    mu, target = np.array([0.2, 0.6]), np.array([0.3, 0.7])
    truth = float(target @ mu)
    covered = {"ips": 0, "snips": 0, "dr": 0}
    reps, n = 150, 400
    for i in range(reps):
        a = rng.integers(0, 2, n)
        r = (rng.random(n) < mu[a]).astype(float)
        p, t = np.full(n, 0.5), target[a]
        q = np.array([r[a == j].mean() for j in range(2)])  # a reward model fitted on the log
        for e in (ips(r, p, t, n_boot=300, seed=i), snips(r, p, t, n_boot=300, seed=i),
                  doubly_robust(r, p, t, q[a], np.full(n, target @ q), n_boot=300, seed=i)):
            covered[e.estimator] += e.covers(truth)
    for name, c in covered.items():
        assert 0.88 <= c / reps <= 0.995, (name, c / reps)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ips([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="one value per logged row"):
        ips([1.0, 0.0], [0.5], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        ips([], [], [])
    with pytest.raises(ValueError, match="never takes a logged action"):
        snips([1.0], [0.5], [0.0])


def test_evaluate_policy_equals_the_array_estimators() -> None:
    contexts = ["x", "y", "x", "z"]
    actions = ["a", "b", "a", "b"]
    log = [LoggedRow(c, a, p, r) for c, a, p, r in zip(contexts, actions, P, R, strict=True)]
    target = {"x": {"a": 1.0}, "y": {"a": 0.5, "b": 0.5}, "z": {"a": 1.0}}
    q = {("x", "a"): 0.6, ("y", "a"): 0.4, ("y", "b"): 0.2, ("z", "a"): 0.1, ("z", "b"): 0.4}
    report = evaluate_policy(log, lambda c: target[c], lambda c, a: q[(c, a)], n_boot=200)
    tp = [1.0, 0.5, 1.0, 0.0]
    assert report.ips.value == pytest.approx(ips(R, P, tp).value)
    assert report.snips.value == pytest.approx(snips(R, P, tp).value)
    ql, qt = [0.6, 0.2, 0.6, 0.4], [0.6, 0.5 * 0.4 + 0.5 * 0.2, 0.6, 0.1]
    assert report.dr.value == pytest.approx(doubly_robust(R, P, tp, ql, qt).value)
    assert report.n == 4


def test_the_tabular_reward_model_shrinks_towards_the_action_mean() -> None:
    log = [LoggedRow("x", "a", 0.5, 1.0), LoggedRow("x", "a", 0.5, 1.0), LoggedRow("y", "a", 0.5, 0.0),
           LoggedRow("y", "b", 0.5, 0.0)]
    q = TabularRewardModel(key=lambda c: c, shrinkage=1.0).fit(log)
    assert q.predict("x", "a") == pytest.approx((2.0 + 1.0 * (2 / 3)) / 3)
    assert q.predict("z", "a") == pytest.approx(2 / 3)  # an unseen context: the action's mean
    assert q.predict("x", "c") == pytest.approx(0.5)  # an unseen action: the overall mean
