"""Alerts fed to a shell command's standard input, one line each.

keep_alive: one long-running program gets every alert, and is started again when it exits.
Lines still unread in its pipe when it exits (FIONREAD tells how many bytes) go to the next
one, so a program that exits loses nothing it had not read. Without keep_alive the program
runs once per alert, as Falco does; a run that fails or takes longer than RUN_TIMEOUT_S
counts its alert as dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
from collections import deque

from detector.outputs.base import Refused, Retry

RUN_TIMEOUT_S = 10.0
_F_GETPIPE_SZ = 1032


class ProgramWriter:
    def __init__(self, command: str, keep_alive: bool) -> None:
        self._command = command
        self._keep_alive = keep_alive
        self.label = f"program ({command})"
        self.batch = 256 if keep_alive else 1
        self._proc: subprocess.Popen[bytes] | None = None
        # keep_alive: the latest lines written, as many as may still sit unread in the pipe
        # (bounded by the pipe's capacity: older bytes must have been read for newer ones
        # to fit)
        self._window: deque[bytes] = deque()
        self._window_bytes = 0
        self._pipe_size = 65536

    def write(self, lines: list[bytes]) -> None:
        if not self._keep_alive:
            for line in lines:
                self._run_once(line)
            return
        proc = self._proc
        if proc is not None and proc.poll() is not None:  # exited since the last write
            lost = self._lost()
            raise Retry(f"exited with status {proc.returncode}", lost + lines, len(lost))
        if proc is None:
            try:
                proc = self._proc = _spawn(self._command)
            except OSError as err:
                raise Retry(f"cannot start it: {err.strerror}", lines) from None
            assert proc.stdin is not None
            with contextlib.suppress(OSError):  # bounds what it may leave unread
                self._pipe_size = fcntl.fcntl(proc.stdin.fileno(), _F_GETPIPE_SZ)
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        data = memoryview(b"".join(line + b"\n" for line in lines))
        done = 0
        try:
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError as err:  # EPIPE: it exited (or closed its input)
            written, end = 0, 0
            for line in lines:  # the lines at least partly in the pipe join the window
                if end >= done:
                    break
                end += len(line) + 1
                self._remember(line)
                written += 1
            lost = self._lost()  # its tail may be lines of this write
            # counted delivered before: len(lost) - written (or, if negative, lines of this
            # write that it did read)
            problem = f"it stopped reading its input ({err.strerror or err})"
            raise Retry(problem, lost + lines[written:], len(lost) - written) from None
        for line in lines:
            self._remember(line)

    def check(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            lost = self._lost()
            raise Retry(f"exited with status {proc.returncode}", lost, len(lost))

    def _remember(self, line: bytes) -> None:
        self._window.append(line)
        self._window_bytes += len(line) + 1
        while self._window_bytes - len(self._window[0]) - 1 >= self._pipe_size:
            self._window_bytes -= len(self._window.popleft()) + 1

    def _lost(self) -> list[bytes]:
        """The program is gone: it is reaped; returns the lines it never read, in order."""
        proc, self._proc = self._proc, None
        assert proc is not None and proc.stdin is not None
        unread = _unread(proc.stdin.fileno())
        _reap(proc)
        return self._last_lines(unread)

    def _last_lines(self, unread: int) -> list[bytes]:
        """The written lines that `unread` bytes at the end of the pipe belong to (a line
        partly read is sent again whole); the window is emptied."""
        lost: list[bytes] = []
        while unread > 0 and self._window:
            line = self._window.pop()
            lost.append(line)
            unread -= len(line) + 1
        self._window.clear()
        self._window_bytes = 0
        return lost[::-1]

    def _run_once(self, line: bytes) -> None:
        try:
            proc = self._proc = _spawn(self._command)
        except OSError as err:
            raise Retry(f"cannot start it: {err.strerror}", [line]) from None
        try:
            proc.communicate(line + b"\n", timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait()
            raise Refused(f"still running after {RUN_TIMEOUT_S:g} s; killed", 1) from None
        finally:
            self._proc = None
        if proc.returncode != 0:
            raise Refused(f"exited with status {proc.returncode}", 1)

    def abort(self) -> None:
        proc = self._proc
        if proc is not None:
            _kill(proc)

    def close(self) -> int:
        proc, self._proc = self._proc, None
        if proc is None or proc.stdin is None:
            return 0
        # A second read end of its pipe (Linux reopens a pipe through /proc): once the
        # program has seen the end of its input and exited, it still tells what it left
        # unread (a program that exits at once may do so after our last write).
        try:
            reader = os.open(f"/proc/self/fd/{proc.stdin.fileno()}", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            _reap(proc)
            return 0
        try:
            _reap(proc)  # it reads what is left before it sees the end of its input
            return len(self._last_lines(_unread(reader)))
        finally:
            os.close(reader)


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe `fd` is an end of."""
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4)
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


def _spawn(command: str) -> subprocess.Popen[bytes]:
    # its own process group: a pipeline (`jq | curl`) is stopped whole
    return subprocess.Popen(
        ["/bin/sh", "-c", command], stdin=subprocess.PIPE, start_new_session=True
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _reap(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """Close its input (its cue to finish), wait a little, then kill its process group."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.wait()
