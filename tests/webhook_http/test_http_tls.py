"""`podlock serve` as a real process: TLS versions, no plaintext, keep-alive, health, limits,
graceful shutdown, and one-line refusals at start."""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import ssl
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
from http_support import Launcher, Server, client_context

from certs.cli import write_bundle
from certs.pki import Bundle, generate_bundle
from webhook.config import Settings
from webhook.review import MAX_BODY_BYTES, review
from webhook.serve import run


def _legacy_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that really offers an old protocol (OpenSSL 3 hides them below SECLEVEL 0)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext, hostname: str | None = None) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        return tls.version() or ""


@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        (ssl.TLSVersion.TLSv1_2, True),
        (ssl.TLSVersion.TLSv1_3, True),
        (ssl.TLSVersion.TLSv1_1, False),
        (ssl.TLSVersion.TLSv1, False),
    ],
)
def test_tls_versions(
    server: Server, bundle: Bundle, version: ssl.TLSVersion, accepted: bool
) -> None:
    if accepted:
        ctx = client_context(server.cafile, minimum_version=version, maximum_version=version)
        assert _handshake(server.port, ctx, "localhost") == version.name.replace("v1_", "v1.")
        return
    # Control: the same client completes a handshake with a server that allows the version,
    # so the refusal below comes from podlock, not from this machine's OpenSSL defaults.
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    legacy.load_cert_chain(server.cafile.parent / "tls.crt", server.cafile.parent / "tls.key")
    legacy.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy.minimum_version = ssl.TLSVersion.TLSv1
    a, b = socket.socketpair()
    with a, b, legacy.wrap_socket(a, server_side=True, do_handshake_on_connect=False) as srv:
        t = threading.Thread(target=srv.do_handshake, daemon=True)
        t.start()
        with _legacy_client(version).wrap_socket(b) as c:
            assert c.version() is not None
        t.join(5)

    with pytest.raises(ssl.SSLError) as err:
        _handshake(server.port, _legacy_client(version))
    assert "PROTOCOL_VERSION" in str(err.value).upper() or "UNSUPPORTED" in str(err.value).upper()


def test_no_plaintext(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            reply = s.recv(4096)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"HTTP/")


def test_certificate_is_verified_for_its_names(server: Server) -> None:
    ctx = client_context(server.cafile)
    assert _handshake(server.port, ctx, "podlock.podlock-system.svc")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server.port, ctx, "evil.example.com")


def test_keep_alive_reuses_one_connection(server: Server, example_raw: bytes) -> None:
    conn = server.connection()
    try:
        socks = []
        for path in ("/mutate", "/validate", "/mutate/warn", "/healthz", "/validate/audit"):
            method, body = ("GET", None) if path == "/healthz" else ("POST", example_raw)
            status, data, _ = server.request(method, path, body, conn=conn)
            assert status == 200, data
            socks.append(conn.sock)
        assert all(s is socks[0] for s in socks) and socks[0] is not None
        # An error answer does not close the connection either.
        status, _, _ = server.request("POST", "/validate", b"not json", conn=conn)
        assert status == 400
        assert server.request("GET", "/healthz", conn=conn)[0] == 200
        assert conn.sock is socks[0]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("path", "status", "body"), [("/healthz", 200, b"ok\n"), ("/readyz", 200, b"ok\n")]
)
def test_health(server: Server, path: str, status: int, body: bytes) -> None:
    assert server.request("GET", path)[:2] == (status, body)


def test_answer_matches_review(server: Server, example_raw: bytes, settings: Settings) -> None:
    status, data, ctype = server.request("POST", "/mutate", example_raw)
    assert (status, ctype) == (200, "application/json")
    assert data == review(example_raw, "mutate", "enforce", settings).body
    assert json.loads(data)["response"]["uid"] == json.loads(example_raw)["request"]["uid"]


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_413(server: Server, chunked: bool) -> None:
    conn = server.connection()
    try:
        body = b" " * (MAX_BODY_BYTES + 4096)
        if chunked:
            conn.request("POST", "/validate", body=iter([body]), encode_chunked=True)
        else:
            conn.request("POST", "/validate", body=body)
        resp = conn.getresponse()
        assert resp.status == 413
        assert resp.read().count(b"\n") == 1
    finally:
        conn.close()


