"""Decision points, labels and the simulator's best-possible scores.

Decision points are drawn the way serving is queried: at the moments of events
inside sessions (a request arrives with a page view, a cart add, ...). A point at
time ``t`` is a question asked at ``t``: features may only use what arrived by
``t``, and the label looks strictly after ``t``.

Labels:

* purchase propensity: the user buys within ``horizon`` after ``t``
  (``t < purchase.event_time <= t + horizon``), read from the event log;
* churn, ``label="simulator"``: the user stops for good within ``horizon`` after
  ``t`` (the simulator's ``churn_stop``, from the truth tables);
  ``label="inactivity"``: no activity of the user for ``inactivity`` after the end
  of the session of ``t`` (from the event log; what a real log allows).

Points whose label window reaches past the end of the log are dropped (their label
is not known yet). Only users who consented to analytics get decision points: the
feature pipeline drops everyone else's events, and so does serving.

The oracle scores are what the simulator knew when it drew the outcomes; their AUC
on the holdout is the yardstick for the models (see :func:`purchase_oracle` and
:func:`churn_oracle`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from pipelines.ingest import simulator as sim

DECISION_TIME: Final = "decision_time"
LABEL: Final = "label"
ORACLE: Final = "oracle_score"
EVENT_COLUMNS: Final = ("event_id", "user_id", "session_id", "event_type", "event_time", "ingest_time",
                        "consent_analytics", "quantity")
_US = "datetime64[us, UTC]"


@dataclass(frozen=True)
class Truth:
    """The simulator's latent truth tables (``truth/`` beside the events)."""

    users: pd.DataFrame
    sessions: pd.DataFrame
    onboarding_steps: int = 6

    @classmethod
    def read(cls, truth_dir: str | Path) -> Truth:
        path = Path(truth_dir)
        for name in ("users.parquet", "sessions.parquet"):
            if not (path / name).exists():
                raise FileNotFoundError(f"no simulator truth {path / name}: simulate first "
                                        "(kairos simulate)")
        users = pd.read_parquet(path / "users.parquet", columns=[
            "user_id", "churn_risk", "churner", "churn_start", "churn_stop", "purchase_intent", "engagement",
            "session_rate", "is_new", "signup", "onboarding_dropoff_step"])
        sessions = pd.read_parquet(path / "sessions.parquet", columns=[
            "session_id", "user_id", "start", "end", "product_views", "p_convert", "p_purchase"])
        for df, cols in ((users, ("churn_start", "churn_stop", "signup")), (sessions, ("start", "end"))):
            for c in cols:
                df[c] = df[c].astype(_US)
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        return cls(users=users, sessions=sessions, onboarding_steps=int(config.get("onboarding_steps", 6)))


def read_events(events_dir: str | Path) -> pd.DataFrame:
    """The columns labels need, each event once (its first arrival), times ``datetime64[us, UTC]``."""
    dataset = ds.dataset(str(events_dir), format="parquet", partitioning="hive")
    df = dataset.to_table(columns=list(EVENT_COLUMNS)).to_pandas()
    if df.empty:
        raise ValueError(f"the event log {events_dir} is empty")
    for c in ("event_time", "ingest_time"):
        df[c] = pd.to_datetime(df[c], utc=True).astype(_US)
    df = df.sort_values(["ingest_time", "event_id"], kind="stable").drop_duplicates("event_id", keep="first")
    return df.reset_index(drop=True)


def log_end(events: pd.DataFrame) -> pd.Timestamp:
    """The latest event time in the log: no label window may reach past it."""
    return pd.Timestamp(events["event_time"].max())


def sample_decision_points(events: pd.DataFrame, *, per_session: int, seed: int) -> pd.DataFrame:
    """Up to ``per_session`` moments per session (0: all), at the event times of the session.

    Sessions of users without analytics consent are skipped. The first event of a
    session is a candidate like any other: a point there sees only earlier sessions.
    Returns ``user_id, session_id, decision_time, session_start, session_end``, sorted
    by time, one row per (session, moment).
    """
    consented = events["consent_analytics"].fillna(False).astype(bool)
    ev = events.loc[consented & events["session_id"].notna(), ["user_id", "session_id", "event_time"]]
    ev = ev.drop_duplicates(["session_id", "event_time"])
    bounds = ev.groupby("session_id")["event_time"].agg(session_start="min", session_end="max")
    if per_session > 0:
        rng = np.random.default_rng(seed)
        ev = ev.assign(_r=rng.random(len(ev)))
        ev = ev[ev.groupby("session_id")["_r"].rank(method="first") <= per_session].drop(columns="_r")
    out = ev.rename(columns={"event_time": DECISION_TIME}).join(bounds, on="session_id")
    return out.sort_values([DECISION_TIME, "session_id"], kind="stable").reset_index(drop=True)


