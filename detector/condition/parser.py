"""Condition text → syntax tree, by recursive descent over Falco's grammar:

    expr    := and ('or' and)*
    and     := unary ('and' unary)*
    unary   := 'not' unary | primary
    primary := '(' expr ')' | FIELD unary-op | FIELD binary-op VALUE
             | FIELD list-op '(' VALUE (',' VALUE)* ')' | MACRO

Lists (`(linux_shells)`) and macros stay names here; the binder resolves them.
"""

from __future__ import annotations

import re

from detector.condition.ast import (
    LIST_OPS,
    SYMBOL_OPS,
    WORD_OPS,
    And,
    Compare,
    ListValue,
    MacroRef,
    Node,
    Not,
    Op,
    Or,
    Value,
)
from detector.condition.lexer import Lexer, LexError, Tok, Token


class ConditionSyntaxError(Exception):
    """A condition problem at an offset of its text; `describe()` says where."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos

    def describe(self, text: str) -> str:
        return f"{self.message} {position(text, self.pos)}"


def position(text: str, pos: int) -> str:
    """`at column 12`, or `at line 2 column 5` for a multi-line condition."""
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    if "\n" in text.rstrip("\n"):
        return f"at line {line} column {col}"
    return f"at column {col}"


# A field (`proc.name`, `k8s.pod.label[app]`) or a macro name.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*(?:\[([^\]]*)\])?")


def parse(text: str) -> Node:
    """Parse a whole condition; raises ConditionSyntaxError."""
    try:
        parser = _Parser(text)
        node = parser.expr()
        tok = parser.lex.next()
        if tok.kind is not Tok.EOF:
            raise ConditionSyntaxError(f"syntax error: unexpected {_show(tok)}", tok.pos)
        return node
    except LexError as err:
        raise ConditionSyntaxError(f"syntax error: {err.message}", err.pos) from None


def _show(tok: Token) -> str:
    if tok.kind is Tok.EOF:
        return "end of condition"
    if tok.kind is Tok.STRING:
        return "quoted string"
    return repr(tok.text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.lex = Lexer(text)

    def _is_word(self, tok: Token, word: str) -> bool:
        return tok.kind is Tok.WORD and tok.text == word

    def expr(self) -> Node:
        items = [self.conj()]
        while self._is_word(self.lex.peek(), "or"):
            self.lex.next()
            items.append(self.conj())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conj(self) -> Node:
        items = [self.unary()]
        while self._is_word(self.lex.peek(), "and"):
            self.lex.next()
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Node:
        if self._is_word(self.lex.peek(), "not"):
            self.lex.next()
            return Not(self.unary())
        return self.primary()

    def primary(self) -> Node:
        tok = self.lex.next()
        if tok.kind is Tok.LPAREN:
            node = self.expr()
            close = self.lex.next()
            if close.kind is not Tok.RPAREN:
                raise ConditionSyntaxError(
                    f"syntax error: expected ')' but found {_show(close)}", close.pos
                )
            return node
        if tok.kind is not Tok.WORD or tok.text in ("and", "or"):
            raise ConditionSyntaxError(
                f"syntax error: expected a field, a macro or '(' but found {_show(tok)}", tok.pos
            )
        match = _NAME.fullmatch(tok.text)
        if match is None:
            raise ConditionSyntaxError(
                f"syntax error: {tok.text!r} is not a field or macro name", tok.pos
            )
        op = self._operator()
        if op is None:
            return MacroRef(tok.text, tok.pos)
        name = tok.text.split("[", 1)[0]
        arg = match.group(1)
        if op is Op.EXISTS:
            return Compare(name, arg, op, None, tok.pos)
        if op in LIST_OPS:
            return Compare(name, arg, op, self._list(op), tok.pos)
        return Compare(name, arg, op, self._value(op), tok.pos)

    def _operator(self) -> Op | None:
        tok = self.lex.peek()
        if tok.kind is Tok.OP:
            self.lex.next()
            return SYMBOL_OPS[tok.text]
        if tok.kind is Tok.WORD and tok.text in WORD_OPS:
            self.lex.next()
            return WORD_OPS[tok.text]
        return None

    def _value(self, op: Op) -> Value:
        tok = self.lex.next(value_mode=True)
        if tok.kind is Tok.WORD and tok.text:
            return Value(tok.text, False, tok.pos)
        if tok.kind is Tok.STRING:
            return Value(tok.text, True, tok.pos)
        if tok.kind is Tok.LPAREN:
            raise ConditionSyntaxError(
                f"syntax error: operator '{op.value}' takes one value, not a list", tok.pos
            )
        raise ConditionSyntaxError(
            f"syntax error: expected a value after '{op.value}' but found {_show(tok)}", tok.pos
        )

    def _list(self, op: Op) -> ListValue:
        open_tok = self.lex.next(value_mode=True)
        if open_tok.kind is not Tok.LPAREN:
            raise ConditionSyntaxError(
                f"syntax error: operator '{op.value}' needs a list like (a, b)"
                f" but found {_show(open_tok)}",
                open_tok.pos,
            )
        items: list[Value] = []
        tok = self.lex.next(value_mode=True)
        if tok.kind is Tok.RPAREN:
            return ListValue((), open_tok.pos)
        while True:
            if tok.kind is Tok.WORD:
                items.append(Value(tok.text, False, tok.pos))
            elif tok.kind is Tok.STRING:
                items.append(Value(tok.text, True, tok.pos))
            else:
                raise ConditionSyntaxError(
                    f"syntax error: expected a list item but found {_show(tok)}", tok.pos
                )
            sep = self.lex.next(value_mode=True)
            if sep.kind is Tok.RPAREN:
                return ListValue(tuple(items), open_tok.pos)
            if sep.kind is not Tok.COMMA:
                raise ConditionSyntaxError(
                    f"syntax error: expected ',' or ')' in list but found {_show(sep)}", sep.pos
                )
            tok = self.lex.next(value_mode=True)
