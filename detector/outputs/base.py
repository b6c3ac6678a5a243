"""What every output shares: alerts encoded once into lines (bytes, no newline), the
writer interface each sink implements, and the two ways a write can fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import orjson

from detector.alerts import Alert, exact

Formatter = Callable[[Alert], bytes]  # one line, no newline

DROPS_FIELD = "podlock.output_drops"


def text_line(alert: Alert) -> bytes:
    # to_text escapes everything that is not printable UTF-8: a strict encode cannot fail
    return alert.to_text().encode()


def json_line(alert: Alert) -> bytes:
    return alert.to_json_bytes()


def mark_text(line: bytes, dropped: int) -> bytes:
    """The text line of the first alert after a gap, saying how many alerts the gap held."""
    return line + f" ({DROPS_FIELD}={dropped})".encode()


def mark_json(line: bytes, dropped: int) -> bytes:
    """The same for a JSON line: `output_fields` gains (or adds to) podlock.output_drops."""
    doc = orjson.loads(line)
    fields = doc.setdefault("output_fields", {})
    fields[DROPS_FIELD] = int(fields.get(DROPS_FIELD, 0)) + dropped
    return exact(orjson.dumps(doc))


class Retry(Exception):
    """A failure that may pass (receiver down, 5xx, program exited, disk full): the sender
    backs off and sends `resend` again, first and in order. `reclaimed`: how many lines
    counted as delivered by earlier writes are in `resend` (a program that exited without
    reading them); negative when lines of this write did get through."""

    def __init__(self, problem: str, resend: list[bytes], reclaimed: int = 0) -> None:
        super().__init__(problem)
        self.problem = problem
        self.resend = resend
        self.reclaimed = reclaimed


class Refused(Exception):
    """These alerts cannot be delivered, ever (a 4xx answer, a closed stdout): they are
    counted as dropped and the sender goes on with the next ones."""

    def __init__(self, problem: str, count: int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.count = count


class Writer(Protocol):
    """One sink. `write` is called from the output's own sender thread, never from the
    event loop, so it may block (a slow receiver only fills that output's queue)."""

    label: str  # for the log: "http (http://…)"
    batch: int  # most lines one write takes (1: one request or one program run per alert)

    def write(self, lines: list[bytes]) -> None:
        """Deliver the lines in order, or raise Retry or Refused."""

    def check(self) -> None:
        """Called when the queue is idle: raise Retry if lines written earlier were lost
        since (a program that exited with lines unread), so they are sent again."""

    def abort(self) -> None:
        """Unblock a write that hangs (kill the program, drop the connection): shutdown
        calls it from another thread once the drain time is up."""

    def close(self) -> int:
        """Release what it holds; returns how many written lines it knows were lost (a
        program that exited without reading them)."""
