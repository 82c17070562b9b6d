"""A behavioural-event simulator that stands in for real traffic.

Users carry latent traits that drive what they do, so labels carry real signal:

* ``purchase_intent`` (Beta(2, 5)) sets how often a product view goes into the cart
  (``p_cart``) and how often a session with a cart buys (``p_convert``); both true
  probabilities are written to the truth, per user and per session;
* ``churn_risk`` (a Beta with mean ``churn_fraction``) decides who churns; after a
  churner's ``churn_start`` sessions thin out, logins fall and fail more, help
  searches rise (and turn to "cancel subscription"), feature uses fail more, and at
  ``churn_stop`` activity ends;
* users who sign up during the period go through an onboarding flow
  (``onboarding_step`` 0..N-1) in their first session and drop off at a step that
  depends on their engagement; drop-outs are less active afterwards;
* each user has category affinities (Dirichlet) over a catalogue of products with
  category prices and popularity, 1-3 devices, a country (and its time zone, which
  shapes the hour of day of sessions) and constant consent flags.

Sessions follow the 30-minute rule: inside a session no two events are more than 25
minutes apart, and a user's next session starts more than 31 minutes after the last
event of the previous one. Carts convert (``checkout_start`` then ``purchase`` with
the cart's amount and quantity) or are abandoned.

Delivery is imperfect on purpose, at configurable rates: duplicates (the same
``event_id`` and payload re-sent 1 s to 10 min later), out-of-order arrivals
(delayed by 20 s up to 0.9 x the allowed lateness) and late arrivals (beyond the
allowed lateness by 1 minute to 5 hours). The latent truth is written beside the
events (``truth/users.parquet``, ``sessions.parquet``, ``anomalies.parquet``,
``catalogue.parquet``, ``config.json``), so model quality can be compared with the
best possible.

Reproducibility: users are simulated in blocks of ``block_users``; each block draws
from its own numpy ``Generator`` seeded by ``(seed, block)``. The events therefore
depend only on the config, not on the chunking or the number of worker processes,
and the same config writes byte-identical parquet files (see :func:`simulate_to_dir`).

Everything inside a block is vectorised with numpy; strings are built by Arrow
(``take`` from small vocabularies, element-wise joins), never one event at a time.

Why this module is over 600 lines: it is one generative model. The vocabularies,
the event-type codes, the latent rates and the block generator share their arrays
and constants, and ``training.labels`` reads the same latent-rate functions as the
oracle; split apart, one model would be spread over modules that only make sense
together.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import repeat
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from conf.settings import Settings
from features.events import SCHEMA_VERSION, DeviceType, EventType
from features.semantics import to_us
from pipelines.ingest.eventlog import EVENT_SCHEMA, conform, encode_json, write_parquet
from pipelines.store.offline import PARTITION

Arr = npt.NDArray[Any]

# ----------------------------------------------------------------------------------- vocabularies
CATEGORIES: Final = ("shoes", "bags", "hats", "tops", "jeans", "jackets", "watches", "beauty", "home", "toys")
# log-mean unit price and share of the catalogue, per category
_CATEGORY_LOG_PRICE: Final = (4.3, 4.2, 3.1, 3.3, 3.9, 4.6, 5.2, 2.9, 3.6, 3.2)
_CATEGORY_SHARE: Final = (0.14, 0.08, 0.06, 0.16, 0.1, 0.08, 0.05, 0.12, 0.13, 0.08)
COUNTRIES: Final = ("DE", "FR", "GB", "NL", "ES", "IT", "US", "PL")
_COUNTRY_SHARE: Final = (0.22, 0.14, 0.14, 0.07, 0.09, 0.09, 0.18, 0.07)
_COUNTRY_UTC_OFFSET_H: Final = (1, 1, 0, 1, 1, 1, -5, 1)
DEVICE_TYPES: Final = tuple(d.value for d in DeviceType)  # desktop, mobile, tablet, app
_PRIMARY_DEVICE_SHARE: Final = (0.35, 0.45, 0.07, 0.13)
_OTHER_DEVICE_SHARE: Final = (0.3, 0.35, 0.2, 0.15)
# share of sessions starting in each local hour 0..23
_HOUR_WEIGHT: Final = (1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.2, 3, 3.2, 3.3, 3.6, 4.2, 4.2, 3.6, 3.4, 3.5, 3.9,
                       4.6, 5.4, 5.8, 5.2, 3.6, 2)
GENERAL_PAGES: Final = ("/", "/sale", "/new", "/account", "/stores", "/blog")
FORM_FLOWS: Final = ("address", "payment", "newsletter", "profile")
FORM_STEPS: Final = 3
ONBOARDING_FLOW: Final = "signup"
PAGES: Final = (*GENERAL_PAGES, *(f"/c/{c}" for c in CATEGORIES), *(f"/forms/{f}" for f in FORM_FLOWS), "/help")
_PAGE_CATEGORY0: Final = len(GENERAL_PAGES)
_PAGE_FORM0: Final = _PAGE_CATEGORY0 + len(CATEGORIES)
_PAGE_HELP: Final = len(PAGES) - 1
FLOWS: Final = (ONBOARDING_FLOW, *FORM_FLOWS)
FEATURES: Final = ("wishlist", "compare", "size_guide", "price_alert", "reorder", "gift_wrap")
CHANNELS: Final = ("email", "whatsapp", "link", "facebook")
_SEARCH_TEMPLATES: Final = ("{}", "cheap {}", "{} sale", "best {}", "new {}", "black {}", "{} gift")
HELP_QUERIES: Final = ("track order", "return policy", "delivery time", "change address", "size guide",
                       "payment methods")
CHURN_HELP_QUERIES: Final = ("cancel subscription", "delete account", "refund", "close account",
                             "unsubscribe emails", "complaint")
QUERIES: Final = (*(t.format(c) for c in CATEGORIES for t in _SEARCH_TEMPLATES), *HELP_QUERIES, *CHURN_HELP_QUERIES)
_QUERY_HELP0: Final = len(CATEGORIES) * len(_SEARCH_TEMPLATES)
VIDEOS: Final = 80

# ----------------------------------------------------------------------------------- behaviour constants
SESSION_GAP: Final = timedelta(minutes=30)
US: Final = 1_000_000
DAY_US: Final = 86_400 * US
_MAX_IDLE_S: Final = 25 * 60.0  # longest pause inside a session (< SESSION_GAP)
_BETWEEN_SESSIONS_US: Final = int(SESSION_GAP.total_seconds() + 60) * US  # least idle time between sessions
P_REMOVE: Final = 0.12  # an added cart line is removed again (whole line) later in the session
P_BUY: Final = 0.85  # a started checkout ends in a purchase
_QTY_SHARE: Final = (0.8, 0.15, 0.05)  # quantity 1, 2, 3 per cart line

_TYPES: Final = tuple(EventType)
_CODE: Final = {t: i for i, t in enumerate(_TYPES)}
PV, ATC, RFC = _CODE[EventType.PRODUCT_VIEW], _CODE[EventType.ADD_TO_CART], _CODE[EventType.REMOVE_FROM_CART]
CHK, PUR = _CODE[EventType.CHECKOUT_START], _CODE[EventType.PURCHASE]
PAGE, SCROLL, VIDEO = _CODE[EventType.PAGE_VIEW], _CODE[EventType.SCROLL], _CODE[EventType.VIDEO_PROGRESS]
SEARCH, SHARE = _CODE[EventType.SEARCH], _CODE[EventType.SHARE]
LOGIN, HELP, FEAT = _CODE[EventType.LOGIN], _CODE[EventType.HELP_SEARCH], _CODE[EventType.FEATURE_USE]
ONB, FORM = _CODE[EventType.ONBOARDING_STEP], _CODE[EventType.FORM_STEP]
# the browse events that are neither product views nor help searches, and their mix
_OTHER_CODES: Final = np.array([PAGE, SEARCH, VIDEO, SHARE, FEAT, FORM], dtype=np.int8)
_OTHER_SHARE: Final = (0.46, 0.2, 0.06, 0.05, 0.17, 0.06)
# pause after an event, seconds: loc + scale * Exp(1) (a page view: its dwell time + 1)
_GAP_LOC: Final = np.zeros(len(_TYPES))
_GAP_SCALE: Final = np.zeros(len(_TYPES))
for _code, (_loc, _scale) in {PV: (3, 30), ATC: (2, 10), RFC: (2, 12), CHK: (15, 60), PUR: (1, 3), PAGE: (1, 0),
                              SCROLL: (1, 8), VIDEO: (15, 30), SEARCH: (2, 12), SHARE: (2, 10), LOGIN: (2, 6),
                              HELP: (5, 45), FEAT: (2, 20), ONB: (5, 25), FORM: (5, 25)}.items():
    _GAP_LOC[_code], _GAP_SCALE[_code] = _loc, _scale

ANOMALY_KINDS: Final = ("duplicate", "out_of_order", "late")
_TS: Final = pa.timestamp("us", tz="UTC")
_STREAM_CATALOGUE, _STREAM_BLOCK = 1, 2  # seed-sequence tags, so the streams never overlap


def _cum(weights: Iterable[float]) -> Arr:
    w = np.asarray(tuple(weights), dtype=np.float64)
    c = np.cumsum(w / w.sum())
    c[-1] = 1.0
    return c


_HOUR_CUM, _OTHER_CUM, _QTY_CUM = _cum(_HOUR_WEIGHT), _cum(_OTHER_SHARE), _cum(_QTY_SHARE)
_COUNTRY_CUM, _CATEGORY_CUM = _cum(_COUNTRY_SHARE), _cum(_CATEGORY_SHARE)
_PRIMARY_DEVICE_CUM, _OTHER_DEVICE_CUM = _cum(_PRIMARY_DEVICE_SHARE), _cum(_OTHER_DEVICE_SHARE)


def _vocab(values: Iterable[str]) -> pa.Array:
    return pa.array(list(values), pa.string())


_V_TYPES, _V_CATEGORIES, _V_COUNTRIES = _vocab(t.value for t in _TYPES), _vocab(CATEGORIES), _vocab(COUNTRIES)
_V_DEVICE_TYPES, _V_PAGES, _V_FLOWS = _vocab(DEVICE_TYPES), _vocab(PAGES), _vocab(FLOWS)
_V_FEATURES, _V_CHANNELS, _V_QUERIES = _vocab(FEATURES), _vocab(CHANNELS), _vocab(QUERIES)
_V_VIDEOS, _V_KINDS = _vocab(f"v{i:03d}" for i in range(VIDEOS)), _vocab(ANOMALY_KINDS)



# ----------------------------------------------------------------------------------- latent rates
# The generator draws from these, and the training oracle (training.labels) reads the same expectations, so
# the yardstick and the simulation cannot drift apart.
def onboarding_return_factor(dropoff: np.ndarray, n_steps: int) -> np.ndarray:
    """Session-rate factor after signup: users who left onboarding at step ``dropoff`` come back less (-1: finished)."""
    out: np.ndarray = np.where(dropoff >= 0, 0.3 + 0.5 * dropoff / n_steps, 1.0)
    return out


def daily_session_rates(day0: np.ndarray, *, session_rate: np.ndarray, is_new: np.ndarray, signup: np.ndarray,
                        after_onboarding: np.ndarray, churner: np.ndarray, churn_start: np.ndarray,
                        churn_stop: np.ndarray) -> np.ndarray:
    """Expected sessions per (user, UTC day starting at ``day0`` us): weekday, onboarding, churn decay, signup.

    Times are microseconds since the epoch; the result has shape ``(users, days)``.
    """
    mid = day0 + DAY_US // 2
    weekday = ((day0 // DAY_US) + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    weekend = np.where(weekday >= 5, 1.2, 1.0)
    rate = session_rate[:, None] * weekend[None, :]
    after_signup = is_new[:, None] & (mid[None, :] > signup[:, None])
    rate = np.where(after_signup, rate * after_onboarding[:, None], rate)
    churning_day = churner[:, None] & (mid[None, :] >= churn_start[:, None])
    decay = 0.55 * np.exp(-(mid[None, :] - churn_start[:, None]) / (4.0 * DAY_US))
    rate = np.where(churning_day, rate * decay, rate)
    rate = np.where(churner[:, None] & (mid[None, :] >= churn_stop[:, None]), 0.0, rate)
    signed_up = np.clip((day0[None, :] + DAY_US - signup[:, None]) / DAY_US, 0.0, 1.0)
    out: np.ndarray = np.where(is_new[:, None], rate * signed_up, rate)
    return out


def cart_probability(intent: np.ndarray) -> np.ndarray:
    """A product view goes into the cart with this probability."""
    out: np.ndarray = 0.01 + 0.2 * intent
    return out


def convert_probability(intent: np.ndarray) -> np.ndarray:
    """A session whose cart is not empty at its end buys with this probability."""
    out: np.ndarray = np.minimum(0.05 + 0.9 * intent**1.3, P_BUY)
    return out


def browse_rate(engagement: np.ndarray, churning: np.ndarray, onboarding: np.ndarray | bool = False) -> np.ndarray:
    """A session has ``1 + Poisson(browse_rate)`` browse events."""
    out: np.ndarray = (2.0 + 11.0 * engagement) * np.where(churning, 0.5, 1.0) * np.where(onboarding, 0.5, 1.0)
    return out


def help_share(churning: np.ndarray, days_churning: np.ndarray) -> np.ndarray:
    """A browse event is a help search with this probability: it grows over a churner's first two days."""
    out: np.ndarray = np.where(churning, 0.06 + 0.14 * np.minimum(days_churning / 2.0, 1.0), 0.006)
    return out


