"""Certificate rotation: the reload rules in-process, then a real 2-worker `podlock serve` under
load while the Secret-style `..data` symlink is swapped, through a broken state and back."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from http_support import Launcher, Server, make_bundle

from certs.cli import write_bundle
from certs.pki import Bundle, generate_bundle
from webhook.tls import ReloadingContext, TLSError


def _fingerprint(pem: bytes) -> str:
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


@pytest.fixture(scope="module")
def bundles() -> list[Bundle]:
    return [make_bundle() for _ in range(3)]


class SecretDir:
    """A directory laid out like a kubelet-mounted Secret: tls.crt -> ..data/tls.crt, with
    `..data` a symlink to a timestamped directory that is swapped in one rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        for name in ("tls.crt", "tls.key"):
            os.symlink(f"..data/{name}", root / name)

    def publish(self, cert: bytes | None, key: bytes | None) -> None:
        self.version += 1
        target = self.root / f"..v{self.version}"
        target.mkdir()
        if cert is not None:
            (target / "tls.crt").write_bytes(cert)
        if key is not None:
            (target / "tls.key").write_bytes(key)
        tmp = self.root / "..data_tmp"
        os.symlink(target.name, tmp)
        os.replace(tmp, self.root / "..data")

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"


# --- the rules, in-process ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "served", "event"),
    [
        ("good-new", 1, "success"),
        ("mismatched", 0, "failure"),  # new certificate, old key: a half-done swap
        ("key-missing", 0, "failure"),
        ("garbage-cert", 0, "failure"),
        ("empty-key", 0, "failure"),
        ("unchanged", 0, None),
        ("expired-new", 0, "failure"),  # a valid pair, but clients would refuse it
        ("future-new", 0, "failure"),
    ],
)
def test_reload_rules(
    tmp_path: Path, bundles: list[Bundle], state: str, served: int, event: str | None
) -> None:
    old, new = bundles[0], bundles[1]
    secret = SecretDir(tmp_path)
    secret.publish(old.tls_cert, old.tls_key)
    events: list[str] = []
    tls = ReloadingContext(str(secret.cert), str(secret.key), check_interval=0)
    tls.on_reload = events.append
    first = tls.context()
    if state == "good-new":
        secret.publish(new.tls_cert, new.tls_key)
    elif state == "mismatched":
        secret.publish(new.tls_cert, old.tls_key)
    elif state == "key-missing":
        secret.publish(new.tls_cert, None)
    elif state == "garbage-cert":
        secret.publish(b"-----BEGIN CERTIFICATE-----\nAAAA\n", new.tls_key)
    elif state == "empty-key":
        secret.publish(new.tls_cert, b"")
    elif state in ("expired-new", "future-new"):
        shift = timedelta(days=-400 if state == "expired-new" else 2)
        dated = generate_bundle("podlock", "ns", now=datetime.now(UTC) + shift)
        secret.publish(dated.tls_cert, dated.tls_key)
    for _ in range(3):  # repeated checks of one broken state report it once
        ctx = tls.context()
    assert tls.pair.sha256 == _fingerprint(bundles[served].tls_cert)
    assert (ctx is first) == (served == 0)
    assert events == ([event] if event else [])


def test_recovers_when_the_broken_state_is_fixed(tmp_path: Path, bundles: list[Bundle]) -> None:
    secret = SecretDir(tmp_path)
    secret.publish(bundles[0].tls_cert, bundles[0].tls_key)
    tls = ReloadingContext(str(secret.cert), str(secret.key), check_interval=0)
    secret.publish(bundles[1].tls_cert, bundles[0].tls_key)
    tls.context()
    secret.publish(bundles[1].tls_cert, bundles[1].tls_key)
    tls.context()
    assert tls.pair.sha256 == _fingerprint(bundles[1].tls_cert)


def test_checks_at_most_once_per_interval(tmp_path: Path, bundles: list[Bundle]) -> None:
    secret = SecretDir(tmp_path)
    secret.publish(bundles[0].tls_cert, bundles[0].tls_key)
    tls = ReloadingContext(str(secret.cert), str(secret.key), check_interval=3600)
    secret.publish(bundles[1].tls_cert, bundles[1].tls_key)
    tls.context()
    assert tls.pair.sha256 == _fingerprint(bundles[0].tls_cert)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("mismatched", "cannot load the pair: key values mismatch"),
        ("key-missing", "tls.key: cannot read: No such file or directory"),
        ("garbage-cert", "tls.crt: not a PEM certificate"),
    ],
)
def test_bad_pair_at_start_is_one_sentence(
    tmp_path: Path, bundles: list[Bundle], state: str, message: str
) -> None:
    secret = SecretDir(tmp_path)
    if state == "mismatched":
        secret.publish(bundles[0].tls_cert, bundles[1].tls_key)
    elif state == "key-missing":
        secret.publish(bundles[0].tls_cert, None)
    else:
        secret.publish(b"garbage", bundles[0].tls_key)
    with pytest.raises(TLSError) as err:
        ReloadingContext(str(secret.cert), str(secret.key))
    assert message in str(err.value) and "\n" not in str(err.value)


# --- under load, real gunicorn -------------------------------------------------------------


