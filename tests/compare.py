"""The parity tolerance, in one place: floats within 1e-9 (absolute and relative), all else equal."""

from __future__ import annotations

from typing import Any

from validation import parity
from validation.parity import FLOAT_TOLERANCE as TOLERANCE

__all__ = ["TOLERANCE", "same", "same_typed"]


def same(a: Any, b: Any) -> bool:
    """Equal, with floats compared within the parity tolerance (features/SEMANTICS.md); ``make parity``'s rule."""
    return parity.same(a, b)


def same_typed(a: Any, b: Any) -> bool:
    """:func:`same`, and of the same Python type (an int is not a float, a list not a tuple)."""
    if isinstance(a, float) and isinstance(b, float):
        return same(a, b)
    return type(a) is type(b) and bool(a == b)