def product_view_share(intent: np.ndarray) -> np.ndarray:
    """A browse event that is not a help search is a product view with this probability."""
    out: np.ndarray = 0.30 + 0.25 * intent
    return out


def expected_session_purchase(*, engagement: np.ndarray, intent: np.ndarray, churning: np.ndarray) -> np.ndarray:
    """The probability that a session not yet begun ends in a purchase, before its length is drawn.

    A session has ``nb = 1 + Poisson(lam)`` browse events, each a product view with
    probability ``pi``, so ``n_pv = Bernoulli(pi) + Poisson(lam pi)``; each view goes
    into the cart (and stays) with ``q``, and a session with a cart buys with
    ``p_convert``: ``E[1 - (1 - q)^n_pv] p_convert = (1 - (1 - pi q) e^(-lam pi q)) p_convert``.
    A churning session is the first day's (the help-search share grows later).
    """
    lam = browse_rate(engagement, churning)
    pi = (1.0 - help_share(churning, np.zeros_like(engagement))) * product_view_share(intent)
    q = cart_probability(intent) * np.where(churning, 0.6, 1.0) * (1.0 - P_REMOVE)
    p_convert = convert_probability(intent) * np.where(churning, 0.6, 1.0)
    out: np.ndarray = (1.0 - (1.0 - pi * q) * np.exp(-lam * pi * q)) * p_convert
    return out


