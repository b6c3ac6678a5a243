"""Each alert's JSON POSTed to a URL, one request per alert in order (falcosidekick's
format is Falco's, so it takes these as is), over one kept-alive connection; https:// with
Falco's TLS settings (a CA file or directory, mutual TLS, or no check at all).

A receiver that is down, times out or answers 5xx, 408 or 429 gets the same alert again
after a backoff, and nothing after it is sent first; any other 4xx refuses that alert for
good (it is counted as dropped).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import urllib.parse

from detector.config import HttpOutput
from detector.errors import ConfigError
from detector.outputs.base import Refused, Retry

_TRANSIENT = {408, 429}


class HttpWriter:
    batch = 1

    def __init__(self, settings: HttpOutput) -> None:
        url = settings.url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"http_output.url: {url!r} is not an http:// or https:// URL")
        self.label = f"http ({url})"
        self._https = parts.scheme == "https"
        self._settings = settings
        if self._https:
            client_context(settings)  # a file that cannot be used stops start-up (or a reload)
        self._host, self._port = parts.hostname, parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = settings.timeout_s
        self._headers = {"Content-Type": "application/json", "User-Agent": settings.user_agent}
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                # read again for every new connection: renewed certificates need no restart
                context = client_context(self._settings)
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def write(self, lines: list[bytes]) -> None:
        for i, body in enumerate(lines):
            try:
                status = self._post(body)
            except (OSError, http.client.HTTPException, ConfigError) as err:
                self._drop_connection()  # ConfigError: a TLS file became unusable since start
                raise Retry(_problem(err), lines[i:]) from None
            if status >= 500 or status in _TRANSIENT:
                raise Retry(f"the receiver answered {status}", lines[i:])
            if status >= 300:
                raise Refused(f"the receiver refused an alert with {status}", 1)

    def _post(self, body: bytes) -> int:
        reused = self._conn is not None
        try:
            return self._exchange(body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # the receiver closed the idle kept-alive connection: once more on a new one
            self._drop_connection()
            return self._exchange(body)

    def _exchange(self, body: bytes) -> int:
        conn = self._connection()
        conn.request("POST", self._path, body=body, headers=self._headers)
        resp = conn.getresponse()
        resp.read()
        if resp.will_close:
            self._drop_connection()
        return resp.status

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def check(self) -> None:
        pass  # nothing written is lost afterwards

    def abort(self) -> None:
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> int:
        self._drop_connection()
        return 0


def _problem(err: Exception) -> str:
    if isinstance(err, TimeoutError | socket.timeout):
        return "no answer within the timeout"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return str(text)


def client_context(settings: HttpOutput) -> ssl.SSLContext:
    """The TLS settings of http_output as a client context; a file that cannot be used is a
    ConfigError naming the key."""
    try:
        if settings.ca_cert or settings.ca_path:
            context = ssl.create_default_context(
                cafile=settings.ca_cert or None, capath=settings.ca_path or None
            )
        else:
            context = ssl.create_default_context()
    except (OSError, ssl.SSLError) as err:
        key = "ca_cert" if settings.ca_cert else "ca_path"
        raise ConfigError(f"http_output.{key}: {_unusable(err)}") from None
    if settings.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.mtls:
        try:
            context.load_cert_chain(settings.client_cert, settings.client_key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"http_output.client_cert: {settings.client_cert} with client_key "
                f"{settings.client_key}: {_unusable(err)}"
            ) from None
    return context


def _unusable(err: OSError) -> str:
    if isinstance(err, ssl.SSLError):
        return f"not a usable PEM certificate or key ({err.reason or err})"
    return f"cannot be read ({err.strerror or err})" + (f": {err.filename}" if err.filename else "")
