"""Every worker of a real `podlock serve` accepts on its own SO_REUSEPORT socket, so the
kernel spreads keep-alive connections over the workers; a replaced worker gets its own too."""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections import Counter
from pathlib import Path

from http_support import Launcher, Server

LISTEN, ESTABLISHED = "0A", "01"


def _tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of the IPv4 sockets bound locally to `port` in `state` (from /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == state:
            inodes.add(int(fields[9]))
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _listeners_by_process(server: Server) -> dict[int, set[int]]:
    listening = _tcp_sockets(server.port, LISTEN)
    pids = [server.proc.pid, *server.worker_pids()]
    return {pid: _socket_inodes(pid) & listening for pid in pids}


def _assert_one_listener_per_worker(server: Server) -> None:
    by_pid = _listeners_by_process(server)
    assert by_pid.pop(server.proc.pid) == set(), "the master must not hold a listening socket"
    assert len(by_pid) == 2
    assert all(len(inodes) == 1 for inodes in by_pid.values()), by_pid
    first, second = by_pid.values()
    assert first != second, "each worker needs a socket of its own"


def _wait_for_replacement(server: Server, gone: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        listeners = _listeners_by_process(server)
        if len(pids) == 2 and gone not in pids and all(listeners[pid] for pid in pids):
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {gone} was not replaced: {server.log_text()}")


def test_each_worker_listens_on_its_own_socket_also_after_a_restart(
    cert_dir: Path, launch: Launcher
) -> None:
    server = launch(cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt", workers=2)
    _assert_one_listener_per_worker(server)

    gone = server.worker_pids()[0]
    os.kill(gone, signal.SIGTERM)
    _wait_for_replacement(server, gone)
    _assert_one_listener_per_worker(server)
    assert all(server.request("GET", "/healthz")[0] == 200 for _ in range(20))


def test_keepalive_connections_are_spread_over_the_workers(
    server: Server, example_raw: bytes
) -> None:
    # Keep-alive connections opened one after the other and kept open, as the API server's are.
    conns: list[http.client.HTTPSConnection] = []
    try:
        for _ in range(24):
            conns.append(server.connection())
            status, _, _ = server.request("POST", "/mutate", example_raw, conn=conns[-1])
            assert status == 200
        established = _tcp_sockets(server.port, ESTABLISHED)
        held = Counter(
            {pid: len(_socket_inodes(pid) & established) for pid in server.worker_pids()}
        )
        assert sum(held.values()) == 24, held
        # The kernel hashes each connection to a worker: 2 or fewer of 24 on one worker by
        # chance has a probability of about 4 in 100,000.
        assert min(held.values()) > 2, held
    finally:
        for conn in conns:
            conn.close()
