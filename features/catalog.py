"""The Kairos feature catalogue: every feature, declared once.

Names follow ``<entity>_<what>_<window>``. The seeds' own features are here by
name: ``user_total_spend_30d``, ``session_engagement_score_5m``,
``session_top3_categories_24h``, ``user_items_in_cart_not_purchased_24h``,
``user_login_freq_change_7d``, ``user_help_searches_7d`` and
``user_distinct_devices_24h``.
"""

from __future__ import annotations

from typing import Final

from features.aggregations import Count, CountDistinct, Last, Max, Mean, Min, Sum, TopK
from features.events import EventType as E
from features.expr import (
    Expr,
    clip,
    coalesce,
    col,
    contains_any,
    day_of_week,
    eq,
    ge,
    greatest,
    hour_of_day,
    if_,
    ln1p,
    seconds_between,
    utc_day,
)
from features.spec import (
    LIFETIME,
    REQUEST_TIME,
    W1H,
    W5M,
    W7D,
    W24H,
    W30D,
    W30D_HOURLY,
    W90D,
    W180D,
    W365D,
    Aggregation,
    Derived,
    Entity,
    EventSource,
    FeatureService,
    FeatureView,
    OnDemandFeature,
    OnDemandView,
    Window,
)

USER: Final = Entity(name="user", join_key="user_id", description="A signed-in or identified visitor")
SESSION: Final = Entity(name="session", join_key="session_id", owner=USER,
                        description="One visit: events of a user with no gap above 30 minutes")

EVENTS: Final = EventSource(
    name="behavioural_events",
    batch_table="events",
    stream_topic="kairos.events",
    description="All behavioural events, schema v1 (features/events.py)",
)

COMMERCE = {"domain": "commerce"}
ACCOUNT = {"domain": "account"}
ENGAGE = {"domain": "engagement"}
VALUE = {"domain": "customer_value"}

# Words of help searches that ask how to leave: cancel, close or delete the account, get money back, complain.
CANCEL_INTENT_WORDS: Final = ("cancel", "close account", "delete account", "refund", "unsubscribe", "complain")



def _count(name: str, types: set[E], window: Window, description: str, *, tags: dict[str, str] | None = None,
           where: Expr | None = None) -> Aggregation:
    return Aggregation(name=name, op=Count(), window=window, event_types=frozenset(types), dtype="int64",
                       description=description, default=0, min_value=0, tags=tags or {}, where=where)


def _cart_flow(entity: str) -> tuple[Aggregation, ...]:
    """Units added to, removed from and bought out of the cart in 24 hours, per ``entity``."""
    flows = ((f"{entity}_cart_qty_added_24h", E.ADD_TO_CART, "added to cart"),
             (f"{entity}_cart_qty_removed_24h", E.REMOVE_FROM_CART, "removed from cart"),
             (f"{entity}_qty_purchased_24h", E.PURCHASE, "bought"))
    return tuple(
        Aggregation(name=name, op=Sum(), input=col("quantity"), event_types=frozenset({etype}), window=W24H,
                    dtype="int64", default=0, min_value=0, description=f"Units {what} in the last 24 hours ({entity})")
        for name, etype, what in flows
    )


def _items_in_cart(entity: str) -> Derived:
    """Units still in the cart: added - removed - bought over 24 hours, never below 0."""
    return Derived(name=f"{entity}_items_in_cart_not_purchased_24h", dtype="int64", default=0, min_value=0,
                   expr=greatest(col(f"{entity}_cart_qty_added_24h") - col(f"{entity}_cart_qty_removed_24h")
                                 - col(f"{entity}_qty_purchased_24h"), 0),
                   description=f"Units the {entity} added to cart in 24 hours and neither removed nor bought")


def _weekly_change(name: str, last_7d: str, last_30d_hourly: str, what: str) -> Derived:
    """``last_7d`` against the weekly rate of the 23 days before it: -0.5 = halved; 0 without earlier ones.

    Both counts have the same hourly hop, so as of ``t`` the 30-day window starts ``floor(t, 1h) - 30d`` and the
    7-day one ``floor(t, 1h) - 7d``: the remainder is exactly 23 days (with the 30d window's daily hop it spanned
    23 to 24 days, and the change was biased upwards by up to 1/23)."""
    prior_week = (col(last_30d_hourly) - col(last_7d)) * (7 / 23)
    return Derived(name=name, dtype="float64", default=0.0, min_value=-1.0,
                   expr=coalesce((col(last_7d) - prior_week) / prior_week, 0.0),
                   description=f"Relative change of the 7-day {what} count against the weekly rate of the exactly "
                               f"23 days before it: (n_7d - r) / r with r = (n_30d - n_7d) x 7/23, both windows on "
                               f"the same hourly hop (-0.5 = {what}s halved; 0 without prior {what}s)")


