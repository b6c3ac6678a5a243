"""Bound tree → a closure over one event, specialised for one event type.

Specialising per event type lets fields the type decides (`evt.type`, `fd.name`
on `execve`) fold to constants: a rule whose condition folds to False for a type
is simply not in that type's rule list, which is the rule index. Closures are
built once at load; evaluating an event is a few nested calls, no tree walk.

Falco's missing-value rule holds: a comparison on a missing field (None) is
false, for `!=` too; `exists` tests for presence.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from detector.alerts import FieldValue
from detector.condition.ast import (
    LIST_OPS,
    And,
    BCompare,
    BExists,
    Const,
    Node,
    Not,
    Op,
    Or,
    Scalar,
)
from detector.fields import Extract, FieldDef, FieldEnv, Fixed

Pred = Callable[[Any], bool]
Compiled = Pred | bool  # a bool when the event type alone decides


def extractor(fdef: FieldDef, arg: str | None, evt_type: str, env: FieldEnv) -> Extract | Fixed:
    if fdef.bind is None:
        raise ValueError(f"{fdef.name} is output-only")
    return fdef.bind(evt_type, arg, env)


def compile_condition(node: Node, evt_type: str, env: FieldEnv) -> Compiled:
    if isinstance(node, BCompare):
        return _compare(node, evt_type, env)
    if isinstance(node, BExists):
        get = extractor(node.field, node.arg, evt_type, env)
        if isinstance(get, Fixed):
            return get.value is not None
        return lambda ev: get(ev) is not None
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Not):
        fused = _negated_compare(node.item, evt_type, env)
        if fused is not None:
            return fused
        inner = compile_condition(node.item, evt_type, env)
        if isinstance(inner, bool):
            return not inner
        return lambda ev: not inner(ev)
    if isinstance(node, And):
        return _junction(node.items, evt_type, env, conj=True)
    if isinstance(node, Or):
        return _junction(node.items, evt_type, env, conj=False)
    raise TypeError(f"unbound node {node!r}")  # the binder removes every other kind


def _negated_compare(node: Node, evt_type: str, env: FieldEnv) -> Pred | None:
    """`not f = v` and `not f in (…)` as one closure (`!=` / `not in` are exactly their
    negations, None included); the default rules' hooks are mostly of this shape."""
    if not isinstance(node, BCompare) or node.op not in (Op.EQ, Op.IN) or node.value == ():
        return None
    bound = extractor(node.field, node.arg, evt_type, env)
    if isinstance(bound, Fixed):
        return None  # folds to a constant the ordinary way
    get: Callable[[Any], Any] = bound
    v: Any = node.value
    if node.op is Op.EQ:
        return lambda ev: get(ev) != v
    members = frozenset(v)
    return lambda ev: get(ev) not in members


def _junction(items: tuple[Node, ...], evt_type: str, env: FieldEnv, conj: bool) -> Compiled:
    preds: list[Pred] = []
    for item in items:
        c = compile_condition(item, evt_type, env)
        if isinstance(c, bool):
            if c is not conj:  # False in an `and`, True in an `or` decides it
                return c
            continue
        preds.append(c)
    if not preds:
        return conj
    return _all(preds) if conj else _any(preds)


def _all(ps: list[Pred]) -> Pred:
    if len(ps) == 1:
        return ps[0]
    if len(ps) == 2:
        a, b = ps
        return lambda ev: a(ev) and b(ev)
    if len(ps) == 3:
        a, b, c = ps
        return lambda ev: a(ev) and b(ev) and c(ev)
    a, b, c = ps[0], ps[1], _all(ps[2:])
    return lambda ev: a(ev) and b(ev) and c(ev)


def _any(ps: list[Pred]) -> Pred:
    if len(ps) == 1:
        return ps[0]
    if len(ps) == 2:
        a, b = ps
        return lambda ev: a(ev) or b(ev)
    if len(ps) == 3:
        a, b, c = ps
        return lambda ev: a(ev) or b(ev) or c(ev)
    a, b, c = ps[0], ps[1], _any(ps[2:])
    return lambda ev: a(ev) or b(ev) or c(ev)


def value_test(op: Op, value: Scalar | tuple[Scalar, ...]) -> Callable[[FieldValue], bool]:
    """The test a field value must pass; None (missing) never passes."""
    if op in (Op.IN, Op.INTERSECTS):
        members = frozenset(value if isinstance(value, tuple) else (value,))
        return lambda x: x is not None and x in members
    if op is Op.PMATCH:
        roots = tuple(str(v).rstrip("/") for v in (value if isinstance(value, tuple) else ()))
        exact = frozenset(r or "/" for r in roots)
        prefixes = tuple(r + "/" for r in roots)
        return lambda x: isinstance(x, str) and (x in exact or x.startswith(prefixes))
    assert not isinstance(value, tuple)
    v: Any = value
    tests: dict[Op, Callable[[Any], bool]] = {
        Op.EQ: lambda x: x is not None and x == v,
        Op.NE: lambda x: x is not None and x != v,
        Op.LT: lambda x: x is not None and x < v,
        Op.LE: lambda x: x is not None and x <= v,
        Op.GT: lambda x: x is not None and x > v,
        Op.GE: lambda x: x is not None and x >= v,
        Op.CONTAINS: lambda x: x is not None and v in x,
        Op.STARTSWITH: lambda x: x is not None and x.startswith(v),
        Op.ENDSWITH: lambda x: x is not None and x.endswith(v),
    }
    if op in tests:
        return tests[op]
    if op is Op.ICONTAINS:
        low = str(v).lower()
        return lambda x: isinstance(x, str) and low in x.lower()
    if op in (Op.GLOB, Op.IGLOB):
        flags = re.IGNORECASE if op is Op.IGLOB else 0
        match = re.compile(fnmatch.translate(str(v)), flags | re.DOTALL).match
        return lambda x: isinstance(x, str) and match(x) is not None
    raise ValueError(f"no test for operator {op.value}")


def _compare(node: BCompare, evt_type: str, env: FieldEnv) -> Compiled:
    if node.value == () and node.op in LIST_OPS:
        return False  # an empty list (often an unextended hook list) matches nothing
    bound = extractor(node.field, node.arg, evt_type, env)
    test = value_test(node.op, node.value)
    if isinstance(bound, Fixed):
        return test(bound.value)
    get: Callable[[Any], Any] = bound
    # The hot operators get a closure without the second call.
    v: Any = node.value
    if node.op is Op.EQ:
        return lambda ev: get(ev) == v  # None never equals a typed value
    if node.op in (Op.IN, Op.INTERSECTS):
        members = frozenset(v)
        return lambda ev: get(ev) in members
    if node.op is Op.STARTSWITH:
        return lambda ev: (x := get(ev)) is not None and x.startswith(v)
    return lambda ev: test(get(ev))