def _next_time_after(points: pd.DataFrame, at: str, times: pd.DataFrame, time_col: str) -> pd.Series:
    """Per point, the earliest ``times[time_col]`` of the same user strictly after ``points[at]`` (NaT if none)."""
    left = points[["user_id", at]].reset_index().sort_values(at, kind="stable")
    right = times[["user_id", time_col]].rename(columns={time_col: "_next"}).sort_values("_next", kind="stable")
    right = right.assign(_key=right["_next"])
    merged = pd.merge_asof(left, right, left_on=at, right_on="_key", by="user_id", direction="forward",
                           allow_exact_matches=False)
    return merged.set_index("index")["_next"].reindex(points.index)


def purchase_labels(points: pd.DataFrame, events: pd.DataFrame, horizon: timedelta) -> pd.DataFrame:
    """``points`` whose window ``(t, t + horizon]`` is inside the log, with ``label`` = a purchase in it."""
    end = log_end(events)
    kept = points[points[DECISION_TIME] + horizon <= end].copy()
    purchases = events.loc[events["event_type"] == "purchase", ["user_id", "event_time"]]
    nxt = _next_time_after(kept, DECISION_TIME, purchases, "event_time")
    kept[LABEL] = (nxt.notna() & (nxt - kept[DECISION_TIME] <= horizon)).astype("int64")
    return kept.reset_index(drop=True)


def churn_labels_simulator(points: pd.DataFrame, truth: Truth, horizon: timedelta) -> pd.DataFrame:
    """``label`` = the user stops for good (the simulator's ``churn_stop``) within ``horizon`` after ``t``."""
    users = truth.users.set_index("user_id")
    stop = points["user_id"].map(users["churn_stop"])
    churner = points["user_id"].map(users["churner"]).fillna(False).astype(bool)
    if points["user_id"].map(users["churner"]).isna().any():
        missing = sorted(set(points["user_id"]) - set(users.index))[:5]
        raise ValueError(f"users missing from the truth tables, e.g. {missing}: is the truth from another run?")
    out = points.copy()
    out[LABEL] = (churner & (stop <= out[DECISION_TIME] + horizon)).astype("int64")
    return out.reset_index(drop=True)


def churn_labels_inactivity(points: pd.DataFrame, events: pd.DataFrame, inactivity: timedelta) -> pd.DataFrame:
    """``label`` = no event of the user in ``(session_end, session_end + inactivity]``; needs that inside the log."""
    end = log_end(events)
    kept = points[points["session_end"] + inactivity <= end].copy()
    nxt = _next_time_after(kept, "session_end", events[["user_id", "event_time"]], "event_time")
    kept[LABEL] = (nxt.isna() | (nxt - kept["session_end"] > inactivity)).astype("int64")
    return kept.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ oracles
