"""Alerts to standard output, one line each, flushed per batch (pipes see them at once)."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import TextIO

from detector.alerts import Alert
from detector.outputs.base import ESCAPE_BYTES, Formatter, SinkBase


class StdoutSink(SinkBase):
    name = "stdout"

    def __init__(self, fmt: Formatter, stream: TextIO | None = None) -> None:
        self._fmt = fmt
        self._stream = stream if stream is not None else sys.stdout
        if isinstance(self._stream, io.TextIOWrapper):
            self._stream.reconfigure(errors=ESCAPE_BYTES)
        super().__init__(self.name)

    def emit_many(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        try:
            self._stream.write("\n".join(map(self._fmt, alerts)) + "\n")
            self._stream.flush()
        except (OSError, ValueError) as err:  # closed pipe or stream
            for _ in alerts:
                self._failures.record(str(err))

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()