# ----------------------------------------------------------------------------------- config and results
@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Everything that determines the simulated events: the same config gives the same events."""

    seed: int = 7
    users: int = 2000
    start: datetime = datetime(2026, 10, 1, tzinfo=UTC)
    days: int = 14
    products: int = 500
    duplicate_rate: float = 0.01
    out_of_order_rate: float = 0.05
    late_rate: float = 0.01
    allowed_lateness: timedelta = timedelta(hours=1)
    sessions_per_day: float = 0.95  # scales sessions a day (a user has 0.95 x (0.25 + engagement))
    churn_fraction: float = 0.2  # mean churn_risk: the expected share of churners
    new_user_fraction: float = 0.3  # users who sign up (and onboard) during the period
    onboarding_steps: int = 6
    block_users: int = 1000  # users per random stream: the unit of reproducibility, not of memory

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("start must be timezone-aware UTC")
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        for name in ("duplicate_rate", "out_of_order_rate", "late_rate", "churn_fraction", "new_user_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.late_rate + self.out_of_order_rate > 1.0:
            raise ValueError("late_rate + out_of_order_rate must not exceed 1")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.users < 1 or self.days < 1 or self.block_users < 1:
            raise ValueError("users, days and block_users must be positive")
        if self.products < len(CATEGORIES):
            raise ValueError(f"products must be at least {len(CATEGORIES)} (one per category)")
        if not 1 <= self.onboarding_steps <= 1000:
            raise ValueError("onboarding_steps must be within 1..1000")
        if self.allowed_lateness <= timedelta(0):
            raise ValueError("allowed_lateness must be positive")
        if self.sessions_per_day < 0:
            raise ValueError("sessions_per_day must be >= 0")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SimulationConfig:
        """The ``simulator`` section and ``events.allowed_lateness`` of the settings, then ``overrides``."""
        s = settings.simulator
        base = cls(seed=s.seed, users=s.users, start=s.start, days=s.days, duplicate_rate=s.duplicate_rate,
                   out_of_order_rate=s.out_of_order_rate, late_rate=s.late_rate,
                   allowed_lateness=settings.events.allowed_lateness)
        return replace(base, **overrides)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    @property
    def blocks(self) -> int:
        return -(-self.users // self.block_users)


@dataclass
class SimulationResult:
    """Events (in the event schema) and the latent truth beside them.

    Events are in generation order: by block of users, then day-major (UTC date of
    ``event_time``, then user, session and time); a duplicate copy right after its
    original.
    """

    events: pa.Table
    users: pa.Table
    sessions: pa.Table
    anomalies: pa.Table
    catalogue: pa.Table


@dataclass
class SimulationSummary:
    rows: int
    seconds: float
    rows_per_second: float
    users: int
    sessions: int
    by_type: dict[str, int] = field(default_factory=dict)
    anomalies: dict[str, int] = field(default_factory=dict)
    out_dir: str = ""
    workers: int = 1
    chunks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------- helpers
def _pick(rng: np.random.Generator, cum: Arr, size: int) -> Arr:
    """Indices drawn with the probabilities whose cumulative sums are ``cum``."""
    return np.minimum(np.searchsorted(cum, rng.random(size), side="right"), len(cum) - 1)


def _cumcount(counts: Arr) -> Arr:
    """0, 1, ..., c-1 for each group of ``counts`` (groups laid out one after another)."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    out: Arr = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    return out


def _pick_rows(rng: np.random.Generator, cum_rows: Arr) -> Arr:
    """One index per row of ``cum_rows`` (a row of cumulative probabilities each)."""
    u: Arr = rng.random(int(cum_rows.shape[0]))
    out: Arr = np.minimum((u[:, None] > cum_rows).sum(axis=1), cum_rows.shape[1] - 1)
    return out


def _strings(vocab: pa.Array, idx: Arr) -> pa.Array:
    """``vocab[idx]``, null where ``idx < 0``."""
    return vocab.take(pa.array(idx, type=pa.int32(), mask=idx < 0))


def _floats(values: Arr) -> pa.Array:
    return pa.array(values, type=pa.float64(), mask=np.isnan(values))


def _ints(values: Arr) -> pa.Array:
    return pa.array(values, type=pa.int64(), mask=values < 0)


def _bools(values: Arr) -> pa.Array:
    return pa.array(values == 1, type=pa.bool_(), mask=values < 0)


def _times(us: Arr, mask: Arr | None = None) -> pa.Array:
    return pa.array(us, type=pa.int64(), mask=mask).cast(_TS)


@dataclass(frozen=True)
class _Catalogue:
    """Products ordered by (category, popularity rank): a category's products are contiguous."""

    category: Arr
    price: Arr
    cat_start: Arr
    cat_count: Arr
    product_ids: pa.Array

    def table(self) -> pa.Table:
        n = len(self.price)
        rank = np.arange(n) - self.cat_start[self.category]
        return pa.table({"product_id": self.product_ids, "category": _strings(_V_CATEGORIES, self.category),
                         "price": self.price, "popularity_rank": rank})


@functools.lru_cache(maxsize=8)
def _catalogue(seed: int, products: int) -> _Catalogue:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_CATALOGUE]))
    n_cat = len(CATEGORIES)
    category = np.concatenate([np.arange(n_cat), _pick(rng, _CATEGORY_CUM, products - n_cat)])
    category = np.sort(category)
    log_price = np.asarray(_CATEGORY_LOG_PRICE)[category] + rng.normal(0.0, 0.45, products)
    price = np.floor(np.exp(log_price)) + 0.99  # prices end in .99
    cat_count = np.bincount(category, minlength=n_cat)
    cat_start = np.cumsum(cat_count) - cat_count
    ids = _vocab(f"p{i:05d}" for i in range(products))
    return _Catalogue(category=category, price=price, cat_start=cat_start, cat_count=cat_count, product_ids=ids)


class _Parts:
    """Event components (onboarding, logins, browsing, carts, ...) as parallel numpy columns."""

    COLUMNS: Final = {
        "sess": (np.int64, -1), "key": (np.int64, 0), "etype": (np.int8, -1), "product": (np.int32, -1),
        "qty": (np.int64, -1), "amount": (np.float64, np.nan), "page": (np.int16, -1),
        "dwell": (np.float64, np.nan), "scroll": (np.float64, np.nan), "video": (np.int16, -1),
        "progress": (np.float64, np.nan), "query": (np.int16, -1), "channel": (np.int8, -1),
        "success": (np.int8, -1), "feature": (np.int8, -1), "flow": (np.int8, -1), "step": (np.int64, -1),
        "completed": (np.int8, -1),
    }

    def __init__(self) -> None:
        self.parts: dict[str, list[Arr]] = {name: [] for name in self.COLUMNS}

    def add(self, n: int, **cols: Any) -> None:
        unknown = set(cols) - set(self.COLUMNS)
        if unknown:
            raise KeyError(f"unknown event columns {sorted(unknown)}")
        for name, (dtype, default) in self.COLUMNS.items():
            value = cols.get(name, default)
            arr = np.full(n, value, dtype=dtype) if np.ndim(value) == 0 else np.asarray(value, dtype=dtype)
            self.parts[name].append(arr)

    def build(self) -> dict[str, Arr]:
        return {name: np.concatenate(arrs) for name, arrs in self.parts.items()}


