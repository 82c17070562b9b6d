"""The stream's fast paths against the definitions they shortcut: validation, casts, merges."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from features.aggregations import AGGREGATORS, Count, Max, Min, Sum
from features.events import validate_event
from features.registry import REGISTRY
from pipelines.ingest.eventlog import decode_json, encode_json
from pipelines.stream.decode import decode_event, validate_payload
from tests.adversarial import adversarial_log
from tests.builders import raw_event


def _lines() -> list[str]:
    return [encode_json(e) for e in adversarial_log(1)]


def test_fast_validation_returns_the_record_validate_event_returns() -> None:
    lines = _lines()
    assert lines
    for line in lines:
        record, errors = validate_event(decode_json(line))
        assert not errors
        fast = decode_event(line.encode())
        assert fast == record and list(fast) == list(record)  # same values, same field order
        assert all(type(fast[k]) is type(record[k]) for k in record)


@pytest.mark.parametrize("change", [
    {"amount": -5.0}, {"quantity": 2.0}, {"quantity": True}, {"event_type": "teleport"}, {"user_id": ""},
    {"country": "DEU"}, {"price": "12"}, {"surprise": 1}, {"ingest_time": "2026-10-01T12:00:00"},
    {"event_time": "2026-10-01T12:04:00+02:00"}, {"page": "/x"}, {"amount": None}, {"schema_version": 2},
    {"consent_analytics": 1}, {"event_time": "2026-10-01T12:10:00Z", "ingest_time": "2026-10-01T12:00:00Z"},
    {"event_time": "2026-10-01T12:03:00Z", "ingest_time": "2026-10-01T12:00:00Z"},
])
def test_whatever_the_fast_path_does_not_accept_is_decided_by_validate_event(change: dict[str, Any]) -> None:
    raw = {**json.loads(encode_json(raw_event("purchase"))), **change}
    line = json.dumps(raw)
    record, errors = validate_event(decode_json(line))
    fast = decode_event(line)
    assert fast is None or fast == record, "the fast path accepted something validate_event does not"
    ok, checked = validate_payload(("log:1", line))
    if record is None:
        assert not ok and [p[0] for p in checked[2]] == [e.field for e in errors]  # type: ignore[index,misc]
    else:
        assert ok and checked[1] == record  # type: ignore[index]


def test_casts_equal_the_spec_casts() -> None:
    t = datetime(2026, 10, 1, 12, 0, 0, 123456, tzinfo=UTC)
    samples: dict[str, list[Any]] = {"int64": [None, 0, 3, 2.0], "float64": [None, 0, 1.5, 2],
                                     "string": [None, "", "a"], "bool": [None, True, False],
                                     "timestamp": [None, t], "array<string>": [None, [], ["a", 1]]}
    for view in REGISTRY.views:
        for f in view.features:
            cast = f.caster()
            for v in samples[f.dtype]:
                assert cast(v) == f.cast(v) and type(cast(v)) is type(f.cast(v))


@pytest.mark.parametrize("seed", range(20))
def test_merge_all_equals_merging_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.choice([rng.uniform(-1e6, 1e6), rng.randint(-5, 5), 0.1, 0.2, 0.3])
              for _ in range(rng.randint(0, 30))]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for op in (Count(), Sum(), Min(), Max(), *(cls() for kind, cls in AGGREGATORS.items()
                                                if kind in ("mean", "last", "count_distinct", "top_k"))):
        partials = []
        for chunk in range(0, len(values), 4):
            state = op.init()
            for k, v in enumerate(values[chunk:chunk + 4]):
                state = op.update(state, v, (t0 + timedelta(seconds=chunk + k), t0, f"e{chunk + k}"))
            partials.append(state)
        one_by_one = op.init()
        for p in partials:
            one_by_one = op.merge(one_by_one, p)
        merged = op.merge_all(partials)
        assert op.finalize(merged) == op.finalize(one_by_one)
        assert type(op.finalize(merged)) is type(op.finalize(one_by_one))
