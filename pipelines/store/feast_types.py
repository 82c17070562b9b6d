"""Spec dtypes as Feast types: the Feast face of the offline-table contract (:mod:`pipelines.store.offline`)."""

from __future__ import annotations

from typing import Any

from feast.types import Array, Bool, Float64, Int64, String, UnixTimestamp

FEAST_TYPES: dict[str, Any] = {
    "int64": Int64,
    "float64": Float64,
    "string": String,
    "bool": Bool,
    "timestamp": UnixTimestamp,
    "array<string>": Array(String),
}
