"""Adversarial event logs for engine tests: late, out-of-order, duplicate, no-consent,
sessionless events, midnight and month boundaries. Deterministic from a seed."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from features.events import EventType
from tests.builders import DEFAULT_PROPERTIES, make_event

START = datetime(2026, 10, 31, 22, 0, tzinfo=UTC)  # crosses midnight and a month boundary


def adversarial_log(seed: int, *, users: int = 3, events: int = 400, span: timedelta = timedelta(hours=5),
                    allowed_lateness: timedelta = timedelta(hours=1)) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    types = list(EventType)
    for _i in range(events):
        et = START + timedelta(seconds=rng.uniform(0, span.total_seconds()))
        et = et.replace(microsecond=0) if rng.random() < 0.5 else et  # many exact-second ties
        r = rng.random()
        if r < 0.08:
            delay = allowed_lateness + timedelta(seconds=rng.uniform(1, 3600))  # too late
        elif r < 0.30:
            delay = timedelta(seconds=rng.uniform(30, allowed_lateness.total_seconds()))  # out of order
        elif r < 0.32:
            delay = allowed_lateness  # exactly at the limit: still counts
        else:
            delay = timedelta(seconds=rng.uniform(0, 3))
        etype = rng.choice(types)
        props = dict(DEFAULT_PROPERTIES[etype])
        for k, v in props.items():
            if isinstance(v, bool):
                props[k] = rng.random() < 0.7
            elif isinstance(v, int):
                props[k] = rng.randint(0, 4)
            elif isinstance(v, float):
                props[k] = round(rng.uniform(0, 100), 2)
            elif k == "category":
                props[k] = rng.choice(["shoes", "bags", "hats", "tops"])
            elif k == "product_id":
                props[k] = f"p{rng.randint(1, 6)}"
            elif k == "page":
                props[k] = rng.choice(["/", "/cart", "/help", "/p/1"])
        user = f"u{rng.randint(1, users)}"
        session = None if rng.random() < 0.05 else f"{user}-s{rng.randint(1, 2)}"
        e = make_event(etype, user_id=user, session_id=session, event_time=et, ingest_delay=delay,
                       consent=rng.random() > 0.03, device_id=f"d{rng.randint(1, 3)}", **props)
        out.append(e)
        if rng.random() < 0.05:  # a duplicate re-sent later
            out.append(dict(e, ingest_time=e["ingest_time"] + timedelta(seconds=rng.uniform(0, 600))))
    # the classes an independent oracle found (a separate generator, so the log above stays as it was)
    extra = random.Random(seed + 10_000)
    for _ in range(max(1, events // 100)):
        user = f"u{extra.randint(1, users)}"
        other = f"u{extra.randint(1, users)}"
        at = START + timedelta(seconds=extra.uniform(0, span.total_seconds()))
        out += clock_ahead_retry(user, at, ahead=timedelta(seconds=extra.uniform(1, 300)),
                                 retry_after=allowed_lateness - timedelta(seconds=extra.uniform(1, 600)))
        if other != user:
            out += id_under_two_users(user, other, at + timedelta(seconds=extra.uniform(0, 3600)),
                                      gap=timedelta(seconds=extra.uniform(0, 900)))
    rng.shuffle(out)
    return out


def clock_ahead_retry(user: str, at: datetime, *, ahead: timedelta = timedelta(minutes=3),
                      retry_after: timedelta = timedelta(minutes=59), event_type: EventType = EventType.LOGIN,
                      **props: Any) -> list[dict[str, Any]]:
    """A login whose client clock ran ``ahead`` arrives at ``at`` (validation clamps its time to ``at``); the
    client retries it, same id and payload, ``retry_after`` past its own (unclamped) time: not late, a duplicate.

    The stream used to forget the id at the clamped time plus the lateness and count the retry again."""
    eid = f"retry-{user}-{at.timestamp():.6f}"
    stamped = at + ahead
    first = make_event(event_type, user_id=user, session_id=f"{user}-s9", event_id=eid, event_time=stamped,
                       ingest_delay=-ahead, **props)
    retry = make_event(event_type, user_id=user, session_id=f"{user}-s9", event_id=eid, event_time=stamped,
                       ingest_delay=retry_after, **props)
    return [first, retry]


def id_under_two_users(user: str, other: str, at: datetime, *, gap: timedelta = timedelta(minutes=5),
                       event_type: EventType = EventType.LOGIN) -> list[dict[str, Any]]:
    """The same ``event_id`` under two users, ``gap`` apart: ids are unique per user, so both count, and the
    second is an ``id_collision`` in every engine's report."""
    eid = f"shared-{at.timestamp():.6f}"
    return [make_event(event_type, user_id=user, session_id=f"{user}-s8", event_id=eid, event_time=at),
            make_event(event_type, user_id=other, session_id=f"{other}-s8", event_id=eid, event_time=at + gap)]


def minimal_logs() -> dict[str, list[dict[str, Any]]]:
    """One minimal log per class the independent oracle found (issue 14), as written in the issue."""
    noon = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    retry = clock_ahead_retry("u1", noon, ahead=timedelta(minutes=3), retry_after=timedelta(minutes=59))
    between = make_event(EventType.PAGE_VIEW, user_id="u1", session_id="u1-s9", event_time=noon + timedelta(
        hours=1, seconds=30))
    return {
        "clock_ahead_retry": [*retry, between],
        "id_under_two_users": id_under_two_users("a", "b", noon, gap=timedelta(minutes=5)),
        "session_of_two_users": session_of_two_users(noon),
    }


def session_of_two_users(at: datetime) -> list[dict[str, Any]]:
    """Users a and b both send events with session ``s1`` minutes apart (b's are collisions while a's session
    lives); two days later, after every tile of it has expired, b reuses ``s1`` and owns it: no collision, and
    a's event in ``s1`` a minute after b's is now the collision (3 in all)."""
    out = [make_event(EventType.PAGE_VIEW, user_id="a", session_id="s1", event_time=at),
           make_event(EventType.ADD_TO_CART, user_id="a", session_id="s1", event_time=at + timedelta(minutes=1)),
           make_event(EventType.ADD_TO_CART, user_id="b", session_id="s1", event_time=at + timedelta(minutes=3)),
           make_event(EventType.PAGE_VIEW, user_id="b", session_id="s1", event_time=at + timedelta(minutes=4)),
           make_event(EventType.CHECKOUT_START, user_id="a", session_id="s1", event_time=at + timedelta(minutes=6))]
    later = at + timedelta(days=2)
    out += [make_event(EventType.PAGE_VIEW, user_id="b", session_id="s1", event_time=later),
            make_event(EventType.PAGE_VIEW, user_id="a", session_id="s1", event_time=later + timedelta(minutes=1)),
            make_event(EventType.ADD_TO_CART, user_id="b", session_id="s1", event_time=later + timedelta(minutes=2))]
    return out
