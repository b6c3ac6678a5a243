"""Alerts fed to a shell command's standard input, one line each.

keep_alive: one long-running program gets every alert (restarted if it exits);
otherwise the program runs once per alert, as Falco does.
"""

from __future__ import annotations

import subprocess

from detector.alerts import Alert
from detector.outputs.base import ESCAPE_BYTES, Formatter, SinkBase

_RUN_TIMEOUT_S = 10.0


class ProgramSink(SinkBase):
    name = "program"

    def __init__(self, command: str, keep_alive: bool, fmt: Formatter) -> None:
        self._command = command
        self._keep_alive = keep_alive
        self._fmt = fmt
        super().__init__(f"program ({command})")
        self._proc: subprocess.Popen[str] | None = None

    def _running(self) -> subprocess.Popen[str]:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._failures.record(f"exited with status {proc.returncode}; restarting it")
            self._reap()
            proc = None
        if proc is None:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self._command],
                stdin=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors=ESCAPE_BYTES,
                bufsize=1,
            )
            self._proc = proc
        return proc

    def emit(self, alert: Alert) -> None:
        line = self._fmt(alert) + "\n"
        if not self._keep_alive:
            try:
                done = subprocess.run(
                    ["/bin/sh", "-c", self._command],
                    input=line,
                    text=True,
                    timeout=_RUN_TIMEOUT_S,
                    check=False,
                )
                if done.returncode != 0:
                    self._failures.record(f"exited with status {done.returncode}")
            except (OSError, subprocess.SubprocessError) as err:
                self._failures.record(str(err))
            return
        self._write([line])

    def emit_many(self, alerts: list[Alert]) -> None:
        if not self._keep_alive:
            for alert in alerts:  # a program run per alert, as Falco does
                self.emit(alert)
            return
        fmt = self._fmt
        self._write([fmt(a) + "\n" for a in alerts])

    def _write(self, lines: list[str]) -> None:
        try:
            proc = self._running()
            assert proc.stdin is not None
            proc.stdin.write("".join(lines))
            proc.stdin.flush()
        except (OSError, ValueError) as err:  # the program exited: restart on the next alert
            for _ in lines:
                self._failures.record(str(err))
            self._reap()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass  # its reader is gone already
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self._reap()
