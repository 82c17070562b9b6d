"""Decision points, labels, oracles, splits, fingerprints and metrics on small hand-made frames."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.ingest import simulator as sim
from training import labels as lbl
from training.datasets import fingerprint, time_split
from training.metrics import binary_metrics, expected_calibration_error

T0 = datetime(2026, 10, 1, 12, tzinfo=UTC)


def ts(minutes: float) -> pd.Timestamp:
    return pd.Timestamp(T0 + timedelta(minutes=minutes))


def events(rows: list[tuple[str, str | None, str, float, bool]]) -> pd.DataFrame:
    """(user, session, type, minutes after T0, consent) -> an event frame as ``read_events`` returns it."""
    df = pd.DataFrame([{"event_id": f"e{i}", "user_id": u, "session_id": s, "event_type": t,
                        "event_time": ts(m), "ingest_time": ts(m + 0.01), "consent_analytics": c,
                        "quantity": 1 if t in ("add_to_cart", "remove_from_cart", "purchase") else None}
                       for i, (u, s, t, m, c) in enumerate(rows)])
    for c in ("event_time", "ingest_time"):
        df[c] = df[c].astype("datetime64[us, UTC]")
    return df


LOG = events([
    ("u1", "u1-s0", "page_view", 0, True), ("u1", "u1-s0", "product_view", 1, True),
    ("u1", "u1-s0", "add_to_cart", 2, True), ("u1", "u1-s0", "purchase", 5, True),
    ("u1", "u1-s1", "page_view", 60 * 30, True),            # 30 hours later: outside a 24h window from s0
    ("u2", "u2-s0", "page_view", 3, False), ("u2", "u2-s0", "purchase", 4, False),   # no consent
    ("u3", "u3-s0", "page_view", 10, True), ("u3", "u3-s0", "product_view", 11, True),
    ("u3", None, "login", 12, True),                          # no session: never a decision point
    ("u4", "u4-s0", "page_view", 60 * 40, True),            # the log's last moment
])


def test_decision_points_are_moments_of_consented_sessions() -> None:
    pts = lbl.sample_decision_points(LOG, per_session=0, seed=1)
    assert set(pts["user_id"]) == {"u1", "u3", "u4"}
    assert pts["session_id"].notna().all() and pts["decision_time"].is_monotonic_increasing
    assert len(pts) == 8  # every event of a consented session
    capped = lbl.sample_decision_points(LOG, per_session=2, seed=1)
    assert capped.groupby("session_id").size().max() == 2
    assert set(capped["decision_time"]) <= set(pts["decision_time"])
    again = lbl.sample_decision_points(LOG, per_session=2, seed=1)
    pd.testing.assert_frame_equal(capped, again)
    row = pts[pts["session_id"] == "u1-s0"].iloc[0]
    assert (row["session_start"], row["session_end"]) == (ts(0), ts(5))


def test_purchase_label_looks_strictly_after_the_decision_and_within_the_horizon() -> None:
    pts = lbl.sample_decision_points(LOG, per_session=0, seed=1)
    labelled = lbl.purchase_labels(pts, LOG, timedelta(hours=24)).set_index(["session_id", "decision_time"])
    assert labelled.loc[("u1-s0", ts(0)), "label"] == 1
    assert labelled.loc[("u1-s0", ts(2)), "label"] == 1
    assert labelled.loc[("u1-s0", ts(5)), "label"] == 0      # the purchase itself is not after itself
    assert labelled.loc[("u3-s0", ts(10)), "label"] == 0
    # points whose 24 hours reach past the log's end (40h) are dropped: their label is unknown
    assert ("u1-s1", ts(60 * 30)) not in labelled.index and ("u4-s0", ts(60 * 40)) not in labelled.index
    short = lbl.purchase_labels(pts, LOG, timedelta(minutes=4)).set_index(["session_id", "decision_time"])
    assert short.loc[("u1-s0", ts(0)), "label"] == 0 and short.loc[("u1-s0", ts(2)), "label"] == 1


def test_churn_labels() -> None:
    pts = lbl.sample_decision_points(LOG, per_session=0, seed=1)
    users = pd.DataFrame({"user_id": ["u1", "u3", "u4"], "churn_risk": [0.5, 0.2, 0.1],
                          "churner": [True, False, True],
                          "churn_start": [ts(-60), pd.NaT, ts(60 * 24 * 20)],
                          "churn_stop": [ts(60 * 24 * 3), pd.NaT, ts(60 * 24 * 30)]})
    for c in ("churn_start", "churn_stop"):
        users[c] = pd.to_datetime(users[c], utc=True).astype("datetime64[us, UTC]")
    truth = lbl.Truth(users=users, sessions=pd.DataFrame())
    sim = lbl.churn_labels_simulator(pts, truth, timedelta(days=7)).groupby("user_id")["label"].max()
    assert sim.to_dict() == {"u1": 1, "u3": 0, "u4": 0}
    oracle = lbl.churn_oracle(pts, truth, timedelta(days=7))
    by_user = pd.Series(oracle.to_numpy(), index=pts["user_id"]).groupby(level=0).max()
    # u1 is declining: the share of simulated declines (3d1h and 10d) that end within 7d1h of its start
    assert by_user["u1"] == 0.5
    assert by_user["u3"] == 0.0  # not declining, and the only simulated decline still to start ends in 30 days
    inactive = lbl.churn_labels_inactivity(pts, LOG, timedelta(hours=20)).groupby("session_id")["label"].max()
    # u1 comes back 30 hours after s0: quiet for 20 hours, so churned by that rule; u3 logs in a minute after
    # its session (activity without a session counts); u1-s1 and u4 are too close to the log's end to know
    assert inactive.to_dict() == {"u1-s0": 1, "u3-s0": 0}
    longer = lbl.churn_labels_inactivity(pts, LOG, timedelta(hours=35)).groupby("session_id")["label"].max()
    assert longer.to_dict() == {"u1-s0": 0, "u3-s0": 0}


def test_purchase_oracle_follows_the_cart_state() -> None:
    pts = lbl.sample_decision_points(LOG, per_session=0, seed=1)
    sessions = pd.DataFrame({"session_id": ["u1-s0", "u1-s1", "u3-s0", "u4-s0"], "user_id": ["u1", "u1", "u3", "u4"],
                             "start": [ts(0), ts(1800), ts(10), ts(2400)], "end": [ts(5), ts(1800), ts(11), ts(2400)],
                             "product_views": [1, 0, 1, 0], "p_convert": [0.6, 0.3, 0.2, 0.1],
                             "p_purchase": [0.1, 0.0, 0.02, 0.0]})
    def oracle(session_rate: float) -> pd.Series:
        users = pd.DataFrame({"user_id": ["u1", "u3", "u4"], "churn_risk": 0.1, "churner": False,
                              "churn_start": pd.NaT, "churn_stop": pd.NaT, "purchase_intent": 0.5,
                              "engagement": 0.5, "session_rate": session_rate, "is_new": False, "signup": pd.NaT,
                              "onboarding_dropoff_step": None})
        for c in ("churn_start", "churn_stop", "signup"):
            users[c] = pd.to_datetime(users[c], utc=True).astype("datetime64[us, UTC]")
        truth = lbl.Truth(users=users, sessions=sessions)
        return pd.Series(lbl.purchase_oracle(pts, LOG, truth, timedelta(hours=24)).to_numpy(),
                         index=pd.MultiIndex.from_frame(pts[["session_id", "decision_time"]]))

    o = oracle(0.0)  # no later sessions expected: the visit in progress alone
    assert o[("u1-s0", ts(0))] == pytest.approx(0.1)     # before any view: p_purchase of the session
    assert o[("u1-s0", ts(2))] == pytest.approx(0.6)     # item in the cart: p_convert
    assert o[("u1-s0", ts(5))] == 0.0                     # bought already
    assert o[("u3-s0", ts(11))] == 0.0                    # no views left, empty cart
    # two sessions a day expected (a Thursday and a Friday: no weekend), each buying with the
    # simulator's expected chance: the later ones add 1 - exp(-2 p) to a moment with nothing left now
    p = float(sim.expected_session_purchase(engagement=np.array([0.5]), intent=np.array([0.5]),
                                            churning=np.array([False]))[0])
    o2 = oracle(2.0)
    assert o2[("u3-s0", ts(11))] == pytest.approx(1.0 - np.exp(-2.0 * p))
    assert o2[("u1-s0", ts(2))] == pytest.approx(1.0 - 0.4 * np.exp(-2.0 * p))


def test_time_split_keeps_an_embargo_and_test_is_later() -> None:
    times = pd.Series(pd.date_range(T0, periods=100, freq="h", tz="UTC"))
    split = time_split(times, test_fraction=0.3, embargo=timedelta(hours=5))
    assert len(split.test) == 30 and len(split.train) == 65
    assert times.iloc[split.train].max() < times.iloc[split.test].min() - timedelta(hours=4)
    with pytest.raises(ValueError, match="simulate more days"):
        time_split(times, test_fraction=0.3, embargo=timedelta(days=30))


def test_fingerprint_changes_with_any_value_and_only_then() -> None:
    df = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 0.25, 1.0], "c": [["x"], [], ["y", "z"]]})
    h = fingerprint(df, ["a", "b", "c"])
    assert h == fingerprint(df.copy(), ["a", "b", "c"]) and len(h) == 64
    assert h != fingerprint(df.assign(b=[0.5, 0.25, 1.5]), ["a", "b", "c"])
    assert h != fingerprint(df.assign(c=[["x"], [], ["z", "y"]]), ["a", "b", "c"])


def test_metrics() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(int)
    m = binary_metrics(y, p)
    assert m["ece"] < 0.02 and 0.7 < m["auc"] < 0.9
    assert expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.15
    assert binary_metrics(y, p[::-1].copy())["auc"] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="AUC is undefined"):
        binary_metrics(np.zeros(5), np.full(5, 0.1))
