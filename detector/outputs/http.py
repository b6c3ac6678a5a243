"""Each alert's JSON POSTed to a URL (falcosidekick's format is Falco's, so it
takes these as is). A sender thread posts from a bounded queue, so a slow or dead
receiver costs the detector nothing: failures and queue overflows are counted and
logged once."""

from __future__ import annotations

import queue
import threading
import urllib.error
import urllib.request

from detector.alerts import Alert
from detector.outputs.base import SinkBase

_QUEUE_SIZE = 10_000
_STOP = object()


class HttpSink(SinkBase):
    # emit_many is SinkBase's: one POST per alert, as Falco's http_output does.
    name = "http"

    def __init__(self, url: str, timeout_s: float = 2.0, queue_size: int = _QUEUE_SIZE) -> None:
        self._url = url
        self._timeout = timeout_s
        super().__init__(f"http ({url})")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="podlock-http-output", daemon=True)
        self._thread.start()

    def emit(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert.to_json_bytes())
        except queue.Full:
            self._failures.record(f"{self._queue.maxsize} alerts waiting; dropping")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, bytes)
            request = urllib.request.Request(
                self._url,
                data=item,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "podlock-detector"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                    resp.read()
                self.sent += 1
            except (urllib.error.URLError, OSError, ValueError) as err:
                # URLError covers HTTP error statuses too; ValueError a malformed URL.
                self._failures.record(str(err))

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for up to `timeout_s`), then stop the sender."""
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)
