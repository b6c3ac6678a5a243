"""What every sink shares: the interface and the count-and-log-once failure rule."""

from __future__ import annotations

import codecs
import logging
from collections.abc import Callable
from typing import Protocol

from detector.alerts import Alert

log = logging.getLogger("podlock.detector.outputs")

Formatter = Callable[[Alert], str]  # one line, no newline

# The codec error handler every text sink writes with. Paths that are not UTF-8 reach us as
# surrogate escapes (decode's "surrogateescape"); a strict encoder would refuse the whole
# batch, so a file name chosen for it could hide alerts. This writes each such byte as \xNN.
ESCAPE_BYTES = "podlock-escape-bytes"


def _escape_bytes(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    chunk = err.object[err.start : err.end]
    return "".join(
        f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}"
        for c in chunk
    ), err.end


codecs.register_error(ESCAPE_BYTES, _escape_bytes)


def text_line(alert: Alert) -> str:
    return alert.to_text()


def json_line(alert: Alert) -> str:
    return alert.to_json()


class Sink(Protocol):
    name: str

    @property
    def failures(self) -> int:
        """How many alerts this sink failed to deliver."""

    def emit(self, alert: Alert) -> None:
        """Deliver one alert; never raises (failures are counted and logged once)."""

    def emit_many(self, alerts: list[Alert]) -> None:
        """Deliver a batch in order, written out together (one write for a file or pipe)."""

    def close(self) -> None: ...


class Failures:
    """Counts a sink's failures and logs the first one, so a dead receiver is
    reported without flooding the log (or crashing the agent)."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.count = 0

    def record(self, problem: str) -> None:
        self.count += 1
        if self.count == 1:
            log.warning(
                "%s output failed: %s (further failures are counted, not logged)",
                self.sink,
                problem,
            )


class SinkBase:
    """What every sink has in common: its failure count, and `emit` as a batch of one.

    Sinks that deliver one alert at a time (http, program) override `emit` instead.
    """

    name = "sink"

    def __init__(self, label: str) -> None:
        self._failures = Failures(label)

    @property
    def failures(self) -> int:
        return self._failures.count

    def emit(self, alert: Alert) -> None:
        self.emit_many([alert])

    def emit_many(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.emit(alert)
