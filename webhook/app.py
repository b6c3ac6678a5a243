"""The Flask app: HTTP in, `review()` out. No policy here.

Status contract (the body of every non-200 answer is one line of `text/plain`):

    object allowed or denied       -> 200, the AdmissionReview from review(), byte for byte
    body over MAX_BODY_BYTES       -> 413 (refused from Content-Length before reading, or
                                      while reading a chunked body)
    not JSON / not AdmissionReview
    v1 / no request.uid            -> 400
    unknown mode or path           -> 404;  wrong method -> 405
    our own bug                    -> 500 (Flask's default; never for bad input)
"""

from __future__ import annotations

import time
from typing import Protocol

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from webhook.config import MODES, Mode, Settings
from webhook.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from webhook.metrics import Metrics, Result
from webhook.review import MAX_BODY_BYTES, TOO_LARGE, Endpoint, RequestError, review

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class TLSState(Protocol):
    """What the app asks of the served certificate (webhook.tls.ReloadingContext)."""

    def ready(self) -> tuple[bool, str]: ...

    def seconds_until_expiry(self) -> float: ...


def _text(status: int, message: str) -> Response:
    # One line, whatever the message held: the API server logs this body verbatim.
    line = " ".join(message.split())
    return Response(line + "\n", status=status, content_type=TEXT)


def _read_body() -> bytes:
    """The request body, or its first MAX_BODY_BYTES + 1 bytes: review() refuses more with 413.

    A larger Content-Length is refused before reading anything. (Not Flask's MAX_CONTENT_LENGTH:
    it wraps the server's stream in a LimitedStream that reads it again in Python-level chunks,
    which measured as several percent of the webhook's throughput.)
    """
    length = request.content_length  # None for a chunked body
    if length is not None and length > MAX_BODY_BYTES:
        raise RequestError(413, TOO_LARGE)
    want = MAX_BODY_BYTES + 1 if length is None else length
    chunks: list[bytes] = []
    got = 0
    try:
        while got < want:  # a stream may return less than asked for before its end
            chunk = request.stream.read(want - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except (OSError, ValueError) as err:  # a bad chunk, a reset connection, a TLS error
        raise RequestError(400, f"request body could not be read: {err!s:.200}") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(
    settings: Settings, *, tls: TLSState | None = None, metrics: Metrics | None = None
) -> Flask:
    """The webhook app. `tls` is the served certificate (None when TLS ends elsewhere, as in
    tests); `metrics` defaults to a fresh set."""
    app = Flask("podlock")
    m = metrics or Metrics(tls.seconds_until_expiry if tls else None)
    modes: dict[str, Mode] = {name: name for name in MODES}

    def admit(endpoint: Endpoint, mode: Mode) -> Response:
        start = time.perf_counter()
        result: Result
        try:
            outcome = review(_read_body(), endpoint, mode, settings)
        except RequestError as err:
            m.observe(endpoint, mode, "", "error", (), time.perf_counter() - start)
            return _text(err.status, err.message)
        if not outcome.allowed:
            result = "denied"
        elif outcome.patched:
            result = "patched"
        else:
            result = "allowed"
        m.observe(
            endpoint, mode, outcome.operation, result, outcome.rules, time.perf_counter() - start
        )
        return Response(outcome.body, status=200, content_type=JSON)

    def route(endpoint: Endpoint, mode: str | None) -> Response:
        if mode is None:
            return admit(endpoint, settings.default_mode)
        known = modes.get(mode)
        if known is None:
            return _text(404, f"unknown mode {mode[:40]!r}: use one of {', '.join(MODES)}")
        return admit(endpoint, known)

    @app.post("/mutate", defaults={"mode": None})
    @app.post("/mutate/<mode>")
    def mutate(mode: str | None) -> Response:
        return route("mutate", mode)

    @app.post("/validate", defaults={"mode": None})
    @app.post("/validate/<mode>")
    def validate(mode: str | None) -> Response:
        return route("validate", mode)

    @app.get("/healthz")
    def healthz() -> Response:
        return _text(200, "ok")

    @app.get("/readyz")
    def readyz() -> Response:
        ok, reason = tls.ready() if tls else (True, "ok")
        return _text(200 if ok else 503, reason)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(m.render(), status=200, content_type=METRICS_CONTENT_TYPE)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        # Werkzeug's own answers (404, 405, 413 …) as one line instead of an HTML page.
        code = err.code or 500
        return _text(code, f"{code} {err.name}: {err.description or ''}")

    return app
