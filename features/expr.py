"""A tiny, engine-free expression language.

Specs use it for aggregation inputs (``col("price") * col("quantity")``), for
derived features (ratios, RFM scores) and for on-demand features. The reference
evaluates an expression with :meth:`Expr.evaluate` over a plain mapping; engines
compile the same tree to their own column expressions (Spark ``Column``, Python
for Bytewax) by walking it with :func:`walk`-style visitors, so a formula is
written once.

Null semantics: any arithmetic with a null gives null; ``coalesce`` replaces
nulls; division by zero gives null (never an exception, never ``inf``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

Number = int | float
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = timedelta(days=1)


class Expr(ABC):
    """Base class; build with :func:`col`, :func:`lit` and the operators."""

    @abstractmethod
    def evaluate(self, row: Mapping[str, Any]) -> Any:
        """The value of the expression over one row (event or feature row)."""

    @abstractmethod
    def columns(self) -> frozenset[str]:
        """Names of the inputs this expression reads."""

    @abstractmethod
    def _emit(self, gen: _CodeGen) -> str:
        """Append this node's statements to ``gen``; return the Python expression of its value."""

    @property
    def fn(self) -> Callable[[Mapping[str, Any]], Any]:
        """The compiled expression (built once, then cached on the node); engines call this per row.

        The tree is generated as the body of one Python function (one statement per
        node, locals for intermediate values), which is several times faster per row
        than calling a closure per node. :meth:`evaluate` stays the plain tree walk
        the reference uses, and a unit test checks that both agree.
        """
        compiled = self.__dict__.get("_fn")
        if compiled is None:
            compiled = _CodeGen.build(self)
            object.__setattr__(self, "_fn", compiled)
        return compiled

    def fn_over(self, names: Sequence[str]) -> Callable[[Sequence[Any]], Any]:
        """:attr:`fn` over a sequence of values named ``names`` in order, instead of a mapping (no lookups by
        name: the state machine evaluates derived features over its row this way). Every column must be named."""
        missing = self.columns() - set(names)
        if missing:
            raise ValueError(f"columns {sorted(missing)} are not among the names")
        return _CodeGen.build(self, {n: i for i, n in enumerate(names)})

    def source(self) -> str:
        """The generated Python source of :attr:`fn` (for debugging)."""
        return _CodeGen.render(self)[0]

    # operators ---------------------------------------------------------------------------
    def __add__(self, other: Expr | Number) -> Expr:
        return BinOp(op="+", left=self, right=_wrap(other))

    def __radd__(self, other: Number) -> Expr:
        return BinOp(op="+", left=_wrap(other), right=self)

    def __sub__(self, other: Expr | Number) -> Expr:
        return BinOp(op="-", left=self, right=_wrap(other))

    def __rsub__(self, other: Number) -> Expr:
        return BinOp(op="-", left=_wrap(other), right=self)

    def __mul__(self, other: Expr | Number) -> Expr:
        return BinOp(op="*", left=self, right=_wrap(other))

    def __rmul__(self, other: Number) -> Expr:
        return BinOp(op="*", left=_wrap(other), right=self)

    def __truediv__(self, other: Expr | Number) -> Expr:
        return BinOp(op="/", left=self, right=_wrap(other))

    def __rtruediv__(self, other: Number) -> Expr:
        return BinOp(op="/", left=_wrap(other), right=self)


class _CodeGen:
    """Turns an expression tree into the source of one function ``f(row)``."""

    def __init__(self, index: Mapping[str, int] | None = None) -> None:
        self.index = index  # column -> position: the function reads a sequence, not a mapping
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._n = 0

    def var(self) -> str:
        self._n += 1
        return f"v{self._n}"

    def const(self, value: Any) -> str:
        """A name bound to ``value`` in the function's globals."""
        name = f"c{len(self.consts)}"
        self.consts[name] = value
        return name

    def column(self, name: str) -> str:
        """The Python expression reading column ``name``."""
        return f"get({name!r})" if self.index is None else f"row[{self.index[name]}]"

    @classmethod
    def render(cls, expr: Expr, index: Mapping[str, int] | None = None) -> tuple[str, dict[str, Any]]:
        gen = cls(index)
        result = expr._emit(gen)
        body = "\n".join(f"    {line}" for line in gen.lines)
        head = "    get = row.get\n" if index is None else ""
        src = f"def f(row):\n{head}{body}\n    return {result}\n"
        return src, gen.consts

    @classmethod
    def build(cls, expr: Expr, index: Mapping[str, int] | None = None) -> Callable[[Any], Any]:
        src, consts = cls.render(expr, index)
        namespace: dict[str, Any] = dict(consts)
        exec(compile(src, f"<expr {type(expr).__name__}>", "exec"), namespace)  # our own generated source
        fn: Callable[[Mapping[str, Any]], Any] = namespace["f"]
        return fn