# --------------------------------------------------------------------------------------- user commerce
USER_COMMERCE: Final = FeatureView(
    name="user_commerce",
    entity=USER,
    source=EVENTS,
    description="What a user browses, carts and buys",
    tags=COMMERCE,
    aggregations=(
        Aggregation(name="user_total_spend_30d", op=Sum(), input=col("amount"), event_types=frozenset({E.PURCHASE}),
                    window=W30D, dtype="float64", description="Total order value in the last 30 days", tags=COMMERCE,
                    default=0.0, min_value=0.0),
        _count("user_purchases_30d", {E.PURCHASE}, W30D, "Orders in the last 30 days", tags=COMMERCE),
        Aggregation(name="user_avg_order_value_30d", op=Mean(), input=col("amount"),
                    event_types=frozenset({E.PURCHASE}), window=W30D, dtype="float64",
                    description="Mean order value in the last 30 days (0 without orders)", default=0.0, min_value=0.0),
        Aggregation(name="user_max_order_value_30d", op=Max(), input=col("amount"),
                    event_types=frozenset({E.PURCHASE}), window=W30D, dtype="float64",
                    description="Largest order in the last 30 days (0 without orders)", default=0.0, min_value=0.0),
        _count("user_cart_adds_30d", {E.ADD_TO_CART}, W30D, "Add-to-cart events in the last 30 days"),
        _count("user_product_views_30d", {E.PRODUCT_VIEW}, W30D, "Product views in the last 30 days"),
        Aggregation(name="user_cart_sessions_30d", op=CountDistinct(), input=col("session_id"),
                    event_types=frozenset({E.ADD_TO_CART}), window=W30D, dtype="int64", default=0, min_value=0,
                    description="Sessions with at least one add-to-cart in the last 30 days"),
        _count("user_product_views_1h", {E.PRODUCT_VIEW}, W1H, "Product views in the last hour"),
        _count("user_product_views_24h", {E.PRODUCT_VIEW}, W24H, "Product views in the last 24 hours"),
        Aggregation(name="user_distinct_products_viewed_24h", op=CountDistinct(), input=col("product_id"),
                    event_types=frozenset({E.PRODUCT_VIEW}), window=W24H, dtype="int64",
                    description="Distinct products viewed in the last 24 hours", default=0, min_value=0),
        Aggregation(name="user_min_viewed_price_24h", op=Min(), input=col("price"),
                    event_types=frozenset({E.PRODUCT_VIEW}), window=W24H, dtype="float64",
                    description="Cheapest product price viewed in 24 hours (0 without views)",
                    default=0.0, min_value=0.0),
        *_cart_flow("user"),
        _count("user_checkouts_24h", {E.CHECKOUT_START}, W24H, "Checkouts started in the last 24 hours"),
        Aggregation(name="user_top3_categories_24h", op=TopK(k=3), input=col("category"),
                    event_types=frozenset({E.PRODUCT_VIEW}), window=W24H, dtype="array<string>", default=[],
                    description="The three most viewed categories in 24 hours, most viewed first"),
        Aggregation(name="user_last_viewed_category_24h", op=Last(), input=col("category"),
                    event_types=frozenset({E.PRODUCT_VIEW}), window=W24H, dtype="string", default="",
                    description="Category of the latest product view in 24 hours ('' if none)"),
        Aggregation(name="user_last_purchase_at_30d", op=Last(), input=col("event_time"),
                    event_types=frozenset({E.PURCHASE}), window=W30D, dtype="timestamp", default=None,
                    description="Time of the latest purchase in 30 days (null if none)"),
    ),
    derived=(
        _items_in_cart("user"),
        Derived(name="user_cart_conversion_30d", dtype="float64", min_value=0.0, default=0.0,
                expr=coalesce(col("user_purchases_30d") / col("user_cart_adds_30d"), 0.0),
                description="Orders per add-to-cart in 30 days (0 without adds)"),
        # Intent, as the funnel shows it: how often a viewed product goes into the cart, and how often a
        # session with a cart ends in an order.
        Derived(name="user_cart_add_rate_30d", dtype="float64", min_value=0.0, default=0.0,
                expr=coalesce(col("user_cart_adds_30d") / col("user_product_views_30d"), 0.0),
                description="Add-to-carts per product view in 30 days (0 without views)"),
        Derived(name="user_cart_session_conversion_30d", dtype="float64", min_value=0.0, default=0.0,
                expr=coalesce(col("user_purchases_30d") / col("user_cart_sessions_30d"), 0.0),
                description="Orders per session with a cart in 30 days (0 without such sessions)"),
        Derived(name="user_rfm_monetary_score_30d", dtype="float64", min_value=0.0, max_value=5.0, default=0.0,
                expr=clip(ln1p(col("user_total_spend_30d")) * 0.75, 0.0, 5.0),
                description="RFM monetary score: log of 30-day spend, 0-5"),
        Derived(name="user_rfm_frequency_score_30d", dtype="float64", min_value=0.0, max_value=5.0, default=0.0,
                expr=clip(col("user_purchases_30d") * 1.0, 0.0, 5.0),
                description="RFM frequency score: orders in 30 days capped at 5"),
    ),
)

