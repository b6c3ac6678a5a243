"""Alerts to standard output, one line each, flushed per batch (pipes see them at once)."""

from __future__ import annotations

import contextlib
import sys
from typing import BinaryIO

from detector.outputs.base import Refused


class StdoutWriter:
    label = "stdout"
    batch = 256

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer

    def write(self, lines: list[bytes]) -> None:
        try:
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()
        except (OSError, ValueError) as err:  # a closed pipe or stream stays closed
            raise Refused(str(err) or type(err).__name__, len(lines)) from None

    def check(self) -> None:
        pass  # nothing written is lost afterwards

    def abort(self) -> None:
        pass  # a blocked stdout cannot be unblocked; the sender thread is a daemon

    def close(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()
        return 0