def _wrap(v: Expr | Number) -> Expr:
    return v if isinstance(v, Expr) else Lit(value=float(v) if isinstance(v, float) else v)


@dataclass(frozen=True, kw_only=True)
class Col(Expr):
    name: str

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        v = row.get(self.name)
        if isinstance(v, float) and math.isnan(v):
            return None
        return v

    def columns(self) -> frozenset[str]:
        return frozenset({self.name})

    def _emit(self, gen: _CodeGen) -> str:
        v = gen.var()
        gen.lines.append(f"{v} = {gen.column(self.name)}")
        gen.lines.append(f"if {v} != {v}: {v} = None")  # NaN is the only value unequal to itself
        return v


@dataclass(frozen=True, kw_only=True)
class Lit(Expr):
    value: Any

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        return self.value

    def columns(self) -> frozenset[str]:
        return frozenset()

    def _emit(self, gen: _CodeGen) -> str:
        if self.value is None or isinstance(self.value, bool | int | str):
            return repr(self.value)
        return gen.const(self.value)


@dataclass(frozen=True, kw_only=True)
class BinOp(Expr):
    OPS: ClassVar[tuple[str, ...]] = ("+", "-", "*", "/")
    op: str
    left: Expr
    right: Expr

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        a, b = self.left.evaluate(row), self.right.evaluate(row)
        if a is None or b is None:
            return None
        if self.op == "+":
            return a + b
        if self.op == "-":
            return a - b
        if self.op == "*":
            return a * b
        if b == 0:
            return None
        return a / b

    def columns(self) -> frozenset[str]:
        return self.left.columns() | self.right.columns()

    def _emit(self, gen: _CodeGen) -> str:
        a, b = self.left._emit(gen), self.right._emit(gen)
        v = gen.var()
        nulls = [x for x, e in ((a, self.left), (b, self.right)) if not (isinstance(e, Lit) and e.value is not None)]
        guard = " or ".join(f"{x} is None" for x in nulls)
        if self.op == "/":
            guard = f"{guard} or {b} == 0" if guard else f"{b} == 0"
        value = f"{a} {self.op} {b}"
        gen.lines.append(f"{v} = None if {guard} else {value}" if guard else f"{v} = {value}")
        return v