def purchase_oracle(points: pd.DataFrame, events: pd.DataFrame, truth: Truth, horizon: timedelta) -> pd.Series:
    """The probability of a purchase in ``(t, t + horizon]`` as the simulator drew it, given its state at ``t``.

    The simulator draws each product view into the cart with probability ``q``
    (per session), and converts a session whose cart is not empty at its end with
    the session's true ``p_convert``; the truth gives ``p_purchase = (1 - (1 - q)^n)
    p_convert`` for the ``n`` product views of the session, from which ``q`` follows.
    At ``t`` inside session ``s``:

    * already bought in ``s``: 0 for ``s``;
    * items in the cart by ``t`` (adds minus removes up to ``t``): ``p_convert``;
    * else ``(1 - (1 - q)^m) p_convert`` for the ``m`` product views of ``s`` after ``t``;

    Sessions that start after ``t`` have not been drawn yet at ``t``: the oracle
    takes their expected number from the user's latent daily session rate and their
    chance to buy from the user's latent intent and engagement (the functions the
    simulator draws with), not the sessions that did happen; the score is
    ``1 - (1 - p_now) exp(-expected purchases later)``. The visit in progress is
    read from the truth as it was planned (its product views still to come), and the
    small chance that a cart is emptied again is ignored, so it is a yardstick for
    what the latent state allows rather than a strict bound.
    """
    sess = truth.sessions.set_index("session_id")
    ev = events[events["session_id"].isin(points["session_id"].unique())]
    ev = ev[["session_id", "event_type", "event_time", "quantity"]]
    p_convert = points["session_id"].map(sess["p_convert"]).to_numpy(float)
    p_purchase = points["session_id"].map(sess["p_purchase"]).to_numpy(float)
    n_pv = points["session_id"].map(sess["product_views"]).to_numpy(float)
    if np.isnan(p_convert).any():
        raise ValueError("sessions missing from the truth tables: is the truth from another run?")

    # the session's state at t, from its own events up to t
    qty = ev["quantity"].fillna(0).to_numpy(float)
    sign = np.select([ev["event_type"] == "add_to_cart", ev["event_type"] == "remove_from_cart"], [1.0, -1.0], 0.0)
    ev = ev.assign(_cart=qty * sign, _pv=(ev["event_type"] == "product_view").astype(float),
                   _buy=(ev["event_type"] == "purchase").astype(float))
    state = points[["session_id", DECISION_TIME]].reset_index().merge(ev, on="session_id", how="left")
    before = state["event_time"] <= state[DECISION_TIME]
    agg = state.assign(cart=state["_cart"].where(before, 0.0), bought=state["_buy"].where(before, 0.0),
                       pv_after=state["_pv"].where(~before & state["event_time"].notna(), 0.0))
    agg = agg.groupby("index")[["cart", "bought", "pv_after"]].sum().reindex(points.index, fill_value=0.0)

    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.clip(np.where(p_convert > 0, p_purchase / p_convert, 0.0), 0.0, 1.0)
        q = np.where(n_pv > 0, 1.0 - (1.0 - ratio) ** (1.0 / np.maximum(n_pv, 1.0)), 0.0)
    later_cart = 1.0 - (1.0 - q) ** agg["pv_after"].to_numpy(float)
    p_now = np.where(agg["bought"].to_numpy() > 0, 0.0,
                     np.where(agg["cart"].to_numpy() > 0, p_convert, later_cart * p_convert))

    # later sessions: not yet drawn at t, so their expected number and their expected chance to buy
    expected = _expected_later_purchases(points, truth, horizon)
    return pd.Series(1.0 - (1.0 - p_now) * np.exp(-expected), index=points.index, name=ORACLE)


