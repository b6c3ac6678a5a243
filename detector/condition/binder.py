"""Syntax tree → bound tree: fields looked up and values typed, lists expanded,
macros replaced by their (already bound) trees. Every error carries the offset of
the offending token so the rules loader can say `at column N`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from detector.condition.ast import (
    LIST_OPS,
    ORDER_OPS,
    STRING_OPS,
    And,
    BCompare,
    BExists,
    Compare,
    ListValue,
    MacroRef,
    Node,
    Not,
    Op,
    Or,
    Scalar,
    Value,
)
from detector.condition.parser import ConditionSyntaxError
from detector.fields import FIELDS, ArgMode, FieldDef, FieldType

# name, offset → the macro's bound tree, or None when no such macro exists.
MacroResolver = Callable[[str, int], Node | None]


class BindError(ConditionSyntaxError):
    """Same shape as a syntax error: a message and an offset."""


def bind(
    node: Node,
    lists: Mapping[str, tuple[str, ...]],
    macro: MacroResolver,
    fields: Mapping[str, FieldDef] = FIELDS,
) -> Node:
    return _Binder(lists, macro, fields).node(node)


class _Binder:
    def __init__(
        self,
        lists: Mapping[str, tuple[str, ...]],
        macro: MacroResolver,
        fields: Mapping[str, FieldDef],
    ) -> None:
        self.lists = lists
        self.macro = macro
        self.fields = fields

    def node(self, node: Node) -> Node:
        if isinstance(node, And):
            return And(tuple(self.node(n) for n in node.items))
        if isinstance(node, Or):
            return Or(tuple(self.node(n) for n in node.items))
        if isinstance(node, Not):
            return Not(self.node(node.item))
        if isinstance(node, MacroRef):
            return self.macro_ref(node)
        if isinstance(node, Compare):
            return self.compare(node)
        return node  # Const and already-bound nodes

    def macro_ref(self, ref: MacroRef) -> Node:
        bound = self.macro(ref.name, ref.pos)
        if bound is not None:
            return bound
        base = ref.name.split("[", 1)[0]
        if base in self.fields:
            raise BindError(f"field '{ref.name}' needs an operator (e.g. = or exists)", ref.pos)
        if "." in base:
            raise BindError(f"unknown field '{base}'", ref.pos)
        raise BindError(f"unknown macro '{ref.name}'", ref.pos)

    def compare(self, cmp: Compare) -> Node:
        fdef = self.fields.get(cmp.field)
        if fdef is None:
            raise BindError(f"unknown field '{cmp.field}'", cmp.pos)
        if fdef.output_only:
            raise BindError(f"field '{cmp.field}' can only be used in outputs", cmp.pos)
        if fdef.arg is ArgMode.REQUIRED and not cmp.arg:
            raise BindError(f"field '{cmp.field}' needs an argument, like {cmp.field}[x]", cmp.pos)
        if fdef.arg is ArgMode.NONE and cmp.arg is not None:
            raise BindError(f"field '{cmp.field}' takes no argument", cmp.pos)
        op = cmp.op
        if op is Op.EXISTS:
            return BExists(fdef, cmp.arg)
        self._check_op(fdef, op, cmp.pos)
        if op in LIST_OPS:
            assert isinstance(cmp.operand, ListValue)
            items = self._expand(cmp.operand)
            return BCompare(fdef, cmp.arg, op, tuple(self._typed(fdef, v) for v in items))
        assert isinstance(cmp.operand, Value)
        return BCompare(fdef, cmp.arg, op, self._typed(fdef, cmp.operand))

    def _check_op(self, fdef: FieldDef, op: Op, pos: int) -> None:
        kind = fdef.type
        if op in ORDER_OPS and kind is not FieldType.INT:
            raise BindError(
                f"operator '{op.value}' needs a number field, '{fdef.name}' is a {kind.value}", pos
            )
        if op in STRING_OPS and kind is not FieldType.STRING:
            raise BindError(
                f"operator '{op.value}' needs a string field, '{fdef.name}' is a {kind.value}", pos
            )

    def _expand(self, lst: ListValue) -> list[Value]:
        out: list[Value] = []
        for item in lst.items:
            named = None if item.quoted else self.lists.get(item.text)
            if named is None:
                out.append(item)
            else:
                out.extend(Value(text, True, item.pos) for text in named)
        return out

    def _typed(self, fdef: FieldDef, value: Value) -> Scalar:
        text = value.text
        if fdef.type is FieldType.STRING:
            return fdef.aliases.get(text, text) if fdef.aliases else text
        if fdef.type is FieldType.INT:
            try:
                return int(text, 0) if text[:2].lower() in ("0x", "0o") else int(text)
            except ValueError:
                raise BindError(
                    f"expected a number for '{fdef.name}', found '{text}'", value.pos
                ) from None
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise BindError(f"expected true or false for '{fdef.name}', found '{text}'", value.pos)