@dataclass
class _Block:
    events: pa.Table
    users: pa.Table
    sessions: pa.Table
    anomalies: pa.Table
    by_type: Arr
    kinds: Arr
    days: dict[int, tuple[int, int]]  # day since the epoch -> (first row, rows) in events


# ----------------------------------------------------------------------------------- one block of users
def _simulate_block(cfg: SimulationConfig, block: int) -> _Block:
    """Users ``block * block_users ...``: traits, sessions, events, delivery; all from one Generator."""
    cat = _catalogue(cfg.seed, cfg.products)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _STREAM_BLOCK, block]))
    first = block * cfg.block_users
    n_users = min(cfg.block_users, cfg.users - first)
    n_days, n_cat, n_onb = cfg.days, len(CATEGORIES), cfg.onboarding_steps
    t0 = to_us(cfg.start)
    span = n_days * DAY_US
    t_end = t0 + span

    # ---- users: latent traits
    intent = rng.beta(2.0, 5.0, n_users)
    engagement = rng.beta(2.5, 2.0, n_users)
    f = cfg.churn_fraction
    churn_risk = rng.beta(2.0, 2.0 * (1.0 - f) / f, n_users) if 0.0 < f < 1.0 else np.full(n_users, f)
    churner = rng.random(n_users) < churn_risk
    is_new = rng.random(n_users) < cfg.new_user_fraction
    signup = t0 + (rng.random(n_users) * 0.5 * span).astype(np.int64)
    churn_start = t0 + ((0.25 + 0.5 * rng.random(n_users)) * span).astype(np.int64)
    churn_start = np.where(is_new, np.maximum(churn_start, signup + 2 * DAY_US), churn_start)
    churn_stop = churn_start + ((3.0 + 7.0 * rng.random(n_users)) * DAY_US).astype(np.int64)
    p_step = 0.55 + 0.43 * engagement  # each onboarding step is completed with this probability
    steps_done = np.minimum(rng.geometric(1.0 - p_step) - 1, n_onb)
    dropoff = np.where(is_new & (steps_done < n_onb), steps_done, -1)
    after_onboarding = onboarding_return_factor(dropoff, n_onb)
    gammas = rng.gamma(0.4, 1.0, (n_users, n_cat)) + 1e-9
    affinity = gammas / gammas.sum(axis=1, keepdims=True)
    cum_affinity = np.cumsum(affinity, axis=1)
    cum_affinity[:, -1] = 1.0
    n_devices = 1 + (rng.random(n_users) < 0.45) + (rng.random(n_users) < 0.15)
    device_type = np.stack([_pick(rng, _PRIMARY_DEVICE_CUM, n_users), _pick(rng, _OTHER_DEVICE_CUM, n_users),
                            _pick(rng, _OTHER_DEVICE_CUM, n_users)], axis=1)
    device_hash = rng.integers(0, 2**62, (n_users, 3), dtype=np.int64)
    country = _pick(rng, _COUNTRY_CUM, n_users)
    consent_analytics = rng.random(n_users) < 0.95
    consent_personalization = consent_analytics & (rng.random(n_users) < 0.88)
    consent_marketing = rng.random(n_users) < 0.55
    p_cart_user = cart_probability(intent)
    p_convert_user = convert_probability(intent)

    # ---- sessions: Poisson per user and day, shaped by weekday, onboarding, churn and signup
    day0 = t0 + np.arange(n_days, dtype=np.int64) * DAY_US
    session_rate = cfg.sessions_per_day * (0.25 + engagement)
    rate = daily_session_rates(day0, session_rate=session_rate, is_new=is_new, signup=signup,
                               after_onboarding=after_onboarding, churner=churner, churn_start=churn_start,
                               churn_stop=churn_stop)
    cell = np.repeat(np.arange(n_users * n_days), rng.poisson(rate).ravel())
    su, sd = cell // n_days, cell % n_days
    hour = _pick(rng, _HOUR_CUM, len(cell))
    local_us = ((hour + rng.random(len(cell))) * 3600 * US).astype(np.int64)
    tz_us = np.asarray(_COUNTRY_UTC_OFFSET_H, dtype=np.int64)[country[su]] * 3600 * US
    start = day0[sd] + (local_us - tz_us) % DAY_US
    early = is_new[su] & (start < signup[su])  # on the signup day: after signing up
    moved = signup[su] + (rng.random(len(cell)) * (day0[sd] + DAY_US - signup[su])).astype(np.int64)
    start = np.where(early, moved, start)
    onb_users = np.flatnonzero(is_new & (signup < t_end))  # the signup session, with the onboarding flow
    s_user = np.concatenate([su, onb_users])
    s_start = np.concatenate([start, signup[onb_users]])
    s_onb = np.concatenate([np.zeros(len(su), bool), np.ones(len(onb_users), bool)])
    order = np.lexsort((~s_onb, s_start, s_user))
    s_user, s_start, s_onb = s_user[order], s_start[order], s_onb[order]
    n_sess = len(s_user)
    eng_s, intent_s = engagement[s_user], intent[s_user]
    churning = churner[s_user] & (s_start >= churn_start[s_user])
    days_churning = np.where(churning, (s_start - churn_start[s_user]) / DAY_US, 0.0)
    others = n_devices[s_user] - 1
    s_slot = np.where((rng.random(n_sess) < 0.7) | (others == 0), 0,
                      1 + (rng.random(n_sess) * np.maximum(others, 1)).astype(np.int64))

    parts = _Parts()
    # ---- onboarding flow: steps 0..dropoff (the last one not completed), or all steps completed
    ob_s = np.flatnonzero(s_onb)
    ob_n = np.where(dropoff[s_user[ob_s]] >= 0, dropoff[s_user[ob_s]] + 1, n_onb)
    es, step = np.repeat(ob_s, ob_n), _cumcount(ob_n)
    parts.add(len(es), sess=es, key=step, etype=ONB, flow=0, step=step, completed=step < steps_done[s_user[es]])
    # ---- logins: most sessions start with one, churners log in less and fail more (then retry)
    has_login = ~s_onb & (rng.random(n_sess) < np.where(churning, 0.3, 0.75))
    failed = has_login & (rng.random(n_sess) < np.where(churning, 0.15, 0.03))
    n_login = has_login.astype(np.int64) + failed
    es, j = np.repeat(np.arange(n_sess), n_login), _cumcount(n_login)
    parts.add(len(es), sess=es, key=n_onb + j, etype=LOGIN, success=~(failed[es] & (j == 0)))
    off = n_onb + 2  # keys of browse slot i: off + 16 i + (0 the event, 1.. its followers, 15 a later removal)

    # ---- browsing: help search (churners), product view (intent) or another engagement event
    nb = 1 + rng.poisson(browse_rate(eng_s, churning, s_onb))
    bs, bi = np.repeat(np.arange(n_sess), nb), _cumcount(nb)
    n_b = len(bs)
    bkey = off + 16 * bi
    u = rng.random((3, n_b))
    p_help = help_share(churning, days_churning)
    btype = np.where(u[0] < p_help[bs], HELP,
                     np.where(u[1] < product_view_share(intent_s)[bs], PV, _OTHER_CODES[_pick(rng, _OTHER_CUM, n_b)]))
    b_user = s_user[bs]
    product = np.full(n_b, -1, np.int32)
    page = np.full(n_b, -1, np.int16)
    dwell = np.full(n_b, np.nan)
    query = np.full(n_b, -1, np.int16)
    channel = np.full(n_b, -1, np.int8)
    success = np.full(n_b, -1, np.int8)
    feature = np.full(n_b, -1, np.int8)
    video = np.full(n_b, -1, np.int16)
    progress = np.full(n_b, np.nan)
    flow = np.full(n_b, -1, np.int8)
    step = np.full(n_b, -1, np.int64)
    completed = np.full(n_b, -1, np.int8)

    i_pv = np.flatnonzero(btype == PV)  # a product of a category the user likes, popular ones more often
    c = _pick_rows(rng, cum_affinity[b_user[i_pv]])
    rank = np.minimum((cat.cat_count[c] * rng.random(len(i_pv)) ** 2).astype(np.int64), cat.cat_count[c] - 1)
    product[i_pv] = cat.cat_start[c] + rank
    i_page = np.flatnonzero(btype == PAGE)  # category pages of liked categories, or general pages
    cat_page = _PAGE_CATEGORY0 + _pick_rows(rng, cum_affinity[b_user[i_page]])
    page[i_page] = np.where(rng.random(len(i_page)) < 0.45, cat_page,
                            (rng.random(len(i_page)) * len(GENERAL_PAGES)).astype(np.int64))
    dwell[i_page] = np.round(np.minimum(rng.gamma(2.0, 12.0 * (0.5 + eng_s[bs[i_page]])), _MAX_IDLE_S - 1), 1)
    i_search = np.flatnonzero(btype == SEARCH)
    q_cat = _pick_rows(rng, cum_affinity[b_user[i_search]])
    query[i_search] = q_cat * len(_SEARCH_TEMPLATES) + (rng.random(len(i_search)) * len(_SEARCH_TEMPLATES)).astype(
        np.int64)
    i_help = np.flatnonzero(btype == HELP)
    churn_query = rng.random(len(i_help)) < np.where(churning[bs[i_help]], 0.75, 0.08)
    query[i_help] = (_QUERY_HELP0 + np.where(churn_query, len(HELP_QUERIES), 0)
                     + (rng.random(len(i_help)) * len(HELP_QUERIES)).astype(np.int64))
    page[i_help] = _PAGE_HELP
    i_share = np.flatnonzero(btype == SHARE)
    channel[i_share] = _pick(rng, _cum((0.35, 0.3, 0.25, 0.1)), len(i_share))
    page[i_share] = (rng.random(len(i_share)) * len(GENERAL_PAGES)).astype(np.int64)
    i_feat = np.flatnonzero(btype == FEAT)
    feature[i_feat] = (rng.random(len(i_feat)) * len(FEATURES)).astype(np.int64)
    success[i_feat] = rng.random(len(i_feat)) < np.where(churning[bs[i_feat]], 0.7, 0.96)
    i_video = np.flatnonzero(btype == VIDEO)  # 25% reached; later milestones are followers
    video[i_video] = (rng.random(len(i_video)) * VIDEOS).astype(np.int64)
    progress[i_video] = 25.0
    i_form = np.flatnonzero(btype == FORM)  # step 0; later steps are followers
    form_flow = (rng.random(len(i_form)) * len(FORM_FLOWS)).astype(np.int64)
    form_steps = np.minimum(rng.geometric(1.0 - (0.6 + 0.35 * eng_s[bs[i_form]])), FORM_STEPS)
    flow[i_form] = 1 + form_flow
    page[i_form] = _PAGE_FORM0 + form_flow
    step[i_form] = 0
    completed[i_form] = (form_steps > 1) | (form_steps == FORM_STEPS)
    parts.add(n_b, sess=bs, key=bkey, etype=btype, product=product, page=page, dwell=dwell, query=query,
              channel=channel, success=success, feature=feature, video=video, progress=progress, flow=flow,
              step=step, completed=completed)

    # ---- followers of browse events
    p_cart = p_cart_user[s_user] * np.where(churning, 0.6, 1.0)
    added = rng.random(len(i_pv)) < p_cart[bs[i_pv]]
    a_i = i_pv[added]
    a_qty = 1 + _pick(rng, _QTY_CUM, len(a_i))
    parts.add(len(a_i), sess=bs[a_i], key=bkey[a_i] + 1, etype=ATC, product=product[a_i], qty=a_qty)
    removed = rng.random(len(a_i)) < P_REMOVE
    r_i = a_i[removed]
    r_slot = bi[r_i] + (rng.random(len(r_i)) * (nb[bs[r_i]] - bi[r_i])).astype(np.int64)
    parts.add(len(r_i), sess=bs[r_i], key=off + 16 * r_slot + 15, etype=RFC, product=product[r_i],
              qty=a_qty[removed])
    shared = i_pv[rng.random(len(i_pv)) < 0.02]
    parts.add(len(shared), sess=bs[shared], key=bkey[shared] + 2, etype=SHARE, product=product[shared],
              channel=_pick(rng, _cum((0.35, 0.3, 0.25, 0.1)), len(shared)))
    scrolled = i_page[rng.random(len(i_page)) < 0.5]
    depth = rng.beta(2.0, 2.0, len(scrolled)) * 100.0 * (0.5 + eng_s[bs[scrolled]])
    parts.add(len(scrolled), sess=bs[scrolled], key=bkey[scrolled] + 1, etype=SCROLL, page=page[scrolled],
              scroll=np.round(np.minimum(depth, 100.0), 1))
    milestones = np.minimum(rng.geometric(1.0 - (0.45 + 0.4 * eng_s[bs[i_video]])), 4)
    vi, j = np.repeat(i_video, milestones - 1), 1 + _cumcount(milestones - 1)
    parts.add(len(vi), sess=bs[vi], key=bkey[vi] + j, etype=VIDEO, video=video[vi], progress=25.0 * (j + 1))
    fi, j = np.repeat(np.arange(len(i_form)), form_steps - 1), 1 + _cumcount(form_steps - 1)
    parts.add(len(fi), sess=bs[i_form[fi]], key=bkey[i_form[fi]] + j, etype=FORM, flow=1 + form_flow[fi],
              page=_PAGE_FORM0 + form_flow[fi], step=j,
              completed=(j < form_steps[fi] - 1) | (form_steps[fi] == FORM_STEPS))

    # ---- the cart at the end of the session: checkout and purchase, or abandoned
    price = cat.price[product[a_i]] * a_qty
    cart_qty = (np.bincount(bs[a_i], a_qty, n_sess) - np.bincount(bs[r_i], a_qty[removed], n_sess)).astype(np.int64)
    cart_value = np.bincount(bs[a_i], price, n_sess) - np.bincount(bs[r_i], price[removed], n_sess)
    cart_value = np.where(cart_qty > 0, np.round(cart_value, 2), 0.0)
    p_convert = p_convert_user[s_user] * np.where(churning, 0.6, 1.0)
    checkout = (cart_qty > 0) & (rng.random(n_sess) < p_convert / P_BUY)
    converted = checkout & (rng.random(n_sess) < P_BUY)
    tail = off + 16 * nb
    for mask, etype, k in ((checkout, CHK, 0), (converted, PUR, 1)):
        idx = np.flatnonzero(mask)
        parts.add(len(idx), sess=idx, key=tail[idx] + k, etype=etype, amount=cart_value[idx], qty=cart_qty[idx])
    n_pv = np.bincount(bs[i_pv], minlength=n_sess)
    p_purchase = (1.0 - (1.0 - p_cart * (1.0 - P_REMOVE)) ** n_pv) * p_convert

    # ---- order the events of each session, then time them
    ev = parts.build()
    width = off + 16 * (int(nb.max(initial=0)) + 1) + 2
    order = np.argsort(ev["sess"] * width + ev["key"], kind="stable")
    ev = {name: col[order] for name, col in ev.items()}
    es, etype_ev = ev["sess"], ev["etype"].astype(np.int64)
    gap = _GAP_LOC[etype_ev] + _GAP_SCALE[etype_ev] * rng.standard_exponential(len(es))
    gap = np.where(etype_ev == PAGE, np.nan_to_num(ev["dwell"]) + 1.0, gap)
    gap_us = (np.minimum(gap, _MAX_IDLE_S) * US).astype(np.int64)
    counts = np.bincount(es, minlength=n_sess)
    first_ev = np.cumsum(counts) - counts
    excl = np.cumsum(gap_us) - gap_us
    offset = excl - excl[first_ev][es]
    duration = offset[first_ev + counts - 1]
    # a user's sessions must not overlap and must be separated by more than the session gap:
    # start'_i = max(start_i, start'_(i-1) + duration_(i-1) + gap), a per-user running maximum
    stride = duration + _BETWEEN_SESSIONS_US
    u_count = np.bincount(s_user, minlength=n_users)
    acc = np.cumsum(stride) - stride
    acc = acc - acc[(np.cumsum(u_count) - u_count)[s_user]]
    v = s_start - acc
    lo = int(v.min(initial=0))
    width_v = int(v.max(initial=0)) - lo + 1
    s_start = np.maximum.accumulate(s_user * width_v + (v - lo)) - s_user * width_v + lo + acc
    # sessions running past the end of the period are not simulated; churners stop at churn_stop
    keep = (s_start + duration < t_end) & ~(churner[s_user] & (s_start + duration >= churn_stop[s_user]))
    new_index = np.cumsum(keep) - 1
    ev_keep = keep[es]
    ev = {name: col[ev_keep] for name, col in ev.items()}
    es = new_index[ev["sess"]]
    event_time = s_start[keep][es] + offset[ev_keep]
    (s_user, s_start, s_onb, churning, s_slot, duration, cart_qty, cart_value, checkout, converted, p_convert,
     p_purchase, n_pv, had_cart) = (
        a[keep] for a in (s_user, s_start, s_onb, churning, s_slot, duration, cart_qty, cart_value, checkout,
                          converted, p_convert, p_purchase, n_pv, np.bincount(bs[a_i], minlength=n_sess) > 0))
    n_sess, n_ev = len(s_user), len(es)
    counts = np.bincount(es, minlength=n_sess)

    # ---- delivery: normal, out of order (within the allowed lateness), late (beyond it), duplicated
    lateness_s = cfg.allowed_lateness.total_seconds()
    u = rng.random(n_ev)
    late = u < cfg.late_rate
    ooo = ~late & (u < cfg.late_rate + cfg.out_of_order_rate)
    normal_delay = np.minimum(0.2 + rng.gamma(2.0, 0.35, n_ev), 3.0)
    ooo_lo, ooo_hi = min(20.0, 0.25 * lateness_s), 0.9 * lateness_s
    ooo_delay = np.exp(rng.uniform(math.log(ooo_lo), math.log(ooo_hi), n_ev))
    late_delay = lateness_s + rng.uniform(60.0, 5 * 3600.0, n_ev)
    delay_us = (np.where(late, late_delay, np.where(ooo, ooo_delay, normal_delay)) * US).astype(np.int64)
    dup = rng.random(n_ev) < cfg.duplicate_rate
    dup_delay_us = (rng.uniform(1.0, 600.0, n_ev) * US).astype(np.int64)
    copies = 1 + dup.astype(np.int64)
    rows = np.repeat(np.arange(n_ev), copies)
    is_copy = _cumcount(copies) == 1
    # rows in day-major order (by UTC date of event_time, then user, session and time), so that a chunk is
    # written as a few large row groups per day partition without re-sorting the Arrow table
    row_day = event_time[rows] // DAY_US
    perm = np.argsort(row_day, kind="stable")
    rows, is_copy, row_day = rows[perm], is_copy[perm], row_day[perm]
    ingest_time = event_time[rows] + delay_us[rows] + np.where(is_copy, dup_delay_us[rows], 0)
    row_of = np.empty_like(perm)  # new position of each delivery
    row_of[perm] = np.arange(len(perm))
    first_row = row_of[np.cumsum(copies) - copies]  # row of each event's first delivery
    copy_row = row_of[(np.cumsum(copies) - copies)[dup] + 1]
    days, day_rows = np.unique(row_day, return_counts=True)

    # ---- Arrow: strings come from vocabularies and element-wise joins
    user_ids = _vocab(f"u{i:08d}" for i in range(first, first + n_users))
    s_user_ids = user_ids.take(pa.array(s_user))
    s_ordinal = _cumcount(np.bincount(s_user, minlength=n_users))
    session_ids = pc.binary_join_element_wise(s_user_ids, pc.utf8_lpad(pc.cast(pa.array(s_ordinal), pa.string()),
                                                                        width=4, padding="0"), "-s")
    device_ids = _vocab(f"{h:016x}" for h in device_hash.ravel())
    s_device = s_user * 3 + s_slot
    row_sess = pa.array(es[rows])
    session_col = session_ids.take(row_sess)
    position = _cumcount(counts)[rows]
    event_ids = pc.binary_join_element_wise(session_col, pc.cast(pa.array(position), pa.string()), "-")
    eu = s_user[es][rows]
    x = {name: col[rows] for name, col in ev.items()}
    et = x["etype"].astype(np.int64)
    has_item = (x["product"] >= 0) & ((et == PV) | (et == ATC) | (et == RFC))
    item = np.where(has_item, x["product"], -1)
    cols: dict[str, pa.Array] = {
        "schema_version": pa.array(np.full(len(rows), SCHEMA_VERSION, np.int64)),
        "event_id": event_ids,
        "user_id": s_user_ids.take(row_sess),
        "session_id": session_col,
        "event_type": _strings(_V_TYPES, et),
        "event_time": _times(event_time[rows]),
        "ingest_time": _times(ingest_time),
        "consent_analytics": pa.array(consent_analytics[eu]),
        "consent_personalization": pa.array(consent_personalization[eu]),
        "consent_marketing": pa.array(consent_marketing[eu]),
        "device_id": device_ids.take(pa.array(s_device[es][rows])),
        "device_type": _strings(_V_DEVICE_TYPES, device_type.ravel()[s_device[es][rows]]),
        "country": _strings(_V_COUNTRIES, country[eu]),
        "product_id": _strings(cat.product_ids, x["product"]),
        "category": _strings(_V_CATEGORIES, np.where(has_item, cat.category[np.maximum(item, 0)], -1)),
        "price": _floats(np.where(has_item, cat.price[np.maximum(item, 0)], np.nan)),
        "quantity": _ints(x["qty"]),
        "amount": _floats(x["amount"]),
        "page": _strings(_V_PAGES, x["page"]),
        "dwell_seconds": _floats(x["dwell"]),
        "scroll_pct": _floats(x["scroll"]),
        "video_id": _strings(_V_VIDEOS, x["video"]),
        "progress_pct": _floats(x["progress"]),
        "query": _strings(_V_QUERIES, x["query"]),
        "channel": _strings(_V_CHANNELS, x["channel"]),
        "success": _bools(x["success"]),
        "feature_name": _strings(_V_FEATURES, x["feature"]),
        "flow": _strings(_V_FLOWS, x["flow"]),
        "step_index": _ints(x["step"]),
        "completed": _bools(x["completed"]),
    }
    events = pa.Table.from_arrays([cols[f.name] for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)

    # ---- truth
    a_rows = np.concatenate([copy_row, first_row[ooo], first_row[late]])
    a_kind = np.concatenate([np.full(int(dup.sum()), 0), np.full(int(ooo.sum()), 1), np.full(int(late.sum()), 2)])
    a_order = np.lexsort((a_kind, a_rows))
    a_rows, a_kind = a_rows[a_order], a_kind[a_order]
    anomalies = pa.table({
        "event_id": event_ids.take(pa.array(a_rows)),
        "kind": _strings(_V_KINDS, a_kind),
        "event_time": _times(event_time[rows][a_rows]),
        "ingest_time": _times(ingest_time[a_rows]),
        "delay_seconds": (ingest_time[a_rows] - event_time[rows][a_rows]) / US,
    })
    sessions = pa.table({
        "session_id": session_ids,
        "user_id": s_user_ids,
        "start": _times(s_start),
        "end": _times(s_start + duration),
        "events": counts,
        "device_id": device_ids.take(pa.array(s_device)),
        "device_type": _strings(_V_DEVICE_TYPES, device_type.ravel()[s_device]),
        "onboarding": s_onb,
        "churning": churning,
        "product_views": n_pv,
        "had_cart": had_cart,
        "cart_items": cart_qty,
        "cart_value": cart_value,
        "checkout": checkout,
        "converted": converted,
        "abandoned": (cart_qty > 0) & ~converted,
        "p_convert": p_convert,
        "p_purchase": p_purchase,
    })
    users = pa.table({
        "user_id": user_ids,
        "purchase_intent": intent,
        "p_cart": p_cart_user,
        "p_convert": p_convert_user,
        "engagement": engagement,
        "session_rate": session_rate,
        "churn_risk": churn_risk,
        "churner": churner,
        "churn_start": _times(churn_start, ~churner),
        "churn_stop": _times(churn_stop, ~churner),
        "is_new": is_new,
        "signup": _times(signup, ~is_new),
        "onboarding_completed_steps": pa.array(steps_done, pa.int64(), mask=~is_new),
        "onboarding_dropoff_step": pa.array(dropoff, pa.int64(), mask=dropoff < 0),
        "devices": n_devices.astype(np.int64),
        "primary_device_type": _strings(_V_DEVICE_TYPES, device_type[:, 0]),
        "country": _strings(_V_COUNTRIES, country),
        "consent_analytics": consent_analytics,
        "consent_personalization": consent_personalization,
        "consent_marketing": consent_marketing,
        "top_category": _strings(_V_CATEGORIES, affinity.argmax(axis=1)),
        "category_affinity": pa.FixedSizeListArray.from_arrays(pa.array(affinity.ravel()), n_cat),
    })
    day_start = np.cumsum(day_rows) - day_rows
    return _Block(events=events, users=users, sessions=sessions, anomalies=anomalies,
                  by_type=np.bincount(et, minlength=len(_TYPES)), kinds=np.bincount(a_kind, minlength=3),
                  days={int(d): (int(o), int(n)) for d, o, n in zip(days, day_start, day_rows, strict=True)})


# ----------------------------------------------------------------------------------- public API
def simulate_blocks(cfg: SimulationConfig, blocks: Iterable[int]) -> SimulationResult:
    """The users of the given blocks (``block * block_users ...``), in memory."""
    parts = [_simulate_block(cfg, b) for b in blocks]
    if not parts:
        raise ValueError("no blocks to simulate")
    return SimulationResult(events=pa.concat_tables([p.events for p in parts]),
                            users=pa.concat_tables([p.users for p in parts]),
                            sessions=pa.concat_tables([p.sessions for p in parts]),
                            anomalies=pa.concat_tables([p.anomalies for p in parts]),
                            catalogue=_catalogue(cfg.seed, cfg.products).table())


def simulate(cfg: SimulationConfig) -> SimulationResult:
    """Everything in memory (tests, notebooks and small demos); use :func:`simulate_to_dir` for volume."""
    return simulate_blocks(cfg, range(cfg.blocks))


@contextlib.contextmanager
def _arrow_single_threaded() -> Iterator[None]:
    """Arrow's thread pool reorders row groups between runs; one thread keeps the files byte-identical."""
    before = pa.cpu_count()
    pa.set_cpu_count(1)
    try:
        yield
    finally:
        pa.set_cpu_count(before)


def _config_json(cfg: SimulationConfig) -> dict[str, Any]:
    out = asdict(cfg)
    out["start"] = cfg.start.isoformat().replace("+00:00", "Z")
    out["allowed_lateness_seconds"] = out.pop("allowed_lateness").total_seconds()
    return out


@dataclass
class _ChunkResult:
    rows: int
    by_type: Arr
    kinds: Arr
    users: pa.Table
    sessions: pa.Table
    anomalies: pa.Table


def _write_chunk(cfg: SimulationConfig, events_dir: Path, chunk: int, blocks: range) -> _ChunkResult:
    """Simulate ``blocks`` and write their events as parquet parts named after ``chunk``."""
    parts = [_simulate_block(cfg, b) for b in blocks]
    # day-major over the chunk (each block is day-major): large row groups, one or a few per day partition
    days = sorted({d for p in parts for d in p.days})
    events = pa.concat_tables([p.events.slice(*p.days[d]) for d in days for p in parts if d in p.days])
    events = events.combine_chunks()
    with _arrow_single_threaded():
        write_parquet(events, events_dir, part=f"{chunk:05d}")
    return _ChunkResult(rows=events.num_rows, by_type=sum((p.by_type for p in parts), np.zeros(len(_TYPES), int)),
                        kinds=sum((p.kinds for p in parts), np.zeros(3, int)),
                        users=pa.concat_tables([p.users for p in parts]),
                        sessions=pa.concat_tables([p.sessions for p in parts]),
                        anomalies=pa.concat_tables([p.anomalies for p in parts]))


def simulate_to_dir(cfg: SimulationConfig, out_dir: str | os.PathLike[str], *, chunk_users: int = 4000,
                    workers: int = 1, jsonl: bool = False, overwrite: bool = True) -> SimulationSummary:
    """Write ``events/`` (day-partitioned parquet), ``truth/`` and optionally ``stream.jsonl`` under ``out_dir``.

    Users are simulated in chunks of about ``chunk_users`` (whole blocks: memory is
    bounded by the chunk), on ``workers`` processes. The output depends on neither,
    and the same config writes byte-identical files. ``overwrite`` replaces the
    ``events/``, ``truth/`` and ``stream.jsonl`` of an earlier run (parts of a larger
    earlier run would otherwise survive); without it they must not exist.
    ``seconds`` and ``rows_per_second`` cover simulation and parquet writing, not the
    optional JSON-lines stream. With ``workers > 1`` the caller's ``__main__`` must be
    import-safe (worker processes are spawned).

    The truth (``truth/``), one row per:

    * ``users.parquet`` user: ``purchase_intent``; ``p_cart`` (a product view is
      added to the cart) and ``p_convert`` (a session with a cart buys, before
      churn); ``engagement`` and ``session_rate`` (sessions a day before churn,
      onboarding and weekends); ``churn_risk`` (the probability that drew
      ``churner``), ``churn_start``, ``churn_stop``; ``is_new``, ``signup``,
      ``onboarding_completed_steps``, ``onboarding_dropoff_step`` (null: completed,
      or not new); devices, country, consent, ``top_category`` and
      ``category_affinity`` (over :data:`CATEGORIES`);
    * ``sessions.parquet`` session: ``start``/``end`` (first and last event),
      ``events``, device, ``onboarding``, ``churning``, ``product_views``,
      ``had_cart``, ``cart_items``/``cart_value`` at the end, ``checkout``,
      ``converted``, ``abandoned`` (items left in the cart, no purchase), and the
      true ``p_convert`` (given a cart) and ``p_purchase`` (given its product
      views) that drove the draw;
    * ``anomalies.parquet`` injected delivery fault: ``event_id``, ``kind``
      (duplicate: the later copy; out_of_order; late), ``event_time``,
      ``ingest_time`` and ``delay_seconds`` of that delivery;
    * ``catalogue.parquet`` product, and ``config.json`` the config.
    """
    out = Path(out_dir)
    events_dir, truth, stream = out / "events", out / "truth", out / "stream.jsonl"
    for old in (events_dir, truth, stream):
        if old.exists():
            if not overwrite:
                raise FileExistsError(f"{old} exists; pass overwrite=True to replace it")
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
    truth.mkdir(parents=True)
    per_chunk = max(1, round(chunk_users / cfg.block_users))
    chunks = [range(b, min(b + per_chunk, cfg.blocks)) for b in range(0, cfg.blocks, per_chunk)]
    workers = max(1, min(workers, len(chunks)))
    t0 = time.perf_counter()
    by_type = np.zeros(len(_TYPES), np.int64)
    kinds = np.zeros(3, np.int64)
    rows = n_sessions = 0
    writers: dict[str, pq.ParquetWriter] = {}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) if workers > 1 else None
    try:
        args = (repeat(cfg), repeat(events_dir), range(len(chunks)), chunks)
        results: Iterator[_ChunkResult] = pool.map(_write_chunk, *args) if pool else map(_write_chunk, *args)
        for res in results:  # in chunk order, whatever the workers: the truth files are deterministic too
            rows += res.rows
            n_sessions += res.sessions.num_rows
            by_type += res.by_type
            kinds += res.kinds
            for name, table in (("users", res.users), ("sessions", res.sessions), ("anomalies", res.anomalies)):
                if name not in writers:
                    writers[name] = pq.ParquetWriter(truth / f"{name}.parquet", table.schema, compression="zstd")
                writers[name].write_table(table)
    finally:
        for w in writers.values():
            w.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    pq.write_table(_catalogue(cfg.seed, cfg.products).table(), truth / "catalogue.parquet", compression="zstd")
    (truth / "config.json").write_text(json.dumps(_config_json(cfg), indent=1) + "\n")
    seconds = time.perf_counter() - t0
    if jsonl:
        write_stream(events_dir, stream)
    return SimulationSummary(
        rows=rows, seconds=seconds, rows_per_second=rows / seconds if seconds else 0.0, users=cfg.users,
        sessions=n_sessions, by_type={t.value: int(n) for t, n in sorted(zip(_TYPES, by_type, strict=True),
                                                                         key=lambda tn: (-tn[1], tn[0].value)) if n},
        anomalies={k: int(n) for k, n in zip(ANOMALY_KINDS, kinds, strict=True)}, out_dir=str(out),
        workers=workers, chunks=len(chunks))