def _expected_later_purchases(points: pd.DataFrame, truth: Truth, horizon: timedelta) -> np.ndarray:
    """Per point, the expected number of purchases in sessions that start in ``(t, t + horizon]``.

    Sessions start as a Poisson process with the simulator's daily rate (``daily_session_rates``,
    from the user's latent traits), and each buys with ``expected_session_purchase``; the count of
    buying sessions is Poisson with the product as its mean. Starts are taken as even within a day.
    """
    users = truth.users.reset_index(drop=True)
    row = pd.Series(np.arange(len(users)), index=users["user_id"])
    t = points[DECISION_TIME].to_numpy("datetime64[us]").astype(np.int64)
    h = int(horizon / timedelta(microseconds=1))
    day = sim.DAY_US
    first, last = (int(t.min()) // day) * day, ((int(t.max()) + h) // day + 1) * day
    day0 = np.arange(first, last + 1, day, dtype=np.int64)

    def times(c: str) -> np.ndarray:
        out: np.ndarray = users[c].to_numpy("datetime64[us]").astype(np.int64)
        return np.where(users[c].isna().to_numpy(), 0, out)  # only read where the user has the time

    is_new = users["is_new"].astype(bool).to_numpy()
    dropoff = users["onboarding_dropoff_step"].fillna(-1).to_numpy(np.int64)
    rates = sim.daily_session_rates(
        day0, session_rate=users["session_rate"].to_numpy(float), is_new=is_new,
        signup=times("signup"),
        after_onboarding=sim.onboarding_return_factor(dropoff, truth.onboarding_steps),
        churner=users["churner"].astype(bool).to_numpy(), churn_start=times("churn_start"),
        churn_stop=times("churn_stop"))
    u = row.reindex(points["user_id"]).to_numpy()
    if np.isnan(u.astype(float)).any():
        raise ValueError("users missing from the truth tables: is the truth from another run?")
    u = u.astype(np.int64)
    # the share of each day inside (t, t + h]
    lo, hi = t[:, None], t[:, None] + h
    overlap = np.clip(np.minimum(hi, day0[None, :] + day) - np.maximum(lo, day0[None, :]), 0, day) / day
    sessions = (rates[u] * overlap).sum(axis=1)
    churning = users["churner"].astype(bool).to_numpy()[u] & (times("churn_start")[u] <= t)
    p_session = sim.expected_session_purchase(engagement=users["engagement"].to_numpy(float)[u],
                                              intent=users["purchase_intent"].to_numpy(float)[u], churning=churning)
    out: np.ndarray = sessions * p_session
    return out


def churn_oracle(points: pd.DataFrame, truth: Truth, horizon: timedelta) -> pd.Series:
    """The probability that the user stops for good within ``horizon``, given the simulator's state at ``t``.

    Whether a user churns is drawn with probability ``churn_risk``; a churner's
    decline starts at ``churn_start`` and its activity ends at ``churn_stop``. At
    ``t`` a churner past ``churn_start`` is declining (its behaviour shows it), so
    its probability is the share of simulated churners whose decline lasted at most
    ``t + horizon - churn_start``. Anyone else (a churner before the decline, or a
    user who never churns) looks alike: ``P(churner | not declining by t)`` from
    ``churn_risk``, times the share of churners who start after ``t`` and stop by
    ``t + horizon``. The (start, stop) distribution is the empirical one of all
    simulated churners.
    """
    users = truth.users.set_index("user_id")
    churners = truth.users[truth.users["churner"].astype(bool)]
    start_j = churners["churn_start"].to_numpy("datetime64[us]").astype(np.int64)
    stop_j = churners["churn_stop"].to_numpy("datetime64[us]").astype(np.int64)
    duration_j = np.sort(stop_j - start_j)
    t = points[DECISION_TIME].to_numpy("datetime64[us]").astype(np.int64)
    h = int(horizon / timedelta(microseconds=1))
    risk = points["user_id"].map(users["churn_risk"]).to_numpy(float)
    churner = points["user_id"].map(users["churner"]).fillna(False).to_numpy(bool)
    start = points["user_id"].map(users["churn_start"]).to_numpy("datetime64[us]").astype(np.int64)
    declining = churner & (start <= t)
    if len(duration_j) == 0:
        return pd.Series(np.zeros(len(points)), index=points.index, name=ORACLE)
    # declining: P(duration <= t + h - start)
    p_declining = np.searchsorted(duration_j, t + h - start, side="right") / len(duration_j)
    # not declining: Bayes over "not started by t", then "starts after t and stops by t + h"
    not_started = (start_j[None, :] > t[:, None]) if len(t) * len(start_j) <= 5e7 else None
    if not_started is None:  # large runs: the same sums, chunked
        s_share = np.empty(len(t))
        a_share = np.empty(len(t))
        for lo in range(0, len(t), 20_000):
            tt = t[lo:lo + 20_000, None]
            ns = start_j[None, :] > tt
            s_share[lo:lo + 20_000] = ns.mean(axis=1)
            a_share[lo:lo + 20_000] = (ns & (stop_j[None, :] <= tt + h)).mean(axis=1)
    else:
        s_share = not_started.mean(axis=1)
        a_share = (not_started & (stop_j[None, :] <= t[:, None] + h)).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_churner = np.where(s_share > 0, risk * s_share / (risk * s_share + (1.0 - risk)), 0.0)
        p_quiet = np.where(s_share > 0, p_churner * a_share / s_share, 0.0)
    return pd.Series(np.where(declining, p_declining, p_quiet), index=points.index, name=ORACLE)