@dataclass
class Load:
    """Clients hammering the server: keep-alive connections and a new connection per request."""

    port: int
    ctx: ssl.SSLContext
    body: bytes
    stop: threading.Event = field(default_factory=threading.Event)
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    # (start, end, sha256 of the served certificate) for every new handshake
    handshakes: list[tuple[float, float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _post(self, conn: http.client.HTTPSConnection) -> None:
        conn.request("POST", "/validate", body=self.body)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200 or b'"uid"' not in data:
            raise AssertionError(f"status {resp.status}: {data[:100]!r}")

    def keep_alive(self) -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        sock = None
        try:
            while not self.stop.is_set():
                try:
                    self._post(conn)
                except (OSError, AssertionError, http.client.HTTPException) as e:
                    with self.lock:
                        self.failures.append(f"keep-alive: {e!r}")
                    return
                if sock is None:
                    sock = conn.sock
                elif conn.sock is not sock:
                    with self.lock:
                        self.failures.append("keep-alive connection was replaced")
                    return
                with self.lock:
                    self.ok += 1
        finally:
            conn.close()

    def fresh(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
            try:
                conn.connect()
                assert isinstance(conn.sock, ssl.SSLSocket)
                der = conn.sock.getpeercert(binary_form=True) or b""
                self._post(conn)
            except (OSError, AssertionError, http.client.HTTPException) as e:
                with self.lock:
                    self.failures.append(f"new connection: {e!r}")
                continue
            finally:
                conn.close()
            with self.lock:
                self.ok += 1
                self.handshakes.append((start, time.monotonic(), hashlib.sha256(der).hexdigest()))

    def seen_since(self, t: float) -> set[str]:
        with self.lock:
            return {fp for start, _, fp in self.handshakes if start >= t}

    def wait_for(self, fp: str, since: float, timeout: float = 60) -> float:
        """Wait until 10 consecutive new handshakes that began after `since` served `fp`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                recent = [h for h in self.handshakes if h[0] >= since][-10:]
            if len(recent) == 10 and all(h[2] == fp for h in recent):
                return recent[0][0]
            time.sleep(0.05)
        raise AssertionError(f"new handshakes never served {fp[:12]}")


def _wait_for_each_worker(server: Server, problem: str, timeout: float = 60) -> None:
    """Until every worker has logged that its reload failed with `problem`."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [x for x in server.log_text().splitlines() if "TLS reload failed" in x]
        pids = server.worker_pids()
        if all(any(f"[{pid}]" in x and problem in x for x in lines) for pid in pids):
            return
        assert time.monotonic() < deadline, f"not every worker saw {problem!r}: {lines}"
        time.sleep(0.05)


def test_rotation_under_load(
    tmp_path: Path, bundles: list[Bundle], launch: Launcher, example_raw: bytes
) -> None:
    cafile = tmp_path / "cas.pem"
    cafile.write_bytes(b"".join(b.ca_cert for b in bundles))
    (tmp_path / "secret").mkdir()
    secret = SecretDir(tmp_path / "secret")
    fp = [_fingerprint(b.tls_cert) for b in bundles]
    secret.publish(bundles[0].tls_cert, bundles[0].tls_key)
    server = launch(secret.cert, secret.key, cafile, workers=2)
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = True
    load = Load(port=server.port, ctx=ctx, body=example_raw)
    threads = [threading.Thread(target=load.keep_alive) for _ in range(2)]
    threads += [threading.Thread(target=load.fresh) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        load.wait_for(fp[0], since=0)
        # 1. A clean rotation.
        t1 = time.monotonic()
        secret.publish(bundles[1].tls_cert, bundles[1].tls_key)
        load.wait_for(fp[1], since=t1)
        # 2. A broken intermediate state (new certificate, old key), then a missing key:
        #    both workers must keep serving the second pair (each has seen both states).
        t2 = time.monotonic()
        secret.publish(bundles[2].tls_cert, bundles[1].tls_key)
        _wait_for_each_worker(server, "key values mismatch")
        secret.publish(bundles[2].tls_cert, None)
        _wait_for_each_worker(server, "tls.key: cannot stat")
        t3 = time.monotonic()
        assert load.seen_since(t2) == {fp[1]}
        # 3. The fixed state is picked up.
        secret.publish(bundles[2].tls_cert, bundles[2].tls_key)
        load.wait_for(fp[2], since=t3)
        deadline = time.monotonic() + 60
        while load.ok <= 200:  # keep going past the rotation (a loaded machine is slow)
            assert time.monotonic() < deadline and not load.failures, load.failures
            time.sleep(0.1)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    assert load.failures == []
    assert load.ok > 200
    log = server.log_text()
    assert "TLS reload failed, still serving the previous certificate" in log
    assert "key values mismatch" in log
    # The served certificate's expiry, as /metrics reports it, is the third one's.
    status, text, _ = server.request("GET", "/metrics")
    assert status == 200
    assert b'podlock_tls_reloads_total{result="failure"}' in text
    assert server.stop() == 0


def test_old_connections_keep_their_certificate(
    tmp_path: Path, bundles: list[Bundle], launch: Launcher, example_raw: bytes
) -> None:
    """An established connection is not disturbed by a rotation; a new one gets the new pair."""
    cafile = tmp_path / "cas.pem"
    cafile.write_bytes(bundles[0].ca_cert + bundles[1].ca_cert)
    out = tmp_path / "plain"
    write_bundle(str(out), bundles[0])
    server = launch(out / "tls.crt", out / "tls.key", cafile, workers=1)
    ctx = ssl.create_default_context(cafile=str(cafile))
    conn = server.connection(ctx)
    assert server.request("POST", "/mutate", example_raw, conn=conn)[0] == 200
    # `podlock certs generate` over the same directory is a rotation too (atomic renames).
    write_bundle(str(out), bundles[1])
    new = _fingerprint(bundles[1].tls_cert)
    deadline = time.monotonic() + 60
    while _served(server.port, ctx) != new:  # picked up within a check interval, or later
        assert time.monotonic() < deadline, "the new pair was never served"  # under load
        time.sleep(0.1)
    assert server.request("POST", "/mutate", example_raw, conn=conn)[0] == 200
    conn.close()


def _served(port: int, ctx: ssl.SSLContext) -> str:
    """The sha256 of the certificate a new connection is served."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest()