# ----------------------------------------------------------------------------------- replay
_ARRIVAL_ORDER: Final = [("ingest_time", "ascending"), ("event_id", "ascending"), ("event_time", "ascending")]


def replay_batches(source: pa.Table | str | os.PathLike[str], *, batch_size: int = 10_000
                   ) -> Iterator[pa.RecordBatch]:
    """Events in arrival order (``ingest_time``, then ``event_id``, then ``event_time``) as record batches.

    ``source`` is a table (sorted in memory) or an event-log directory, read one day
    partition at a time: after the partitions up to day D are loaded, every event
    still unread happened (so arrived) after the next partition's first instant, so
    everything loaded that arrived before it can be emitted. Memory is bounded by a
    day of events plus the late ones.
    """
    if isinstance(source, pa.Table):
        if source.num_rows:
            yield from source.sort_by(_ARRIVAL_ORDER).to_batches(max_chunksize=batch_size)
        return
    dataset = ds.dataset(str(source), format="parquet", partitioning="hive")
    days = sorted({str(v) for frag in dataset.get_fragments()
                   for v in ds.get_partition_keys(frag.partition_expression).values()})
    pending: pa.Table | None = None
    for i, day in enumerate(days):
        table = dataset.to_table(filter=ds.field(PARTITION) == day).drop_columns([PARTITION])
        table = conform(table)
        pending = table if pending is None else pa.concat_tables([pending, table])
        if i + 1 < len(days):
            bound = pa.scalar(datetime.fromisoformat(days[i + 1]).replace(tzinfo=UTC), _TS)
            ready = pc.less(pending.column("ingest_time"), bound)
            now, pending = pending.filter(ready), pending.filter(pc.invert(ready))
        else:
            now, pending = pending, None
        if now.num_rows:
            yield from now.sort_by(_ARRIVAL_ORDER).to_batches(max_chunksize=batch_size)


def replay(source: pa.Table | str | os.PathLike[str], *, batch_size: int = 10_000) -> Iterator[dict[str, Any]]:
    """The events as a stream, one record (a dict, UTC datetimes) at a time, in arrival order.

    An iterator, so a Kafka producer can consume it: ``for r in replay(dir): produce(encode_json(r))``.
    """
    for batch in replay_batches(source, batch_size=batch_size):
        yield from batch.to_pylist()


def write_stream(source: pa.Table | str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    """The replay as JSON lines (``pipelines.ingest.eventlog.encode_json``); returns the number of lines."""
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for record in replay(source):
            fh.write(encode_json(record))
            fh.write("\n")
            n += 1
    return n
