"""One output's queue and sender thread: the event loop only appends encoded lines here
(never waits for a receiver); the sender writes them in order, retrying with backoff.

Bounds: at most `capacity` lines and `max_bytes` bytes wait. A line that does not fit is
dropped and counted, and the next line that does fit carries the count of the gap before
it (podlock.output_drops), so a receiver sees where alerts are missing. Every failure is
counted; the log gets the first one at once, then at most one line per LOG_EVERY_S with
what happened since, and one line when the output delivers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from detector.outputs.base import Refused, Retry, Writer

log = logging.getLogger("podlock.detector.outputs")

LOG_EVERY_S = 10.0
FIRST_BACKOFF_S = 0.1
ABORT_WAIT_S = 2.0  # at shutdown, for a sender unblocked by Writer.abort to finish
IDLE_CHECK_S = 0.25  # how soon an idle output notices a sink that lost lines (program exit)


@dataclass(frozen=True)
class Limits:
    capacity: int = 10_000
    """Lines waiting at most (per output)."""
    max_bytes: int = 16 << 20
    """Bytes waiting at most (per output)."""
    max_backoff_s: float = 10.0
    """Longest wait between two retries (the wait doubles from 0.1 s)."""


@dataclass
class Stats:
    """One output's counts (read by metrics; plain ints, written under the output's lock)."""

    delivered: int = 0
    dropped: int = 0
    retries: int = 0
    queued: int = 0
    queued_bytes: int = 0


class _FailureLog:
    """Failures logged at a bounded rate: at most one line per LOG_EVERY_S, saying what
    happened since the previous one; the recovery in one line."""

    def __init__(self, label: str, clock: Callable[[], float]) -> None:
        self.label, self.clock = label, clock
        self.failing = False  # a failure was logged, its recovery not yet
        self.failures = self.dropped = 0  # since the last line logged
        self.attempts = 0  # failed attempts since the last delivery
        self.last_logged = -LOG_EVERY_S

    def failed(self, problem: str, dropped: int, waiting: int) -> None:
        self.failures += 1
        self.attempts += 1
        self.dropped += dropped
        now = self.clock()
        if now - self.last_logged < LOG_EVERY_S:
            return
        log.warning(
            "%s output: %s (%d failures, %d alerts dropped since the last message; %d waiting)",
            self.label, problem, self.failures, self.dropped, waiting,
        )  # fmt: skip
        self.failing, self.last_logged = True, now
        self.failures = self.dropped = 0

    def delivered(self) -> None:
        if self.failing or (self.failures and self.clock() - self.last_logged >= LOG_EVERY_S):
            log.warning(
                "%s output: delivering again after %d failed attempts (%d failures, %d alerts "
                "dropped since the last message)",
                self.label, self.attempts, self.failures, self.dropped,
            )  # fmt: skip
            self.failing, self.last_logged = False, self.clock()
            self.failures = self.dropped = 0
        self.attempts = 0


class Delivery:
    def __init__(
        self,
        name: str,
        writer: Writer,
        mark: Callable[[bytes, int], bytes],
        limits: Limits,
    ) -> None:
        self.name, self.writer, self.limits = name, writer, limits
        self.stats = Stats()
        self._mark = mark
        self._lines: deque[bytes] = deque()
        self._gap = 0  # lines dropped since the last one queued: the next one says so
        self._lock = threading.Condition()
        self._log = _FailureLog(writer.label, time.monotonic)
        self._stop_at: float | None = None  # set by close: drain until then
        self._thread = threading.Thread(target=self._run, name=f"podlock-{name}", daemon=True)
        self._thread.start()

    # --- the event loop's side: never blocks on the receiver -----------------------------

    def put(self, lines: list[bytes]) -> None:
        limits, stats = self.limits, self.stats
        overflow, room = 0, limits.max_bytes
        with self._lock:
            for line in lines:
                if stats.queued >= limits.capacity or stats.queued_bytes + len(line) > room:
                    overflow += 1
                    self._gap += 1
                    continue
                if self._gap:
                    line = self._mark(line, self._gap)
                    self._gap = 0
                self._lines.append(line)
                stats.queued += 1
                stats.queued_bytes += len(line)
            if overflow:
                stats.dropped += overflow
                self._log.failed(
                    f"queue full ({limits.capacity} alerts or {limits.max_bytes} bytes); "
                    f"dropped {overflow}", overflow, stats.queued,
                )  # fmt: skip
            self._lock.notify()

    # --- the sender thread --------------------------------------------------------------

    def _take(self) -> list[bytes] | None:
        """The next lines to write (up to the writer's batch); [] after IDLE_CHECK_S with
        nothing to send; None once closed and drained or past the drain deadline."""
        with self._lock:
            if not self._lines:
                if self._stop_at is not None:
                    return None
                self._lock.wait(IDLE_CHECK_S)
                if not self._lines:
                    return []
            if self._stop_at is not None and time.monotonic() > self._stop_at:
                return None
            n = min(self.writer.batch, len(self._lines))
            batch = [self._lines.popleft() for _ in range(n)]
            self.stats.queued -= n
            self.stats.queued_bytes -= sum(map(len, batch))
            return batch

    def _requeue(self, lines: list[bytes]) -> None:
        """Back at the head, in order (they were queued before: the bounds may be exceeded
        by at most one batch and a program's pipe buffer)."""
        with self._lock:
            self._lines.extendleft(reversed(lines))
            self.stats.queued += len(lines)
            self.stats.queued_bytes += sum(map(len, lines))

    def _refused(self, err: Refused) -> None:
        with self._lock:
            self.stats.dropped += err.count
            if self._lines:  # the next alert says how many went missing before it
                head = self._lines.popleft()
                marked = self._mark(head, err.count)
                self._lines.appendleft(marked)
                self.stats.queued_bytes += len(marked) - len(head)
            else:
                self._gap += err.count
            self._log.failed(err.problem, err.count, self.stats.queued)

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while (batch := self._take()) is not None:
            try:
                if not batch:
                    self.writer.check()  # idle: did it lose what it was given?
                    continue
                self.writer.write(batch)
            except Retry as err:
                self._requeue(err.resend)
                with self._lock:
                    self.stats.delivered -= err.reclaimed
                    self.stats.retries += 1
                    self._log.failed(f"{err.problem}; retrying", 0, self.stats.queued)
                    self._pause(backoff)
                backoff = min(backoff * 2, self.limits.max_backoff_s)
            except Refused as err:
                self._refused(err)
            else:
                with self._lock:
                    self.stats.delivered += len(batch)
                    self._log.delivered()
                backoff = FIRST_BACKOFF_S
        self._give_up()

    def _pause(self, seconds: float) -> None:
        """Wait before a retry (lock held); a close cuts it short once, then the waits go on
        within the drain deadline."""
        if self._stop_at is None:
            self._lock.wait_for(lambda: self._stop_at is not None, timeout=seconds)
        else:
            self._lock.wait(min(seconds, max(0.0, self._stop_at - time.monotonic())))

    def _give_up(self) -> None:
        with self._lock:
            left = len(self._lines)
            if left:
                self._lines.clear()
                self.stats.dropped += left
                self.stats.queued = self.stats.queued_bytes = 0
                log.warning(
                    "%s output: %d alerts still waiting at shutdown were dropped",
                    self.writer.label, left,
                )  # fmt: skip

    def close(self, deadline: float) -> None:
        """Stop taking alerts' lines and let the sender drain until `deadline` (monotonic);
        what is left then is counted and logged as dropped."""
        with self._lock:
            self._stop_at = deadline
            self._lock.notify_all()

    def join(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():  # stuck in a write: unblock it
            self.writer.abort()
            self._thread.join(ABORT_WAIT_S)
        self._give_up()
        if self._thread.is_alive():  # a write nothing can unblock (a stdout pipe nobody reads)
            log.warning("%s output: still blocked in a write at shutdown", self.writer.label)
            return  # its sender is a daemon thread; closing the writer under it could hang
        lost = self.writer.close()
        if lost:
            with self._lock:
                self.stats.dropped += lost
                self.stats.delivered -= lost
            log.warning("%s output: %d alerts left unread at shutdown", self.writer.label, lost)
