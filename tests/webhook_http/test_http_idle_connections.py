"""Connections that are open but carry no request must not hold podlock's threads.

The API server's HTTP client (Go's) dials a new connection when it has none free, and when
another one frees up first it keeps the new one, handshake done, idle in its pool. gunicorn's
gthread worker handed such a connection to a thread as soon as the handshake bytes arrived,
and the thread then waited, blocked, for a request that might not come for minutes: a burst of
creates could leave every thread of a worker waiting, and the requests on that worker's other
connections timed out (the API server's "context deadline exceeded").
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from http_support import Launcher, client_context

IDLE = 40  # well above 2 workers x 4 threads, however the kernel spreads them


def test_requests_are_answered_while_many_connections_sit_idle_after_their_handshake(
    cert_dir: Path, launch: Launcher, example_raw: bytes
) -> None:
    server = launch(cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt", workers=2)
    context = client_context(server.cafile)
    idle: list[ssl.SSLSocket] = []
    try:
        for _ in range(IDLE):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            idle.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))  # handshake done
        time.sleep(0.5)  # the server has seen every one of them
        for _ in range(10):  # fresh connections land on either worker
            conn = server.connection()
            conn.timeout = 30  # a worker stuck on an idle connection never answers
            status, body, _ = server.request("POST", "/mutate", example_raw, conn=conn)
            conn.close()
            assert status == 200, body
        # and the idle ones still work once they send a request
        request = b"GET /healthz HTTP/1.1\r\nHost: podlock\r\nConnection: close\r\n\r\n"
        for sock in idle[:3]:
            sock.sendall(request)
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()