def test_a_broken_chunked_body_is_400_not_a_traceback(server: Server) -> None:
    raw = (
        b"POST /validate HTTP/1.1\r\nHost: podlock\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n"  # ZZ: not a size
    )
    ctx = client_context(server.cafile)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain,
        ctx.wrap_socket(plain, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(raw)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = tls.recv(4096)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert "Traceback" not in server.log_text()


def test_sigterm_drains_and_exits_cleanly(
    launch: Launcher, cert_dir: Path, example_raw: bytes
) -> None:
    s = launch(cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt", workers=1)
    conn = s.connection()
    assert s.request("POST", "/validate", example_raw, conn=conn)[0] == 200
    # Requests already on the way when SIGTERM arrives are answered.
    results: list[int] = []

    def hammer() -> None:
        c = s.connection()
        try:
            for _ in range(20):
                results.append(s.request("POST", "/mutate", example_raw, conn=c)[0])
        except (OSError, http.client.HTTPException):
            pass  # after the drain the server closes idle connections: expected
        finally:
            c.close()

    t = threading.Thread(target=hammer)
    t.start()
    deadline = time.monotonic() + 60
    while not results:  # the hammering is under way (a loaded machine may take a while)
        assert t.is_alive() and time.monotonic() < deadline, "no request answered"
        time.sleep(0.01)
    s.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert s.proc.wait(30) == 0
    assert results and all(code == 200 for code in results)
    assert "Shutting down: Master" in s.log_text()
    conn.close()


def _serve_args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "bind": "127.0.0.1:0",
        "cert": None,
        "key": None,
        "config": None,
        "workers": 1,
        "certs": "files",
    }
    return argparse.Namespace(**(base | kw))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("cert-without-key", "give --cert and --key together"),
        ("no-default-certs", "no .certs/tls.crt / .certs/tls.key: create them with"),
        ("bad-bind", "--bind 'localhost': expected HOST:PORT"),
        ("zero-workers", "--workers 0: must be between 1 and 64"),
        ("too-many-workers", "--workers 65: must be between 1 and 64"),
        ("missing-config", "nope.yaml: cannot read the policy file"),
        ("missing-cert", "tls.crt: cannot read"),
        ("garbage-cert", "tls.crt: not a PEM certificate"),
        ("mismatched-pair", "cannot load the pair: key values mismatch"),
    ],
)
def test_serve_refuses_bad_start_with_one_line(
    tmp_path: Path,
    bundle: Bundle,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    write_bundle(str(tmp_path), bundle)
    cert, key = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    args = _serve_args(cert=cert, key=key)
    if case == "cert-without-key":
        args.key = None
    elif case == "no-default-certs":
        (tmp_path / "empty").mkdir()
        monkeypatch.chdir(tmp_path / "empty")
        args.cert = args.key = None
    elif case == "bad-bind":
        args.bind = "localhost"
    elif case == "zero-workers":
        args.workers = 0
    elif case == "too-many-workers":
        args.workers = 65
    elif case == "missing-config":
        args.config = "nope.yaml"
    elif case == "missing-cert":
        (tmp_path / "tls.crt").unlink()
    elif case == "garbage-cert":
        (tmp_path / "tls.crt").write_text("hello\n")
    elif case == "mismatched-pair":
        other = generate_bundle("x", "y", now=datetime.now(UTC))
        (tmp_path / "tls.key").write_bytes(other.tls_key)
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("podlock serve: ") and err.count("\n") == 1
    assert message in err


def test_alpn_offers_http11_only(server: Server) -> None:
    ctx = client_context(server.cafile)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
