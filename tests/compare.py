"""The parity tolerance, in one place: floats within 1e-9 (absolute and relative), all else equal."""

from __future__ import annotations

import math
from typing import Any

TOLERANCE = 1e-9


def same(a: Any, b: Any) -> bool:
    """Equal, with floats compared within the parity tolerance (features/SEMANTICS.md)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
    return bool(a == b)


def same_typed(a: Any, b: Any) -> bool:
    """:func:`same`, and of the same Python type (an int is not a float, a list not a tuple)."""
    if isinstance(a, float) and isinstance(b, float):
        return same(a, b)
    return type(a) is type(b) and bool(a == b)
