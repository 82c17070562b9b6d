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
    rng.shuffle(out)
    return out
