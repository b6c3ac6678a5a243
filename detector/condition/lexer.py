"""Tokens of a condition, read on demand because a bare value (`evt.dir=<`, `/usr/*`)
may hold characters that are operators elsewhere: the parser says which mode it wants."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Tok(enum.Enum):
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    OP = "operator"
    WORD = "word"
    STRING = "string"
    EOF = "end of condition"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Tok
    text: str
    pos: int


class LexError(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


_PUNCT = {"(": Tok.LPAREN, ")": Tok.RPAREN, ",": Tok.COMMA}
_OP_CHARS = "=!<>"
_SYMBOLS = ("==", "!=", "<=", ">=", "=", "<", ">")
# Characters that end a word; in expression mode operator characters end it too.
_VALUE_STOP = frozenset(" \t\r\n\f\v(),\"'")
_EXPR_STOP = _VALUE_STOP | frozenset(_OP_CHARS)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


class Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _skip_space(self) -> None:
        text, pos, end = self.text, self.pos, len(self.text)
        while pos < end and text[pos].isspace():
            pos += 1
        self.pos = pos

    def peek(self, value_mode: bool = False) -> Token:
        saved = self.pos
        try:
            return self.next(value_mode)
        finally:
            self.pos = saved

    def next(self, value_mode: bool = False) -> Token:
        self._skip_space()
        text, start = self.text, self.pos
        if start >= len(text):
            return Token(Tok.EOF, "", start)
        ch = text[start]
        if ch in _PUNCT:
            self.pos = start + 1
            return Token(_PUNCT[ch], ch, start)
        if ch in "\"'":
            return self._string(ch)
        if not value_mode and ch in _OP_CHARS:
            for sym in _SYMBOLS:
                if text.startswith(sym, start):
                    self.pos = start + len(sym)
                    return Token(Tok.OP, sym, start)
            raise LexError(f"unexpected {ch!r}", start)
        stop = _VALUE_STOP if value_mode else _EXPR_STOP
        end = start
        while end < len(text) and text[end] not in stop:
            end += 1
        self.pos = end
        return Token(Tok.WORD, text[start:end], start)

    def _string(self, quote: str) -> Token:
        text, start = self.text, self.pos
        out: list[str] = []
        i = start + 1
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                nxt = text[i + 1]
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
                continue
            if ch == quote:
                self.pos = i + 1
                return Token(Tok.STRING, "".join(out), start)
            out.append(ch)
            i += 1
        raise LexError("unterminated quoted string", start)
