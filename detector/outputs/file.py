"""Alerts appended to a file, one line each. With keep_alive the file stays open;
without it each batch of alerts opens, appends and closes (Falco does so per alert),
which lets logrotate move the file away. A failed write (disk full) is retried."""

from __future__ import annotations

import os

from detector.errors import ConfigError
from detector.outputs.base import Retry

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class FileWriter:
    batch = 256

    def __init__(self, path: str, keep_alive: bool) -> None:
        self._path = path
        self.label = f"file ({path})"
        try:  # fail at start-up, with the key named, rather than on the first alert
            fd = os.open(path, _FLAGS, 0o644)
        except OSError as err:
            raise ConfigError(
                f"file_output.filename: cannot open {path} for appending: {err.strerror}"
            ) from None
        self._fd: int | None = fd
        self._cut = False  # a failed write left part of a line: end it before the next
        if not keep_alive:
            os.close(fd)
            self._fd = None

    def write(self, lines: list[bytes]) -> None:
        head = b"\n" if self._cut else b""
        data = memoryview(head + b"\n".join(lines) + b"\n")
        done = 0
        try:
            fd = self._fd if self._fd is not None else os.open(self._path, _FLAGS, 0o644)
            try:
                while done < len(data):
                    done += os.write(fd, data[done:])
            finally:
                if fd != self._fd:
                    os.close(fd)
        except OSError as err:  # (disk full) the lines not wholly written are sent again
            end, whole = len(head), 0
            for line in lines:
                if end + len(line) + 1 > done:
                    break
                end += len(line) + 1
                whole += 1
            # part of a line is in the file: end it before the next write
            self._cut = self._cut if done < len(head) else done > end
            raise Retry(f"{self._path}: {err.strerror}", lines[whole:]) from None
        self._cut = False

    def check(self) -> None:
        pass  # nothing written is lost afterwards

    def abort(self) -> None:
        pass  # file writes do not hang on a receiver

    def close(self) -> int:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return 0