# --------------------------------------------------------------------------------------- user account
USER_ACCOUNT: Final = FeatureView(
    name="user_account",
    entity=USER,
    source=EVENTS,
    description="Logins, help-seeking, devices and onboarding: churn signals",
    tags=ACCOUNT,
    aggregations=(
        _count("user_logins_7d", {E.LOGIN}, W7D, "Logins in the last 7 days", tags=ACCOUNT),
        _count("user_logins_30d", {E.LOGIN}, W30D, "Logins in the last 30 days", tags=ACCOUNT),
        _count("user_failed_logins_7d", {E.LOGIN}, W7D, "Failed logins in the last 7 days",
               where=eq(col("success"), False)),
        Aggregation(name="user_sessions_7d", op=CountDistinct(), input=col("session_id"), window=W7D,
                    dtype="int64", default=0, min_value=0, description="Sessions in the last 7 days"),
        Aggregation(name="user_sessions_30d", op=CountDistinct(), input=col("session_id"), window=W30D,
                    dtype="int64", default=0, min_value=0, description="Sessions in the last 30 days"),
        _count("user_logins_30d_hourly", {E.LOGIN}, W30D_HOURLY,
               "Logins in the last 30 days on the 7-day window's hourly hop (the base of the login trend)"),
        Aggregation(name="user_sessions_30d_hourly", op=CountDistinct(), input=col("session_id"), window=W30D_HOURLY,
                    dtype="int64", default=0, min_value=0,
                    description="Sessions in the last 30 days on the 7-day window's hourly hop (the base of the "
                                "session trend)"),
        _count("user_help_searches_24h", {E.HELP_SEARCH}, W24H, "Help searches in the last 24 hours"),
        _count("user_help_searches_7d", {E.HELP_SEARCH}, W7D, "Help searches in the last 7 days", tags=ACCOUNT),
        _count("user_cancel_intent_searches_7d", {E.HELP_SEARCH}, W7D,
               "Help searches about leaving (cancel, close or delete the account, refund, unsubscribe, complain) "
               "in the last 7 days", tags=ACCOUNT, where=contains_any(col("query"), CANCEL_INTENT_WORDS)),
        _count("user_feature_uses_7d", {E.FEATURE_USE}, W7D, "Product-feature uses in the last 7 days"),
        _count("user_failed_feature_uses_7d", {E.FEATURE_USE}, W7D, "Failed product-feature uses in 7 days",
               where=eq(col("success"), False)),
        _count("user_events_24h", set(E), W24H, "Events of any type in the last 24 hours"),
        _count("user_events_7d", set(E), W7D, "Events of any type in the last 7 days"),
        Aggregation(name="user_distinct_devices_24h", op=CountDistinct(), input=col("device_id"), window=W24H,
                    dtype="int64", description="Distinct devices used in the last 24 hours", default=0, min_value=0),
        Aggregation(name="user_onboarding_max_step_30d", op=Max(), input=col("step_index"),
                    event_types=frozenset({E.ONBOARDING_STEP}), where=eq(col("completed"), True), window=W30D,
                    dtype="int64", default=-1, min_value=-1,
                    description="Highest completed onboarding step in 30 days (-1 if none)"),
        _count("user_form_abandons_24h", {E.FORM_STEP}, W24H, "Form steps left uncompleted in 24 hours",
               where=eq(col("completed"), False)),
        Aggregation(name="user_first_seen_at_30d", op=Min(), input=col("event_time"), window=W30D,
                    dtype="timestamp", default=None,
                    description="The user's earliest event in the last 30 days (null if none)"),
        Aggregation(name="user_last_login_at_30d", op=Last(), input=col("event_time"),
                    event_types=frozenset({E.LOGIN}), window=W30D, dtype="timestamp", default=None,
                    description="Time of the latest login in 30 days (null if none)"),
    ),
    derived=(
        # Logins and sessions in the last 7 days against the weekly rate of the 23 days before them:
        # a churner's visits thin out before they stop.
        _weekly_change("user_login_freq_change_7d", "user_logins_7d", "user_logins_30d_hourly", "login"),
        _weekly_change("user_session_freq_change_7d", "user_sessions_7d", "user_sessions_30d_hourly", "session"),
        Derived(name="user_events_per_session_7d", dtype="float64", default=0.0, min_value=0.0,
                expr=coalesce(col("user_events_7d") / col("user_sessions_7d"), 0.0),
                description="Events per session in the last 7 days: visits get shorter before a user leaves"),
    ),
)