@dataclass(frozen=True, kw_only=True)
class Func(Expr):
    """A named function from :data:`FUNCTIONS` applied to arguments."""

    name: str
    args: tuple[Expr, ...]

    def evaluate(self, row: Mapping[str, Any]) -> Any:
        values = [a.evaluate(row) for a in self.args]
        return FUNCTIONS[self.name](*values)

    def columns(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for a in self.args:
            out |= a.columns()
        return out

    def _emit(self, gen: _CodeGen) -> str:
        args = [a._emit(gen) for a in self.args]
        fn = gen.const(FUNCTIONS[self.name])
        v = gen.var()
        gen.lines.append(f"{v} = {fn}({', '.join(args)})")
        return v


def _coalesce(*vs: Any) -> Any:
    for v in vs:
        if v is not None:
            return v
    return None


def _least(*vs: Any) -> Any:
    for v in vs:
        if v is None:
            return None
    return min(vs)


def _greatest(*vs: Any) -> Any:
    for v in vs:
        if v is None:
            return None
    return max(vs)


def _seconds_between(later: Any, earlier: Any) -> Any:
    if later is None or earlier is None:
        return None
    if not (isinstance(later, datetime) and isinstance(earlier, datetime)):
        raise TypeError("seconds_between takes two datetimes")
    return (later - earlier).total_seconds()


def _length(v: Any) -> Any:
    return None if v is None else len(v)


def _ln1p(v: Any) -> Any:
    return None if v is None else math.log1p(max(v, 0.0))


def _hour_of_day(v: Any) -> Any:
    return None if v is None else v.hour


def _day_of_week(v: Any) -> Any:
    return None if v is None else v.isoweekday()  # 1 = Monday ... 7 = Sunday


def _utc_day(v: Any) -> Any:
    # whole UTC days since the Unix epoch: floor division, so a time before midnight is the day before
    return None if v is None else (v - _EPOCH) // _DAY


def _eq(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a == b


def _contains_any(a: Any, *words: str) -> Any:
    if a is None:
        return None
    text = str(a).lower()
    return any(w in text for w in words)


def _ge(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a >= b


def _not(a: Any) -> Any:
    return None if a is None else not a


def _if(cond: Any, then: Any, other: Any) -> Any:
    return then if cond else other


FUNCTIONS: dict[str, Any] = {
    "if": _if,
    "eq": _eq,
    "contains_any": _contains_any,
    "ge": _ge,
    "not": _not,
    "coalesce": _coalesce,
    "least": _least,
    "greatest": _greatest,
    "seconds_between": _seconds_between,
    "length": _length,
    "ln1p": _ln1p,
    "hour_of_day": _hour_of_day,
    "day_of_week": _day_of_week,
    "utc_day": _utc_day,
}


def col(name: str) -> Col:
    return Col(name=name)


def lit(value: Any) -> Lit:
    return Lit(value=value)


def coalesce(*args: Expr | Number) -> Func:
    return Func(name="coalesce", args=tuple(_wrap(a) for a in args))


def least(*args: Expr | Number) -> Func:
    return Func(name="least", args=tuple(_wrap(a) for a in args))


def greatest(*args: Expr | Number) -> Func:
    return Func(name="greatest", args=tuple(_wrap(a) for a in args))


def clip(x: Expr, lo: Number, hi: Number) -> Func:
    return least(greatest(x, lo), hi)


def seconds_between(later: Expr, earlier: Expr) -> Func:
    return Func(name="seconds_between", args=(later, earlier))


def length(x: Expr) -> Func:
    return Func(name="length", args=(x,))


def ln1p(x: Expr) -> Func:
    return Func(name="ln1p", args=(x,))


def hour_of_day(x: Expr) -> Func:
    return Func(name="hour_of_day", args=(x,))


def day_of_week(x: Expr) -> Func:
    return Func(name="day_of_week", args=(x,))


def utc_day(x: Expr) -> Func:
    """The UTC calendar day of a time, as whole days since 1970-01-01 (null for null)."""
    return Func(name="utc_day", args=(x,))


def eq(a: Expr | Number | str, b: Expr | Number | str) -> Func:
    return Func(name="eq", args=(_wrap_any(a), _wrap_any(b)))


def contains_any(a: Expr, words: tuple[str, ...]) -> Func:
    """Whether the text ``a``, lower-cased, contains one of ``words`` (null when ``a`` is null)."""
    if not words or any(w != w.lower() or not w for w in words):
        raise ValueError(f"contains_any needs non-empty lower-case words, got {words!r}")
    return Func(name="contains_any", args=(a, *(Lit(value=w) for w in words)))


def ge(a: Expr | Number, b: Expr | Number) -> Func:
    return Func(name="ge", args=(_wrap(a), _wrap(b)))


def not_(a: Expr) -> Func:
    return Func(name="not", args=(a,))


def _wrap_any(v: Expr | Number | str) -> Expr:
    return v if isinstance(v, Expr) else Lit(value=v)


def if_(cond: Expr, then: Expr | Number, otherwise: Expr | Number) -> Func:
    """``then`` where ``cond`` is true, else ``otherwise`` (a null condition counts as false)."""
    return Func(name="if", args=(cond, _wrap(then), _wrap(otherwise)))
