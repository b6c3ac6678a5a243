"""Fixtures for the HTTP/TLS edge: certificates, the example review, and a real `podlock serve`
process on a random loopback port."""

from __future__ import annotations

import ctypes
import http.client
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from certs.cli import write_bundle
from certs.pki import Bundle, generate_bundle

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "admission-review-pod.json"
HOSTS = ("127.0.0.1", "localhost")
PR_SET_PDEATHSIG = 1


def make_bundle() -> Bundle:
    return generate_bundle("podlock", "podlock-system", HOSTS, now=datetime.now(UTC))


@pytest.fixture(scope="session")
def example_raw() -> bytes:
    return EXAMPLE.read_bytes()


@pytest.fixture(scope="session")
def bundle() -> Bundle:
    return make_bundle()


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory: pytest.TempPathFactory, bundle: Bundle) -> Path:
    out = tmp_path_factory.mktemp("certs")
    write_bundle(str(out), bundle)
    return out


def client_context(cafile: str | Path, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    for attr, version in versions.items():
        setattr(ctx, attr, version)
    return ctx


@dataclass
class Server:
    """A running `podlock serve`."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    cafile: Path

    def connection(self, ctx: ssl.SSLContext | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=ctx or client_context(self.cafile), timeout=10
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        conn: http.client.HTTPSConnection | None = None,
    ) -> tuple[int, bytes, str]:
        own = conn is None
        c = conn or self.connection()
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            c.request(method, path, body=body, headers=headers)
            resp = c.getresponse()
            return resp.status, resp.read(), resp.getheader("Content-Type") or ""
        finally:
            if own:
                c.close()

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(p) for p in children.split()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def _die_with_parent() -> None:
    # If pytest is killed, its servers go too (they would hold their ports and CPU otherwise).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_server(
    tmp: Path,
    cert: Path,
    key: Path,
    cafile: Path,
    *,
    workers: int = 2,
    extra_args: Sequence[str] = (),
) -> Server:
    """Start `podlock serve` on 127.0.0.1:0 and wait until every worker answers."""
    log = tmp / f"serve-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "webhook.cli", "serve", "--bind", "127.0.0.1:0"]
    cmd += ["--cert", str(cert), "--key", str(key), "--workers", str(workers), *extra_args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + 90  # a loaded machine boots the workers slowly
    port = 0
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        m = re.search(r"Listening at: https://127\.0\.0\.1:(\d+)", text)
        if m and text.count("Booting worker") >= workers:
            port = int(m.group(1))
            break
        if proc.poll() is not None:
            raise AssertionError(f"podlock serve exited {proc.returncode}:\n{text}")
        time.sleep(0.05)
    else:
        proc.kill()
        proc.wait()  # reaped here: a live Popen would warn in whichever test runs next
        raise AssertionError(f"podlock serve did not start:\n{log.read_text()}")
    server = Server(proc=proc, port=port, log=log, cafile=cafile)
    while time.monotonic() < deadline:
        try:
            if server.request("GET", "/healthz")[0] == 200:
                return server
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError(f"podlock serve never answered /healthz:\n{server.log_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cert_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve")
    s = start_server(tmp, cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt")
    try:
        yield s
    finally:
        code = s.stop()
    assert code == 0, s.log_text()


Launcher = Callable[..., Server]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """start_server() for one test; whatever is still running at teardown is killed."""
    started: list[Server] = []

    def _launch(cert: Path, key: Path, cafile: Path, **kw: Any) -> Server:
        s = start_server(tmp_path, cert, key, cafile, **kw)
        started.append(s)
        return s

    yield _launch
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)
