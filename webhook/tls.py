"""The served TLS context, reloaded when the certificate files change on disk.

Kubernetes updates a mounted Secret by writing the new files into a fresh directory and swapping
the `..data` symlink, so `tls.crt` and `tls.key` change together but not atomically for a reader
that opens them one after the other. `ReloadingContext` therefore:

- checks at most once per `check_interval` whether either file changed (two `stat` calls,
  following symlinks), and only on the handshake path — no thread, no inotify;
- reads both files once into memory and builds the new `SSLContext` from those bytes, so the
  certificate it reports (expiry, fingerprint) is the one it serves;
- swaps the new context in with one reference assignment; connections already established keep
  the context they were made with, so in-flight requests never notice;
- keeps serving the old pair when the new one is unreadable, unparseable or mismatched (a
  half-done swap), logs that once, and tries again when the files change again.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

log = logging.getLogger("podlock.tls")

CHECK_INTERVAL = 1.0  # seconds between stat checks; a rotation is picked up within this
TLS_MIN_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2: forward-secret AEAD suites only (TLS 1.3 suites are always AEAD).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

# (st_dev, st_ino, st_size, st_mtime_ns) of the certificate and of the key, after symlinks.
FileStamp = tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


class TLSError(Exception):
    """The certificate or key cannot be served; str() is one sentence naming the file."""


@dataclass(frozen=True)
class LoadedPair:
    context: ssl.SSLContext
    not_before: datetime
    not_after: datetime
    sha256: str  # fingerprint of the leaf certificate (DER), hex
    stamp: FileStamp


def server_context(
    cert_pem: bytes, key_pem: bytes, *, source: str = "certificate"
) -> ssl.SSLContext:
    """A server context for this certificate chain and key; TLS 1.2 minimum."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_MIN_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    ctx.set_ciphers(TLS12_CIPHERS)
    # gunicorn speaks HTTP/1.1 only; say so, so that a Go client never tries h2 on us.
    ctx.set_alpn_protocols(["http/1.1"])
    # The ssl module loads key material from paths only; an anonymous in-memory file gives it
    # exactly the bytes we parsed, with nothing written to a (possibly read-only) disk.
    fd = os.memfd_create("podlock-tls", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            f.write(cert_pem.rstrip(b"\n") + b"\n" + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}", password=_no_password)
    except ssl.SSLError as e:
        raise TLSError(f"{source}: cannot load the pair: {_ssl_reason(e)}") from None
    finally:
        os.close(fd)
    return ctx


def _no_password() -> bytes:
    # An encrypted key must fail to load, not prompt on a terminal.
    return b""


def _ssl_reason(e: ssl.SSLError) -> str:
    reason = e.reason or e.strerror or str(e)
    return str(reason).replace("_", " ").lower()


def leaf_certificate(cert_pem: bytes, *, source: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TLSError(f"{source}: not a PEM certificate") from None


def _stamp(cert_path: str, key_path: str) -> FileStamp:
    c, k = os.stat(cert_path), os.stat(key_path)
    return (
        (c.st_dev, c.st_ino, c.st_size, c.st_mtime_ns),
        (k.st_dev, k.st_ino, k.st_size, k.st_mtime_ns),
    )


def load_pair(cert_path: str, key_path: str) -> LoadedPair:
    """Read both files once and build the context from those bytes. Raises TLSError."""
    try:
        stamp = _stamp(cert_path, key_path)
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise TLSError(f"{e.filename}: cannot read: {e.strerror}") from None
    leaf = leaf_certificate(cert_pem, source=cert_path)
    context = server_context(cert_pem, key_pem, source=f"{cert_path} with {key_path}")
    return LoadedPair(
        context=context,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        stamp=stamp,
    )


def _valid_at(pair: LoadedPair, now: datetime) -> bool:
    return pair.not_before <= now < pair.not_after


class ReloadingContext:
    """The current served pair; `context()` is gunicorn's per-connection `ssl_context` hook."""

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        *,
        check_interval: float = CHECK_INTERVAL,
        on_reload: Callable[[str], None] | None = None,
    ) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._interval = check_interval
        self.on_reload = on_reload
        self._pair = load_pair(cert_path, key_path)  # startup: a bad pair is fatal
        self._next_check = time.monotonic() + check_interval
        # What the last failed check saw (the files' stamp, or the error when stat failed), so
        # a state that stays broken is reported once, not once per interval.
        self._failed_on: FileStamp | str | None = None
        self._lock = threading.Lock()

    @property
    def pair(self) -> LoadedPair:
        return self._pair

    def context(self) -> ssl.SSLContext:
        self.maybe_reload()
        return self._pair.context

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        # One thread checks; the others keep handshaking with the current pair meanwhile.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + self._interval
            self._check()
        finally:
            self._lock.release()

    def _check(self) -> None:
        try:
            stamp = _stamp(self.cert_path, self.key_path)
        except OSError as e:
            reason = f"{e.filename}: cannot stat: {e.strerror}"
            self._failed(reason, reason)
            return
        if stamp == self._pair.stamp or stamp == self._failed_on:
            return
        try:
            pair = load_pair(self.cert_path, self.key_path)
        except TLSError as e:
            self._failed(stamp, str(e))
            return
        now = datetime.now(UTC)
        if _valid_at(self._pair, now) and not _valid_at(pair, now):
            # Never trade a working certificate for one that clients will refuse right now.
            window = f"{pair.not_before.isoformat()} to {pair.not_after.isoformat()}"
            self._failed(stamp, f"{self.cert_path}: the new certificate is valid only {window}")
            return
        self._pair = pair  # the atomic swap: new handshakes use the new context
        self._failed_on = None
        log.info(
            "TLS certificate reloaded: sha256 %s, valid until %s",
            pair.sha256[:16],
            pair.not_after.isoformat(),
        )
        if self.on_reload:
            self.on_reload("success")

    def _failed(self, seen: FileStamp | str, reason: str) -> None:
        if seen != self._failed_on:
            log.warning("TLS reload failed, still serving the previous certificate: %s", reason)
            if self.on_reload:
                self.on_reload("failure")
        self._failed_on = seen

    # --- what /readyz and /metrics ask -------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        remaining = self.seconds_until_expiry()
        if remaining <= 0:
            return False, f"served certificate expired at {self._pair.not_after.isoformat()}"
        return True, "ok"

    def seconds_until_expiry(self) -> float:
        self.maybe_reload()
        return (self._pair.not_after - datetime.now(UTC)).total_seconds()
