"""Conditions of the business rules, written as text and compiled to the specs' expression language.

A rule's ``when`` is a small boolean expression over feature values, scores and the request context,
e.g. ``"purchase_propensity > 0.8"`` or ``"login_frequency_decrease > 0.5 and help_search > 3"``. It is
parsed with :mod:`ast` (only the node types below are accepted: no calls, no attributes, no subscripts)
and translated to a :mod:`features.expr` tree, so the null semantics are the specs' own: a comparison
with a missing value is null, and a condition that is null **does not hold**.

Grammar: names, numbers, strings, ``True``/``False``/``None``; ``+ - * /`` and unary ``-``;
``< <= > >= == !=`` (chains allowed), ``in`` / ``not in`` a literal list or tuple; ``and``, ``or``, ``not``.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from features import expr as fx


class ConditionError(ValueError):
    """A condition that does not parse, or uses something outside the grammar."""


def _and(a: fx.Expr, b: fx.Expr) -> fx.Expr:
    return fx.if_(a, b, fx.lit(False))


def _or(a: fx.Expr, b: fx.Expr) -> fx.Expr:
    return fx.if_(a, fx.lit(True), b)


def _compare(op: ast.cmpop, a: fx.Expr, b: fx.Expr) -> fx.Expr:
    if isinstance(op, ast.GtE):
        return fx.ge(a, b)
    if isinstance(op, ast.LtE):
        return fx.ge(b, a)
    if isinstance(op, ast.Gt):
        return fx.not_(fx.ge(b, a))
    if isinstance(op, ast.Lt):
        return fx.not_(fx.ge(a, b))
    if isinstance(op, ast.Eq):
        return fx.eq(a, b)
    if isinstance(op, ast.NotEq):
        return fx.not_(fx.eq(a, b))
    raise ConditionError(f"comparison {type(op).__name__} is not supported")


def _membership(op: ast.cmpop, a: fx.Expr, options: ast.expr, text: str) -> fx.Expr:
    if not isinstance(options, ast.List | ast.Tuple) or not options.elts:
        raise ConditionError(f"{text!r}: 'in' takes a non-empty literal list")
    out: fx.Expr | None = None
    for e in options.elts:
        term = fx.eq(a, _translate(e, text))
        out = term if out is None else _or(out, term)
    assert out is not None
    return out if isinstance(op, ast.In) else fx.not_(out)


_ARITH: dict[type[ast.operator], Callable[[fx.Expr, fx.Expr], fx.Expr]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _translate(node: ast.expr, text: str) -> fx.Expr:
    if isinstance(node, ast.Name):
        return fx.col(node.id)
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, bool | int | float | str):
            return fx.lit(node.value)
        raise ConditionError(f"{text!r}: constant {node.value!r} is not supported")
    if isinstance(node, ast.BoolOp):
        parts = [_translate(v, text) for v in node.values]
        combine = _and if isinstance(node.op, ast.And) else _or
        out = parts[0]
        for p in parts[1:]:
            out = combine(out, p)
        return out
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            return fx.not_(_translate(node.operand, text))
        if isinstance(node.op, ast.USub):
            return fx.lit(0) - _translate(node.operand, text)
        raise ConditionError(f"{text!r}: unary {type(node.op).__name__} is not supported")
    if isinstance(node, ast.BinOp):
        fn = _ARITH.get(type(node.op))
        if fn is None:
            raise ConditionError(f"{text!r}: operator {type(node.op).__name__} is not supported")
        return fn(_translate(node.left, text), _translate(node.right, text))
    if isinstance(node, ast.Compare):
        terms: list[fx.Expr] = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                terms.append(_membership(op, _translate(left, text), right, text))
            else:
                terms.append(_compare(op, _translate(left, text), _translate(right, text)))
            left = right
        out = terms[0]
        for t in terms[1:]:
            out = _and(out, t)
        return out
    raise ConditionError(f"{text!r}: {type(node).__name__} is not supported in a condition")


@lru_cache(maxsize=1024)
def compile_condition(text: str) -> fx.Expr:
    """The :mod:`features.expr` tree of a condition (cached by text)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ConditionError(f"{text!r} does not parse: {e.msg}") from None
    return _translate(tree.body, text)


def holds(text: str, row: Mapping[str, Any]) -> bool:
    """Whether the condition is true over ``row`` (null and missing values make it false)."""
    v = compile_condition(text).fn(row)
    return v is not None and bool(v)


def columns(text: str) -> frozenset[str]:
    """The names a condition reads."""
    return compile_condition(text).columns()
