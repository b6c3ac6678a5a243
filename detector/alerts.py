"""Alerts as values, and their two wire forms: Falco's JSON and Falco's text line."""

from __future__ import annotations

import base64
import enum
import re
import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import orjson

from detector.events import SessionRef

FieldValue = str | int | None


class Priority(enum.Enum):
    """Falco's priorities, spelled as Falco writes them; most severe first."""

    EMERGENCY = "Emergency"
    ALERT = "Alert"
    CRITICAL = "Critical"
    ERROR = "Error"
    WARNING = "Warning"
    NOTICE = "Notice"
    INFORMATIONAL = "Informational"
    DEBUG = "Debug"

    @property
    def severity(self) -> int:
        """0 = Emergency … 7 = Debug (syslog numbering, as Falco uses)."""
        return _SEVERITY[self]

    def at_least(self, minimum: Priority) -> bool:
        """True when this priority is as severe as `minimum` or more."""
        return _SEVERITY[self] <= _SEVERITY[minimum]

    @classmethod
    def parse(cls, text: str) -> Priority | None:
        """Case-insensitive, as Falco reads rules (`ERROR`, `Error`, `error`, `info`)."""
        return _BY_LOWER.get(text.strip().lower())


_SEVERITY = {p: i for i, p in enumerate(Priority)}
_BY_LOWER = {p.value.lower(): p for p in Priority} | {"info": Priority.INFORMATIONAL}

PRIORITY_NAMES = ", ".join(p.value for p in Priority)


class Alert(NamedTuple):
    """One alert; `output` is the rendered rule output without time or priority.
    A NamedTuple (immutable and typed) because one is built per alert on the hot path,
    about three times faster than a frozen dataclass."""

    time_ns: int
    rule: str
    priority: Priority
    output: str
    output_fields: Mapping[str, FieldValue]
    tags: tuple[str, ...]
    hostname: str
    # the exec session it came from (None: the container's own processes); not printed,
    # detector/audit.py reads it to add who ran the session
    session: SessionRef | None = None

    def to_text(self) -> str:
        """Falco's text line: `HH:MM:SS.nnnnnnnnn: Priority output` (UTC), always one line
        with nothing raw a terminal could act on (see escape_text)."""
        return escape_text(f"{clock_time(self.time_ns)}: {self.priority._value_} {self.output}")

    def to_json(self) -> str:
        """One line of JSON, no trailing newline."""
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """One line of UTF-8 JSON, no trailing newline (orjson: ~10x json's speed)."""
        fields = self.output_fields
        day, clock, nanos = _stamp(self.time_ns)  # both time forms from one split
        priority = self.priority._value_
        output = f"{clock}.{nanos}: {priority} {self.output}"
        body = {
            "hostname": self.hostname,
            "output": output,
            # serialised as it is, not copied
            "output_fields": fields if type(fields) is dict else dict(fields),
            "priority": priority,
            "rule": self.rule,
            "source": "podlock",
            "tags": self.tags,
            "time": f"{day}T{clock}.{nanos}Z",
        }
        try:
            encoded = orjson.dumps(body)
        except orjson.JSONEncodeError:
            # a name that is not UTF-8 (kept as surrogate escapes): see carry_bytes
            body["output"] = bytes_escaped(output)
            body["output_fields"] = carry_bytes(fields)
            encoded = orjson.dumps(body)
        return exact(encoded)


def exact(encoded: bytes) -> bytes:
    """A copy of its own size. orjson's result keeps the capacity its buffer grew to (8 KiB
    for a 1.3 KiB alert), so 10,000 alerts waiting in an output's queue held 80 MiB instead
    of 13 MiB (tests/bench/bench_outputs.py)."""
    return bytes(memoryview(encoded))


_last_stamp: list[tuple[int, str, str]] = [(-1, "", "")]  # (second, date, clock)