# --------------------------------------------------------------------------------------- session activity
SESSION_ACTIVITY: Final = FeatureView(
    name="session_activity",
    entity=SESSION,
    source=EVENTS,
    description="What happens inside one session, minute by minute",
    tags=ENGAGE,
    aggregations=(
        _count("session_page_views_5m", {E.PAGE_VIEW}, W5M, "Page views in the last 5 minutes"),
        _count("session_product_views_5m", {E.PRODUCT_VIEW}, W5M, "Product views in the last 5 minutes"),
        _count("session_cart_adds_5m", {E.ADD_TO_CART}, W5M, "Add-to-cart events in the last 5 minutes"),
        _count("session_searches_5m", {E.SEARCH}, W5M, "Searches in the last 5 minutes"),
        Aggregation(name="session_dwell_seconds_5m", op=Sum(), input=col("dwell_seconds"),
                    event_types=frozenset({E.PAGE_VIEW}), window=W5M, dtype="float64",
                    description="Seconds spent on pages viewed in the last 5 minutes", default=0.0, min_value=0.0),
        Aggregation(name="session_max_scroll_pct_5m", op=Max(), input=col("scroll_pct"),
                    event_types=frozenset({E.SCROLL}), window=W5M, dtype="float64", max_value=100.0,
                    description="Deepest scroll in the last 5 minutes, percent", default=0.0, min_value=0.0),
        Aggregation(name="session_max_video_pct_5m", op=Max(), input=col("progress_pct"),
                    event_types=frozenset({E.VIDEO_PROGRESS}), window=W5M, dtype="float64", max_value=100.0,
                    description="Furthest video progress in the last 5 minutes, percent", default=0.0, min_value=0.0),
        _count("session_events_1h", set(E), W1H, "Events of any type in the last hour"),
        Aggregation(name="session_top3_categories_24h", op=TopK(k=3), input=col("category"),
                    event_types=frozenset({E.PRODUCT_VIEW}), window=W24H, dtype="array<string>", default=[],
                    description="The session's three most viewed categories, most viewed first"),
        *_cart_flow("session"),
        Aggregation(name="session_first_event_at_24h", op=Min(), input=col("event_time"), window=W24H,
                    dtype="timestamp", default=None, description="When the session started (null if unseen)"),
        Aggregation(name="session_last_event_at_24h", op=Last(), input=col("event_time"), window=W24H,
                    dtype="timestamp", default=None, description="The session's latest event (null if unseen)"),
        Aggregation(name="session_last_cart_add_at_24h", op=Last(), input=col("event_time"),
                    event_types=frozenset({E.ADD_TO_CART}), window=W24H, dtype="timestamp", default=None,
                    description="The session's latest add-to-cart (null if none)"),
        Aggregation(name="session_last_page_24h", op=Last(), input=col("page"), event_types=frozenset({E.PAGE_VIEW}),
                    window=W24H, dtype="string", default="", description="The session's latest page ('' if none)"),
    ),
    derived=(
        # The 5-minute session engagement score of the seeds: a weighted sum of recent activity, 0-100.
        Derived(name="session_engagement_score_5m", dtype="float64", min_value=0.0, max_value=100.0, default=0.0,
                expr=clip(col("session_page_views_5m") * 2.0 + col("session_product_views_5m") * 3.0
                          + col("session_cart_adds_5m") * 10.0 + col("session_searches_5m") * 2.0
                          + col("session_dwell_seconds_5m") / 30.0 + col("session_max_scroll_pct_5m") / 10.0
                          + col("session_max_video_pct_5m") / 10.0, 0.0, 100.0),
                description="Weighted 5-minute activity: views, carts, searches, dwell, scroll and video, 0-100"),
        _items_in_cart("session"),
    ),
)

