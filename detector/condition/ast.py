"""Syntax and bound trees of a condition.

The syntax tree is what the text says (`Compare` on a field name, `MacroRef`);
the bound tree (`BCompare`, `BExists`) holds looked-up fields and typed values.
`And`/`Or`/`Not`/`Const` are shared by both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detector.fields import FieldDef


class Op(enum.Enum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    INTERSECTS = "intersects"
    PMATCH = "pmatch"
    CONTAINS = "contains"
    ICONTAINS = "icontains"
    STARTSWITH = "startswith"
    ENDSWITH = "endswith"
    GLOB = "glob"
    IGLOB = "iglob"
    EXISTS = "exists"


SYMBOL_OPS = {
    "=": Op.EQ,
    "==": Op.EQ,
    "!=": Op.NE,
    "<": Op.LT,
    "<=": Op.LE,
    ">": Op.GT,
    ">=": Op.GE,
}
WORD_OPS = {
    op.value: op
    for op in Op
    if op.value.isalpha()  # in, contains, …, exists
}
LIST_OPS = frozenset({Op.IN, Op.INTERSECTS, Op.PMATCH})
ORDER_OPS = frozenset({Op.LT, Op.LE, Op.GT, Op.GE})
STRING_OPS = frozenset(
    {Op.CONTAINS, Op.ICONTAINS, Op.STARTSWITH, Op.ENDSWITH, Op.GLOB, Op.IGLOB, Op.PMATCH}
)


# --- syntax tree -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    """A value as written: a bare word or a quoted string, at offset `pos`."""

    text: str
    quoted: bool
    pos: int


@dataclass(frozen=True, slots=True)
class ListValue:
    items: tuple[Value, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Compare:
    field: str
    arg: str | None  # `k8s.pod.label[app]` → arg "app"
    op: Op
    operand: Value | ListValue | None  # None for `exists`
    pos: int  # offset of the field name


@dataclass(frozen=True, slots=True)
class MacroRef:
    name: str
    pos: int


# --- shared --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class Const:
    value: bool


# --- bound tree ----------------------------------------------------------------------------

Scalar = str | int | bool


@dataclass(frozen=True, slots=True)
class BCompare:
    field: FieldDef
    arg: str | None
    op: Op
    value: Scalar | tuple[Scalar, ...]  # a tuple for list operators


@dataclass(frozen=True, slots=True)
class BExists:
    field: FieldDef
    arg: str | None


Node = Compare | MacroRef | And | Or | Not | Const | BCompare | BExists
