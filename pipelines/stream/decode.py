"""Decoding and validating the stream's events: a msgspec fast path, and :func:`features.events.validate_event`.

:func:`decode_event` decodes and checks a JSON event in C (a msgspec type built from the event schema); whatever
it does not accept goes through ``validate_event``, which decides and names the problems, so both paths give
the same records and errors (:func:`validate_payload`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Optional

import msgspec

from features.events import ALL_FIELDS, EVENT_PROPERTIES, PROPERTY_NAMES, REQUIRED_COMMON, validate_event
from pipelines.ingest.eventlog import decode_json
from pipelines.stream.types import Event, Invalid, Positioned, kafka_raw


def _fast_event_struct() -> Any:
    """A msgspec type that decodes and checks one event in C, field by field as :func:`validate_event` does."""
    fields: list[tuple[str, Any, None]] = []
    for f in ALL_FIELDS:
        t: Any
        lo = f.min_value
        hi = f.max_value
        if f.dtype == "string":
            if f.allowed is not None:
                t = Literal.__getitem__(tuple(sorted(str(v) for v in f.allowed)))
            else:
                t = Annotated[str, msgspec.Meta(min_length=1, max_length=f.max_length)]
        elif f.dtype == "bool":
            t = bool
        elif f.dtype == "timestamp":
            t = Annotated[datetime, msgspec.Meta(tz=True)]
        elif f.dtype == "int64":
            t = Annotated[int, msgspec.Meta(ge=None if lo is None else int(lo), le=None if hi is None else int(hi))]
        else:
            t = Annotated[float, msgspec.Meta(ge=lo, le=hi)]
        fields.append((f.name, Optional[t], None))  # noqa: UP045 - a runtime type for msgspec
    return msgspec.defstruct("_FastEvent", fields, forbid_unknown_fields=True, gc=False)


_FAST_DECODER = msgspec.json.Decoder(_fast_event_struct())
_FAST_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)
_REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    str(et): tuple(REQUIRED_COMMON) + tuple(sorted(req)) for et, (req, _) in EVENT_PROPERTIES.items()}
_FORBIDDEN_BY_TYPE: dict[str, tuple[str, ...]] = {
    str(et): tuple(sorted(PROPERTY_NAMES - req - opt)) for et, (req, opt) in EVENT_PROPERTIES.items()}


def decode_event(payload: str | bytes) -> Event | None:
    """The record :func:`validate_event` makes of a JSON event, or None to take its path (invalid or unusual).

    Sound, not complete: it accepts only what ``validate_event`` accepts and returns the same record (typed
    fields, UTC times, None for missing ones); anything else (a wrong type, an int as 2.0, a client clock ahead
    of ``ingest_time``...) goes through ``validate_event``, which names the problems.
    """
    try:
        rec: Event = msgspec.structs.asdict(_FAST_DECODER.decode(payload))
    except _FAST_ERRORS:
        return None
    etype = rec["event_type"]
    if etype is None:
        return None
    for name in _REQUIRED_BY_TYPE[etype]:
        if rec[name] is None:
            return None
    for name in _FORBIDDEN_BY_TYPE[etype]:
        if rec[name] is not None:
            return None
    et, it = rec["event_time"], rec["ingest_time"]
    if et.tzinfo is not UTC:
        et = rec["event_time"] = et.astimezone(UTC)
    if it.tzinfo is not UTC:
        it = rec["ingest_time"] = it.astimezone(UTC)
    if et > it:  # clamped or rejected by validate_event
        return None
    return rec


def validate_payload(item: Any) -> tuple[bool, Positioned | Invalid]:
    """(True, (position, event)) or (False, (position, payload, errors)); items are Raw or Kafka messages."""
    pos, payload = item if isinstance(item, tuple) else kafka_raw(item)
    if isinstance(payload, bytearray):
        payload = bytes(payload)
    if isinstance(payload, str | bytes):
        record = decode_event(payload)
        if record is not None:
            return True, (pos, record)
    try:
        raw = decode_json(payload) if isinstance(payload, str | bytes) else dict(payload)
    except (ValueError, TypeError) as exc:  # not JSON, not UTF-8, not an object
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        return False, Invalid(pos, text, (("payload", f"is not a JSON event object: {exc}"),))
    record, errors = validate_event(raw)
    if record is None:
        return False, Invalid(pos, raw, tuple((e.field, e.problem) for e in errors))
    return True, (pos, record)


def validate_batch(items: list[Any]) -> list[tuple[str, Positioned] | Invalid]:
    """Valid events keyed by ``user_id`` (the admission key), and the invalid ones."""
    out: list[tuple[str, Positioned] | Invalid] = []
    for item in items:
        ok, checked = validate_payload(item)
        if ok:
            pos, record = checked  # type: ignore[misc]
            out.append((str(record["user_id"]), (pos, record)))
        else:
            out.append(checked)  # type: ignore[arg-type]
    return out

