"""Where audit events come from: the API server's audit log file, followed, and its audit
webhook backend, served. Each runs in a thread of its own and hands exec/attach records
to the agent's loop through an `Inbox`; the matching itself is detector/audit.py.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from detector.alerts import Alert
from detector.audit import Attributor, AuditError, AuditIndex, ExecRecord, events_of, parse_event
from detector.config import K8sAudit
from detector.k8s import ContainerMeta

log = logging.getLogger("podlock.detector.audit")

MAX_BODY = 16 * 1024 * 1024  # an EventList larger than this is refused (413)
START_TAIL = 16 * 1024 * 1024  # at start, a log file is read from this far before its end
POLL_S = 0.05
_LOG_EVERY_NS = 10_000_000_000  # a source logs at most one problem per 10 s (all counted)


class Inbox:
    """Records from the source threads to the loop. deque's append and popleft are atomic,
    so no lock; bounded by `capacity`, the oldest dropped and counted beyond it."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._records: deque[ExecRecord] = deque()
        self.capacity = capacity
        self.dropped = 0
        self.bad = 0  # events that could not be read
        self.caught_up_ns = 0  # every record written before this wall time has been put here
        self._last_log_ns = 0

    def put(self, record: ExecRecord) -> None:
        if len(self._records) >= self.capacity:
            self._records.popleft()
            self.dropped += 1
        self._records.append(record)

    def problem(self, message: str) -> None:
        """A bad event or line: counted always, logged at a bounded rate."""
        self.bad += 1
        now = time.monotonic_ns()
        if now - self._last_log_ns >= _LOG_EVERY_NS:
            self._last_log_ns = now
            log.warning("%s (%d audit problems so far)", message, self.bad)

    def drain_into(self, index: AuditIndex) -> None:
        records = self._records
        while records:
            index.add(records.popleft())

    def feed(self, body: object, where: str) -> int:
        """Put the exec/attach records of one delivered body; returns how many."""
        try:
            events = events_of(body)
        except AuditError as err:
            self.problem(f"{where}: {err}")
            return 0
        n = 0
        for event in events:
            try:
                record = parse_event(event)
            except AuditError as err:
                self.problem(f"{where}: {err}")
                continue
            if record is not None:
                self.put(record)
                n += 1
        return n


class LogFollower:
    """Follows an audit log file (one JSON event a line, as `--audit-log-path` writes it)
    across rotation and truncation. Its `caught_up_ns` in the inbox says up to when the
    file has been read to its end: with the API server's blocking log mode, a request
    received before that is in."""

    def __init__(self, path: str, inbox: Inbox) -> None:
        self.path, self.inbox = path, inbox
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self.lines = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _open(self, first: bool) -> tuple[int, int] | None:
        """(fd, inode), positioned: near the end the first time, at the start after a rotation."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        if first and st.st_size > START_TAIL:
            os.lseek(fd, st.st_size - START_TAIL, os.SEEK_SET)
        return fd, st.st_ino

    def _run(self) -> None:
        opened = None
        first = True
        partial = b""
        skip_partial = False
        missing_logged = False
        while not self._stop.is_set():
            if opened is None:
                opened = self._open(first)
                if opened is None:
                    if not missing_logged:
                        log.warning("audit log %s: cannot open it yet; retrying", self.path)
                        missing_logged = True
                    self._stop.wait(0.5)
                    continue
                skip_partial = first and os.lseek(opened[0], 0, os.SEEK_CUR) > 0
                first, partial = False, b""
            fd, inode = opened
            started = time.time_ns()
            chunk = os.read(fd, 1 << 20)
            if chunk:
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                if skip_partial and lines:
                    lines, skip_partial = lines[1:], False  # began mid-line
                for line in lines:
                    self._line(line)
                continue
            self.inbox.caught_up_ns = started  # read to the end: all written before is in
            try:
                st = os.stat(self.path)
                rotated = st.st_ino != inode or st.st_size < os.lseek(fd, 0, os.SEEK_CUR)
            except OSError:
                rotated = True
            if rotated:
                os.close(fd)
                opened = None
                continue
            self._stop.wait(POLL_S)
        if opened is not None:
            os.close(opened[0])

    def _line(self, line: bytes) -> None:
        self.lines += 1
        if not line.strip():
            return
        try:
            body = json.loads(line)
        except ValueError as err:
            self.inbox.problem(f"audit log {self.path}, line {self.lines}: not JSON ({err})")
            return
        self.inbox.feed(body, f"audit log {self.path}, line {self.lines}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._answer(411, "the audit webhook needs a Content-Length")
        if int(length) > MAX_BODY:
            return self._answer(413, f"an audit batch may be at most {MAX_BODY} bytes")
        data = self.rfile.read(int(length))
        try:
            body = json.loads(data)
        except ValueError as err:
            self.server.inbox.problem(f"audit webhook: the body is not JSON ({err})")
            return self._answer(400, f"the body is not JSON: {err}")
        self.server.inbox.feed(body, "audit webhook")
        self._answer(200, "")

    def _answer(self, status: int, problem: str) -> None:
        body = json.dumps({"error": problem} if problem else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the API server posts often; problems are logged through the inbox


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    inbox: Inbox


class WebhookReceiver:
    """The API server's audit webhook backend (`--audit-webhook-config-file` naming this
    URL): POSTed EventLists, over TLS when a certificate and key are given."""

    def __init__(self, bind: str, inbox: Inbox, cert: str = "", key: str = "") -> None:
        host, _, port = bind.rpartition(":")
        self._server = _Server((host.strip("[]") or "0.0.0.0", int(port)), _Handler)
        self._server.inbox = inbox
        if cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="audit-webhook", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Attribution:
    """The agent's attribution stage: the configured sources feeding an index, and the
    attributor that holds exec-session alerts until their record is in (or not)."""

    def __init__(self, settings: K8sAudit, lookup: Callable[[str], ContainerMeta | None]) -> None:
        self.inbox = Inbox()
        self.index = AuditIndex(
            window_ns=int(settings.window_s * 1e9), skew_ns=int(settings.skew_s * 1e9)
        )
        self.attributor = Attributor(self.index, lookup, hold_ns=int(settings.hold_s * 1e9))
        self.sources: list[LogFollower | WebhookReceiver] = []
        if settings.log_file:
            self.sources.append(LogFollower(settings.log_file, self.inbox))
        if settings.webhook_bind:
            self.sources.append(
                WebhookReceiver(
                    settings.webhook_bind, self.inbox, settings.webhook_cert, settings.webhook_key
                )
            )

    def start(self) -> None:
        for source in self.sources:
            source.start()

    def close(self) -> None:
        for source in self.sources:
            source.close()

    def route(self, alerts: list[Alert], now_ns: int, final: bool = False) -> list[Alert]:
        """Alerts in, the alerts that may leave now out (in order)."""
        self.inbox.drain_into(self.index)
        self.index.prune(now_ns)
        self.attributor.push(alerts, now_ns)
        return self.attributor.ready(now_ns, self.inbox.caught_up_ns, final)
