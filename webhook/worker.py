"""podlock's gunicorn worker: `gthread`, except that a thread never waits for a request.

gthread hands a connection to a thread as soon as its socket is readable. For a new TLS
connection that is the client's hello, and the thread, after the handshake, blocks reading a
request that may not come: the API server's HTTP client (Go's) dials a connection when it has
none free and, if another frees up first, parks the new one idle in its pool. A burst of
admission calls could so leave every thread of a worker waiting on idle connections while the
requests on its other connections timed out in the API server ("context deadline exceeded").

Here the thread does the handshake (bounded by `HANDSHAKE_TIMEOUT`) and, unless a request has
started to arrive, gives the connection back to the worker's poller as a keep-alive connection:
it comes back to a thread when its request does, or is closed after the keep-alive time.
Relies on gthread's `handle(conn) -> (keep_alive, conn)` contract (gunicorn 22 and 23).
"""

from __future__ import annotations

import select
import ssl
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

HANDSHAKE_TIMEOUT = 10.0  # seconds; the API server completes its handshake in one round trip
_GREETED = "podlock_greeted"  # set on a connection once its handshake is done


class RequestReadyWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    def handle(self, conn: Any) -> tuple[bool, Any]:
        if getattr(conn, _GREETED, False):
            return _handled(super().handle(conn))
        setattr(conn, _GREETED, True)
        sock = conn.sock
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.settimeout(HANDSHAKE_TIMEOUT)
                sock.do_handshake()
                sock.settimeout(None)
            except OSError as err:  # ssl.SSLError included: not TLS, a bad hello, a timeout
                self.log.debug("TLS handshake with %s failed: %s", conn.client, err)
                return False, conn  # gthread closes it
        if not _request_arriving(sock):
            return True, conn  # to the poller; a thread takes it up when its request arrives
        return _handled(super().handle(conn))


def _handled(result: Any) -> tuple[bool, Any]:
    keep_alive, conn = result
    return bool(keep_alive), conn


def _request_arriving(sock: Any) -> bool:
    """Bytes of a request are here: decrypted and buffered by TLS, or unread on the socket."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
