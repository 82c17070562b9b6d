"""The seeds' triggers, declared once beside the features they read (features/SEMANTICS.md, "Triggers").

Absence triggers ("Y did not follow X within N") fire by themselves at their deadline in data time; condition
triggers fire when an expression over one view's features becomes true. Engines, the reference
(:mod:`features.trigger_reference`) and the decision layer enumerate :data:`TRIGGERS` and look triggers up by
name with :func:`trigger`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from features import catalog
from features.events import EventType as E
from features.expr import col, eq
from features.registry import REGISTRY
from features.triggers import (
    AbsenceTrigger,
    ConditionTrigger,
    Trigger,
    all_of,
    check_triggers,
    ge,
    gt,
    le,
    lt,
)

# Events that keep a visitor on the page they are on; every other event navigates away from it.
_ON_PAGE: Final = frozenset({E.PAGE_VIEW, E.SCROLL, E.VIDEO_PROGRESS, E.SHARE})

# ------------------------------------------------------------------------------------- absence
CART_ABANDONED_15M: Final = AbsenceTrigger(
    name="cart_abandoned_15m",
    entity=catalog.SESSION,
    start_types=frozenset({E.ADD_TO_CART}),
    cancel_types=frozenset({E.CHECKOUT_START, E.PURCHASE}),
    within=timedelta(minutes=15),
    description="An add-to-cart followed by no checkout or purchase in the session within 15 minutes (a newer "
                "add-to-cart restarts the clock)",
    tags={"seed": "cart abandonment", "action": "offer"},
)
SESSION_INACTIVE_5M: Final = AbsenceTrigger(
    name="session_inactive_5m",
    entity=catalog.SESSION,
    start_types=frozenset(E),
    within=timedelta(minutes=5),
    description="Five minutes without any event in the session (every event restarts the clock)",
    tags={"seed": "inactivity", "action": "help modal"},
)
PAGE_DWELL_2M: Final = AbsenceTrigger(
    name="page_dwell_2m",
    entity=catalog.SESSION,
    start_types=frozenset({E.PAGE_VIEW}),
    cancel_types=frozenset(E) - _ON_PAGE,
    within=timedelta(minutes=2),
    description="More than 2 minutes on a page: a page view followed within 2 minutes by no event that leaves "
                "the page (scrolls, video progress and shares stay on it; a new page view restarts the clock)",
    tags={"seed": "time on page", "action": "content"},
)
ONBOARDING_STEP_STALLED_1H: Final = AbsenceTrigger(
    name="onboarding_step_stalled_1h",
    entity=catalog.USER,
    start_types=frozenset({E.ONBOARDING_STEP}),
    start_where=eq(col("completed"), False),
    cancel_types=frozenset({E.ONBOARDING_STEP}),
    cancel_where=eq(col("completed"), True),
    within=timedelta(hours=1),
    description="An onboarding step left uncompleted and no onboarding step completed within an hour",
    tags={"seed": "onboarding step abandoned", "action": "tooltip"},
)

# ------------------------------------------------------------------------------------- conditions
CART_3_ITEMS: Final = ConditionTrigger(
    name="cart_3_items",
    view=catalog.SESSION_ACTIVITY,
    when=ge(col("session_items_in_cart_not_purchased_24h"), 3),
    description="Three or more units in the session's cart (added, neither removed nor bought, in 24 hours)",
    tags={"seed": "3+ items in cart", "action": "offer"},
)
CHURN_RISK: Final = ConditionTrigger(
    name="churn_risk",
    view=catalog.USER_ACCOUNT,
    when=all_of(lt(col("user_login_freq_change_7d"), -0.5), gt(col("user_help_searches_7d"), 3)),
    description="The seeds' churn rule: login_frequency_decrease > 50% AND help_search > 3 (7-day logins below "
                "half the weekly rate of the 23 days before, and more than 3 help searches in 7 days)",
    tags={"seed": "churn risk", "action": "retention offer"},
)
ENGAGEMENT_ABOVE_70: Final = ConditionTrigger(
    name="engagement_above_70",
    view=catalog.SESSION_ACTIVITY,
    when=gt(col("session_engagement_score_5m"), 70.0),
    cooldown=timedelta(minutes=30),
    description="The 5-minute session engagement (activity) score rises above 70 (at most once per 30 minutes)",
    tags={"seed": "activity score above 70", "action": "advanced tips"},
)
REPEAT_VIEWS_NO_PURCHASE: Final = ConditionTrigger(
    name="repeat_views_no_purchase",
    view=catalog.USER_COMMERCE,
    when=all_of(ge(col("user_product_views_24h") - col("user_distinct_products_viewed_24h"), 2),
                le(col("user_qty_purchased_24h"), 0)),
    description="Products viewed again and again without buying: at least 2 repeat product views (views beyond "
                "the distinct products, as one product viewed 3 times) and nothing bought in 24 hours. Per user: "
                "the catalogue has no per-product view count",
    tags={"seed": "product viewed 3+ times without purchase", "action": "offer"},
)
FEATURE_USED_3X: Final = ConditionTrigger(
    name="feature_used_3x",
    view=catalog.USER_ACCOUNT,
    when=ge(col("user_feature_uses_7d"), 3),
    description="Three or more product-feature uses in 7 days (any feature: the catalogue counts them per user)",
    tags={"seed": "feature visited three times", "action": "tutorial"},
)
FIRST_PURCHASE: Final = ConditionTrigger(
    name="first_purchase",
    view=catalog.USER_VALUE,
    when=ge(col("user_orders_lifetime"), 1),
    description="The customer's first order (a payment completed): fires once, as a lifetime count never drops",
    tags={"seed": "onboarding payment completed", "action": "thank-you offer"},
)

TRIGGERS: Final[tuple[Trigger, ...]] = check_triggers((
    CART_ABANDONED_15M, SESSION_INACTIVE_5M, PAGE_DWELL_2M, ONBOARDING_STEP_STALLED_1H,
    CART_3_ITEMS, CHURN_RISK, ENGAGEMENT_ABOVE_70, REPEAT_VIEWS_NO_PURCHASE, FEATURE_USED_3X, FIRST_PURCHASE,
))

for _t in TRIGGERS:
    if isinstance(_t, ConditionTrigger) and _t.view not in REGISTRY.views:
        raise ValueError(f"trigger {_t.name!r} reads view {_t.view.name!r}, which is not registered")
    if isinstance(_t, AbsenceTrigger) and _t.entity not in REGISTRY.entities:
        raise ValueError(f"trigger {_t.name!r}: entity {_t.entity.name!r} is not registered")


def trigger(name: str) -> Trigger:
    """The trigger named ``name``."""
    for t in TRIGGERS:
        if t.name == name:
            return t
    raise KeyError(f"no trigger named {name!r}; known: {[t.name for t in TRIGGERS]}")