# --------------------------------------------------------------------------------------- customer value
def _spend_and_orders(window: Window, span: str) -> tuple[Aggregation, ...]:
    return (
        Aggregation(name=f"user_spend_{window.name}", op=Sum(), input=col("amount"),
                    event_types=frozenset({E.PURCHASE}), window=window, dtype="float64", default=0.0, min_value=0.0,
                    tags=VALUE, description=f"Total order value {span}"),
        _count(f"user_orders_{window.name}", {E.PURCHASE}, window, f"Orders {span}", tags=VALUE),
    )


# What a transaction export can fill (customer, time, amount): how much and how often a customer buys over
# months and over their whole history, the inputs of RFM and of buy-till-you-die models. The long windows
# have day tiles; the lifetime ones are one running state per customer (features/SEMANTICS.md).
USER_VALUE: Final = FeatureView(
    name="user_value",
    entity=USER,
    source=EVENTS,
    description="A customer's purchases over 90, 180 and 365 days and their whole history: recency, frequency, "
                "monetary value and inter-purchase time",
    tags=VALUE,
    aggregations=(
        *_spend_and_orders(W90D, "in the last 90 days"),
        *_spend_and_orders(W180D, "in the last 180 days"),
        *_spend_and_orders(W365D, "in the last 365 days"),
        *_spend_and_orders(LIFETIME, "since the customer's first purchase"),
        Aggregation(name="user_purchase_days_365d", op=CountDistinct(), input=utc_day(col("event_time")),
                    event_types=frozenset({E.PURCHASE}), window=W365D, dtype="int64", default=0, min_value=0,
                    tags=VALUE, description="Distinct UTC days with a purchase in the last 365 days"),
        Aggregation(name="user_purchase_days_lifetime", op=CountDistinct(), input=utc_day(col("event_time")),
                    event_types=frozenset({E.PURCHASE}), window=LIFETIME, dtype="int64", default=0, min_value=0,
                    tags=VALUE, description="Distinct UTC days with a purchase since the first (one integer per "
                                            "purchase day is the state)"),
        Aggregation(name="user_mean_order_value_lifetime", op=Mean(), input=col("amount"),
                    event_types=frozenset({E.PURCHASE}), window=LIFETIME, dtype="float64", default=0.0,
                    min_value=0.0, tags=VALUE,
                    description="Monetary value: mean order value since the first purchase (0 without orders)"),
        Aggregation(name="user_first_purchase_at_lifetime", op=Min(), input=col("event_time"),
                    event_types=frozenset({E.PURCHASE}), window=LIFETIME, dtype="timestamp", default=None,
                    tags=VALUE, description="Time of the customer's first purchase (null if none)"),
        Aggregation(name="user_last_purchase_at_lifetime", op=Max(), input=col("event_time"),
                    event_types=frozenset({E.PURCHASE}), window=LIFETIME, dtype="timestamp", default=None,
                    tags=VALUE, description="Time of the customer's latest purchase (null if none)"),
    ),
    derived=(
        Derived(name="user_repeat_purchase_days_lifetime", dtype="int64", default=0, min_value=0, tags=VALUE,
                expr=greatest(col("user_purchase_days_lifetime") - 1, 0),
                description="Frequency: purchase days after the first (BG/NBD's x, in days)"),
        Derived(name="user_purchase_span_days_lifetime", dtype="float64", default=0.0, min_value=0.0, tags=VALUE,
                expr=coalesce(seconds_between(col("user_last_purchase_at_lifetime"),
                                              col("user_first_purchase_at_lifetime")) / 86400.0, 0.0),
                description="Days from the first to the latest purchase (BG/NBD's t_x; 0 for one purchase day)"),
        Derived(name="user_mean_interpurchase_days_lifetime", dtype="float64", default=0.0, min_value=0.0,
                tags=VALUE,
                expr=coalesce(seconds_between(col("user_last_purchase_at_lifetime"),
                                              col("user_first_purchase_at_lifetime")) / 86400.0
                              / (col("user_purchase_days_lifetime") - 1), 0.0),
                description="Mean days between purchase days: (latest - first) / repeat purchase days "
                            "(0 without a repeat)"),
        Derived(name="user_mean_order_value_365d", dtype="float64", default=0.0, min_value=0.0, tags=VALUE,
                expr=coalesce(col("user_spend_365d") / col("user_orders_365d"), 0.0),
                description="Mean order value in the last 365 days (0 without orders)"),
    ),
)