def _stamp(time_ns: int) -> tuple[str, str, str]:
    """(`YYYY-MM-DD`, `HH:MM:SS`, nine-digit nanoseconds) in UTC; the last second's
    strings are kept, as alerts come in bursts within one second."""
    secs, nanos = divmod(time_ns, 1_000_000_000)
    last = _last_stamp[0]
    if last[0] != secs:
        day, _, clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs)).partition(" ")
        last = (secs, day, clock)
        _last_stamp[0] = last
    return last[1], last[2], f"{nanos:09d}"


def clock_time(time_ns: int) -> str:
    """`HH:MM:SS.nnnnnnnnn` in UTC, the prefix of Falco's text output."""
    _, clock, nanos = _stamp(time_ns)
    return f"{clock}.{nanos}"


# --- names that are not UTF-8, and text that must stay one line ------------------------------
#
# Paths reach us as str with each byte that is not UTF-8 kept as a surrogate escape
# (b"\xff" -> "\udcff", Python's "surrogateescape"). Strict JSON encoders refuse those, and
# a terminal must never see a control character from a file name.

_SURROGATE = re.compile("[\ud800-\udfff]")
# What a text line never carries raw: the backslash (so that the escaped line decodes back to
# exactly the original), C0 and C1 controls and DEL, the Unicode line and paragraph
# separators, the bidirectional marks and overrides (they reorder what a terminal shows), and
# surrogates (bytes that are not UTF-8).
_CONTROLS = "\\\\\x00-\x1f\x7f-\x9f"
_LAYOUT = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[{_CONTROLS}{_LAYOUT}\\ud800-\\udfff]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _one(char: str) -> str:
    code = ord(char)
    named = _NAMED.get(char)
    if named is not None:
        return named
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"  # C1 controls (\u0085 is the character, \x85 the byte) and the rest


def escape_text(text: str) -> str:
    r"""`text` with nothing a terminal could act on: backslash, controls, separators,
    bidi marks and undecodable bytes as C-style escapes (\\, \n, \r, \t, \xNN, \uNNNN).
    Reversible: each escape stands for exactly one character or byte."""
    if _UNSAFE.search(text) is None:  # the common case: nothing to do
        return text
    return _UNSAFE.sub(lambda m: _one(m.group()), text)


def bytes_escaped(text: str) -> str:
    r"""`text` with each surrogate (a byte that is not UTF-8) written as `\xNN` (or
    `\udNNN` for a lone surrogate of other origin); everything else as it is."""
    return _SURROGATE.sub(lambda m: _one(m.group()), text)


def raw_bytes(text: str) -> bytes:
    """The bytes a name had in the kernel (the inverse of decode's surrogateescape)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone high surrogate: not from a path; keep it as is
        return text.encode("utf-8", "surrogatepass")


B64_SUFFIX = ".b64"


def carry_bytes(fields: Mapping[str, FieldValue]) -> dict[str, FieldValue]:
    r"""Output fields a strict JSON parser accepts: a value holding bytes that are not UTF-8
    is shown with those bytes as `\xNN`, and `<field>.b64` beside it carries its exact
    bytes in base64 (present only for such values)."""
    out: dict[str, FieldValue] = {}
    for key, value in fields.items():
        if isinstance(value, str) and _SURROGATE.search(value) is not None:
            out[key] = bytes_escaped(value)
            out[key + B64_SUFFIX] = base64.b64encode(raw_bytes(value)).decode("ascii")
        else:
            out[key] = value
    return out


def join_items(items: Iterable[str]) -> str:
    r"""A list inside one field, unambiguous whatever the items hold: comma-separated, a
    backslash or comma inside an item written `\\` or `\,` (split on the commas that no
    backslash escapes)."""
    return ",".join(map(_escape_item, items))


def _escape_item(item: str) -> str:
    if "\\" in item or "," in item:
        return item.replace("\\", "\\\\").replace(",", "\\,")
    return item


def split_items(text: str) -> list[str]:
    """The inverse of join_items."""
    if not text:
        return []
    items, current, chars = [], [], iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def format_value(value: FieldValue) -> str:
    """How a field value reads inside an output line: Falco prints `<NA>` for missing."""
    if value is None:
        return "<NA>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)
