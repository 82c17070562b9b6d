"""One home for "a stored value as the spec has it": cells of Feast's online dicts, historical frames,
Spark's ``toPandas`` and the stream's changelog all become spec values here."""

from __future__ import annotations

from typing import Any

import pandas as pd

from features import spec


def is_null(v: Any) -> bool:
    """None, NaN, NaT or NA: a missing scalar (lists and strings are values)."""
    if v is None:
        return True
    if isinstance(v, str | bytes) or hasattr(v, "__len__"):
        return False
    return bool(pd.isna(v))


def spec_value(feature: spec.Feature, value: Any) -> Any:
    """A value as Feast returns it (online dicts, historical frames) as the spec has it.

    Nulls (None, NaN, NaT, NA) take the feature's default; timestamps become
    timezone-aware UTC datetimes (naive ones are UTC, as Spark returns them);
    arrays become lists; numbers the spec's int or float.
    """
    if is_null(value):
        return feature.cast(None)
    if feature.dtype == "timestamp":
        ts = pd.Timestamp(value)
        value = (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
    elif feature.dtype == "array<string>":
        value = list(value)
    return feature.cast(value)



def nullable_spec_value(feature: spec.Feature, value: Any) -> Any:
    """:func:`spec_value`, but a null stays ``None`` instead of taking the default: for comparisons that must
    see a missing value as missing (parity of stored cells)."""
    return None if is_null(value) else spec_value(feature, value)


def spec_column(col: pd.Series, f: spec.Feature) -> pd.Series:
    """A frame column as the spec types it: nulls to the feature's default, values to its dtype
    (timestamps ``datetime64[us, UTC]``, arrays lists, numbers int64/float64)."""
    if f.dtype == "timestamp":
        return pd.to_datetime(col, utc=True).astype("datetime64[us, UTC]")
    if f.dtype == "array<string>":
        return pd.Series([f.cast(None if is_null(v) else list(v)) for v in col], index=col.index, dtype=object)
    filled = col.where(col.notna(), f.default) if f.default is not None else col
    return filled.astype({"int64": "int64", "float64": "float64", "bool": "bool"}.get(f.dtype, object))