_NO_PURCHASE: Final = -1.0  # a day count of a customer without any purchase: no such day


def _days_since(name: str, at: str, what: str) -> OnDemandFeature:
    return OnDemandFeature(name=name, dtype="float64", default=_NO_PURCHASE, min_value=_NO_PURCHASE, tags=VALUE,
                           expr=seconds_between(col("request_time"), col(at)) / 86400.0,
                           description=f"Days since {what}, at request time (-1 without any purchase)")


CUSTOMER_VALUE: Final = OnDemandView(
    name="customer_value",
    sources=(USER_VALUE,),
    request_fields=(REQUEST_TIME,),
    description="Recency, customer age and the current gap against the usual one, at request time",
    features=(
        _days_since("user_days_since_last_purchase", "user_last_purchase_at_lifetime",
                    "the latest purchase (recency)"),
        _days_since("user_days_since_first_purchase", "user_first_purchase_at_lifetime",
                    "the first purchase (customer age, BG/NBD's T)"),
        OnDemandFeature(name="user_purchase_gap_ratio", dtype="float64", default=_NO_PURCHASE,
                        min_value=_NO_PURCHASE, tags=VALUE,
                        expr=seconds_between(col("request_time"), col("user_last_purchase_at_lifetime")) / 86400.0
                        / col("user_mean_interpurchase_days_lifetime"),
                        description="The current gap against the usual one: days since the latest purchase over "
                                    "the mean days between purchase days (-1 without a repeat purchase)"),
    ),
)


# --------------------------------------------------------------------------------------- on demand
_MONTH_S: Final = 30 * 86400.0
_HOUR_S: Final = 3600.0

USER_RECENCY: Final = OnDemandView(
    name="user_recency",
    sources=(USER_COMMERCE, USER_ACCOUNT),
    request_fields=(REQUEST_TIME,),
    description="Time since the user's last purchase and login, at request time",
    features=(
        OnDemandFeature(name="user_seconds_since_last_purchase", dtype="float64", default=_MONTH_S, min_value=0.0,
                        expr=seconds_between(col("request_time"), col("user_last_purchase_at_30d")),
                        description="Seconds since the latest purchase (30 days when none in 30 days)"),
        OnDemandFeature(name="user_seconds_since_last_login", dtype="float64", default=_MONTH_S, min_value=0.0,
                        expr=seconds_between(col("request_time"), col("user_last_login_at_30d")),
                        description="Seconds since the latest login (30 days when none in 30 days)"),
        OnDemandFeature(name="user_rfm_recency_score", dtype="float64", default=0.0, min_value=0.0, max_value=5.0,
                        expr=clip(5.0 - seconds_between(col("request_time"), col("user_last_purchase_at_30d"))
                                  / (6 * 86400.0), 0.0, 5.0),
                        description="RFM recency score: 5 for a purchase just now, 0 after 30 days"),
    ),
)


def _per_day(name: str, count: str, what: str) -> OnDemandFeature:
    return OnDemandFeature(
        name=name, dtype="float64", default=0.0, min_value=0.0,
        expr=coalesce(col(count) / greatest(seconds_between(col("request_time"), col("user_first_seen_at_30d"))
                                            / 86400.0, 1.0), 0.0),
        description=f"{what} per day of the user's history in the last 30 days (at least 1 day)")


