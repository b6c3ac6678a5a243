"""Alerts appended to a file, one line each. With keep_alive the file stays open
(line-buffered); without it each batch of alerts opens, appends and closes (Falco does
so per alert), which lets logrotate move the file away."""

from __future__ import annotations

from typing import TextIO

from detector.alerts import Alert
from detector.errors import ConfigError
from detector.outputs.base import ESCAPE_BYTES, Formatter, SinkBase


class FileSink(SinkBase):
    name = "file"

    def __init__(self, path: str, keep_alive: bool, fmt: Formatter) -> None:
        self._path = path
        self._fmt = fmt
        super().__init__(f"file ({path})")
        self._handle: TextIO | None = None
        try:  # fail at start-up, with the key named, rather than on the first alert
            handle = open(path, "a", buffering=1, encoding="utf-8", errors=ESCAPE_BYTES)  # noqa: SIM115
        except OSError as err:
            raise ConfigError(
                f"file_output.filename: cannot open {path} for appending: {err.strerror}"
            ) from None
        if keep_alive:
            self._handle = handle
        else:
            handle.close()

    def emit_many(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        line = "\n".join(map(self._fmt, alerts)) + "\n"
        try:
            if self._handle is not None:
                self._handle.write(line)
            else:
                with open(self._path, "a", encoding="utf-8", errors=ESCAPE_BYTES) as handle:
                    handle.write(line)
        except OSError as err:
            for _ in alerts:
                self._failures.record(f"{self._path}: {err.strerror}")

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as err:
                self._failures.record(f"{self._path}: {err.strerror}")
            self._handle = None
