"""Alerts as values, and their two wire forms: Falco's JSON and Falco's text line."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping
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
        """Falco's text line: `HH:MM:SS.nnnnnnnnn: Priority output` (UTC)."""
        return f"{clock_time(self.time_ns)}: {self.priority._value_} {self.output}"

    def to_json(self) -> str:
        """One line of JSON, no trailing newline."""
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """One line of UTF-8 JSON, no trailing newline (orjson: ~10x json's speed)."""
        fields = self.output_fields
        day, clock, nanos = _stamp(self.time_ns)  # both time forms from one split
        priority = self.priority._value_
        body = {
            "hostname": self.hostname,
            "output": f"{clock}.{nanos}: {priority} {self.output}",
            # serialised as it is, not copied
            "output_fields": fields if type(fields) is dict else dict(fields),
            "priority": priority,
            "rule": self.rule,
            "source": "podlock",
            "tags": self.tags,
            "time": f"{day}T{clock}.{nanos}Z",
        }
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError:
            # a path that is not UTF-8 (kept as surrogate escapes) cannot be encoded raw
            return json.dumps(body, separators=(",", ":")).encode()


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


def format_value(value: FieldValue) -> str:
    """How a field value reads inside an output line: Falco prints `<NA>` for missing."""
    if value is None:
        return "<NA>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)