# A 30-day count means one thing for a user seen for 30 days and another for one seen for 3: per day of
# history they compare across tenure, and a model trained while histories were short still holds later.
USER_ACTIVITY_RATES: Final = OnDemandView(
    name="user_activity_rates",
    sources=(USER_COMMERCE, USER_ACCOUNT),
    request_fields=(REQUEST_TIME,),
    description="30-day activity per day of the user's history in the window, at request time",
    features=(
        OnDemandFeature(name="user_days_observed_30d", dtype="float64", default=0.0, min_value=0.0, max_value=30.0,
                        expr=clip(seconds_between(col("request_time"), col("user_first_seen_at_30d")) / 86400.0,
                                  0.0, 30.0),
                        description="Days since the user's earliest event in the last 30 days (0 if none)"),
        _per_day("user_sessions_per_day_30d", "user_sessions_30d", "Sessions"),
        _per_day("user_logins_per_day_30d", "user_logins_30d", "Logins"),
        _per_day("user_product_views_per_day_30d", "user_product_views_30d", "Product views"),
        _per_day("user_cart_adds_per_day_30d", "user_cart_adds_30d", "Add-to-cart events"),
        _per_day("user_purchases_per_day_30d", "user_purchases_30d", "Orders"),
        _per_day("user_spend_per_day_30d", "user_total_spend_30d", "Order value"),
    ),
)

SESSION_CONTEXT: Final = OnDemandView(
    name="session_context",
    sources=(SESSION_ACTIVITY,),
    request_fields=(REQUEST_TIME,),
    description="Inactivity, time in session and cart idle time, at request time",
    features=(
        OnDemandFeature(name="session_seconds_inactive", dtype="float64", default=0.0, min_value=0.0,
                        expr=seconds_between(col("request_time"), col("session_last_event_at_24h")),
                        description="Seconds since the session's latest event (0 for a new session)"),
        OnDemandFeature(name="session_duration_seconds", dtype="float64", default=0.0, min_value=0.0,
                        expr=seconds_between(col("request_time"), col("session_first_event_at_24h")),
                        description="Seconds since the session started (0 for a new session)"),
        OnDemandFeature(name="session_cart_idle_seconds", dtype="float64", default=0.0, min_value=0.0,
                        expr=if_(ge(col("session_items_in_cart_not_purchased_24h"), 1),
                                 seconds_between(col("request_time"), col("session_last_cart_add_at_24h")), 0.0),
                        description="Seconds since the last add-to-cart while items remain unbought (else 0); "
                                    "the cart-abandonment trigger fires at 900"),
        OnDemandFeature(name="request_hour_of_day", dtype="int64", default=0, min_value=0, max_value=23,
                        expr=hour_of_day(col("request_time")), description="UTC hour of the request"),
        OnDemandFeature(name="request_day_of_week", dtype="int64", default=1, min_value=1, max_value=7,
                        expr=day_of_week(col("request_time")), description="ISO day of week of the request"),
    ),
)

# --------------------------------------------------------------------------------------- services
PURCHASE_PROPENSITY_V1: Final = FeatureService(
    name="purchase_propensity_v1",
    description="Everything the purchase-propensity model reads",
    views=(USER_COMMERCE, USER_ACCOUNT, SESSION_ACTIVITY, USER_RECENCY, USER_ACTIVITY_RATES, SESSION_CONTEXT),
    tags={"model": "purchase_propensity"},
)
CHURN_V1: Final = FeatureService(
    name="churn_v1",
    description="Everything the churn model reads",
    views=(USER_ACCOUNT, USER_COMMERCE, USER_RECENCY, USER_ACTIVITY_RATES),
    tags={"model": "churn"},
)
# For logs of transactions only (customer, time, amount: an imported sales export): every feature it reads is
# one such a log fills; clickstream features (views, carts, logins, devices) would be constant there.
CUSTOMER_VALUE_V1: Final = FeatureService(
    name="customer_value_v1",
    description="Recency, frequency, customer age, monetary value, inter-purchase time and spend and orders over "
                "90, 180, 365 days and lifetime: what a transaction-only log can fill",
    views=(USER_VALUE, CUSTOMER_VALUE),
    tags={"model": "repurchase", "source": "transactions"},
)
SESSION_TRIGGERS_V1: Final = FeatureService(
    name="session_triggers_v1",
    description="Session features behind behavioural triggers (cart abandonment, inactivity, time on page)",
    views=(SESSION_ACTIVITY, SESSION_CONTEXT),
    tags={"consumer": "decision_layer"},
)
