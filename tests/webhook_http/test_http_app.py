"""Every endpoint through Flask's test client: the HTTP layer returns review()'s bytes unchanged,
turns request errors into one-line 4xx answers, and counts what it answered."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_samples import samples as parse_samples

from certs.cli import write_bundle
from certs.pki import generate_bundle
from webhook.app import create_app
from webhook.config import Settings
from webhook.review import MAX_BODY_BYTES, review
from webhook.tls import ReloadingContext


@pytest.fixture
def app(settings: Settings) -> Flask:
    app = create_app(settings)
    app.testing = True  # our exceptions reach the test instead of becoming a 500
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _pod_review(uid: str = "u-1", **pod_spec: object) -> bytes:
    container = {"name": "app", "image": "busybox", **pod_spec}
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "apps",
                "operation": "CREATE",
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "p", "namespace": "apps"},
                    "spec": {"containers": [container]},
                },
            },
        }
    ).encode()


PRIVILEGED = _pod_review(securityContext={"privileged": True, "runAsUser": 0})
# Clean under the strict default: a digest, and every field the mutating webhook would set.
CLEAN = _pod_review(
    image="busybox@sha256:" + "0" * 64,
    securityContext={
        "readOnlyRootFilesystem": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
    },
)


@pytest.mark.parametrize(
    ("path", "endpoint", "mode"),
    [
        ("/mutate", "mutate", "enforce"),
        ("/validate", "validate", "enforce"),
        ("/mutate/enforce", "mutate", "enforce"),
        ("/mutate/warn", "mutate", "warn"),
        ("/mutate/audit", "mutate", "audit"),
        ("/validate/enforce", "validate", "enforce"),
        ("/validate/warn", "validate", "warn"),
        ("/validate/audit", "validate", "audit"),
        ("/mutate/warn?timeout=5s", "mutate", "warn"),  # the API server adds ?timeout=
    ],
)
@pytest.mark.parametrize("body_name", ["example", "privileged", "clean"])
def test_answer_is_reviews_bytes(
    client: FlaskClient,
    settings: Settings,
    example_raw: bytes,
    path: str,
    endpoint: str,
    mode: str,
    body_name: str,
) -> None:
    body = {"example": example_raw, "privileged": PRIVILEGED, "clean": CLEAN}[body_name]
    resp = client.post(path, data=body, content_type="application/json")
    assert resp.status_code == 200
    assert resp.content_type == "application/json"
    assert resp.data == review(body, endpoint, mode, settings).body  # type: ignore[arg-type]


def test_plain_paths_use_the_policy_default_mode(settings: Settings) -> None:
    audit = replace(settings, default_mode="audit")
    client = create_app(audit).test_client()
    for endpoint in ("mutate", "validate"):
        resp = client.post(f"/{endpoint}", data=PRIVILEGED)
        assert resp.data == review(PRIVILEGED, endpoint, "audit", audit).body  # type: ignore[arg-type]
        assert resp.data != review(PRIVILEGED, endpoint, "enforce", audit).body  # type: ignore[arg-type]


def test_content_type_header_is_not_required(client: FlaskClient, settings: Settings) -> None:
    # curl --data sends application/x-www-form-urlencoded: the body must not be parsed as a form.
    resp = client.post("/validate", data=CLEAN, content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 200
    assert resp.data == review(CLEAN, "validate", "enforce", settings).body


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("POST", "/mutate", b"", 400, "not JSON"),
        ("POST", "/validate", b"{", 400, "not JSON"),
        ("POST", "/validate", b"\xff\xfe", 400, "not JSON"),
        ("POST", "/validate", b"[]", 400, "not a JSON object"),
        ("POST", "/mutate", b'{"kind": "AdmissionReview"}', 400, "not an AdmissionReview"),
        (
            "POST",
            "/mutate",
            b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}',
            400,
            "not an AdmissionReview",
        ),
        (
            "POST",
            "/validate/warn",
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}',
            400,
            "no uid",
        ),
        ("POST", "/mutate/strict", CLEAN, 404, "unknown mode 'strict'"),
        ("POST", "/validate/Enforce", CLEAN, 404, "unknown mode 'Enforce'"),
        ("POST", "/mutate/enforce/extra", CLEAN, 404, "404 Not Found"),
        ("POST", "/", CLEAN, 404, "404 Not Found"),
        ("GET", "/mutate", None, 405, "405 Method Not Allowed"),
        ("PUT", "/validate/audit", CLEAN, 405, "405 Method Not Allowed"),
        ("POST", "/healthz", b"", 405, "405 Method Not Allowed"),
    ],
)
def test_bad_requests_get_one_line(
    client: FlaskClient,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    reason: str,
) -> None:
    resp = client.open(path, method=method, data=body)
    assert resp.status_code == status
    assert resp.content_type == "text/plain; charset=utf-8"
    text = resp.get_data(as_text=True)
    assert reason in text
    assert text.endswith("\n") and text.count("\n") == 1


@pytest.mark.parametrize(
    ("size", "chunked", "status"),
    [
        (MAX_BODY_BYTES + 1, False, 413),
        (MAX_BODY_BYTES + 1, True, 413),
        (MAX_BODY_BYTES, False, 400),  # at the limit: read, then refused as not JSON
    ],
)
def test_body_limit(client: FlaskClient, size: int, chunked: bool, status: int) -> None:
    body = b" " * size
    if chunked:
        # No Content-Length: the limit must hold while reading the stream (gunicorn marks
        # a chunked body as terminated input, so Werkzeug reads it).
        resp = client.post(
            "/validate",
            input_stream=io.BytesIO(body),
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    else:
        resp = client.post("/validate", data=body)
    assert resp.status_code == status
    assert resp.get_data(as_text=True).count("\n") == 1
    if status == 413:
        assert f"larger than {MAX_BODY_BYTES} bytes" in resp.get_data(as_text=True)


class _BrokenStream(io.BytesIO):
    """A body the server cannot finish reading (a bad chunk, a reset connection)."""

    def read(self, size: int | None = -1, /) -> bytes:
        raise ConnectionResetError("connection reset by peer")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_that_cannot_be_read_is_400(client: FlaskClient, chunked: bool) -> None:
    headers = {"Transfer-Encoding": "chunked"} if chunked else {}
    resp = client.post(
        "/mutate",
        input_stream=_BrokenStream(b"{" * 100),
        headers=headers,
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert resp.status_code == 400
    assert resp.get_data(as_text=True) == (
        "request body could not be read: connection reset by peer\n"
    )


def test_health_and_readiness_without_tls(client: FlaskClient) -> None:
    assert client.get("/healthz").data == b"ok\n"
    assert client.get("/readyz").data == b"ok\n"


@pytest.mark.parametrize(
    ("issued_days_ago", "days", "ready"),
    [(0, 30, True), (40, 30, False)],
)
def test_readiness_follows_the_served_certificate(
    tmp_path: Path, settings: Settings, issued_days_ago: int, days: int, ready: bool
) -> None:
    issued = datetime.now(UTC) - timedelta(days=issued_days_ago)
    write_bundle(str(tmp_path), generate_bundle("p", "ns", now=issued, days=days))
    tls = ReloadingContext(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    client = create_app(settings, tls=tls).test_client()
    resp = client.get("/readyz")
    assert resp.status_code == (200 if ready else 503)
    if not ready:
        assert "expired" in resp.get_data(as_text=True)
    expiry = parse_samples(client.get("/metrics").get_data(as_text=True))
    value = expiry[("podlock_tls_certificate_expiry_seconds", ())]
    assert (value > 0) is ready
    assert abs(value - (days - issued_days_ago) * 86400) < 3600


def test_metrics_count_every_answer(client: FlaskClient, settings: Settings) -> None:
    calls = [
        ("/mutate", PRIVILEGED),
        ("/validate", PRIVILEGED),
        ("/validate", PRIVILEGED),
        ("/validate/audit", CLEAN),
        ("/mutate/warn", b"nope"),
        ("/mutate/bogus", CLEAN),  # 404: not an admission answer, not counted
    ]
    for path, body in calls:
        client.post(path, data=body)
    samples = parse_samples(client.get("/metrics").get_data(as_text=True))

    def requests(endpoint: str, mode: str, op: str, result: str, rule: str) -> float:
        labels = {"endpoint": endpoint, "mode": mode, "operation": op}
        labels |= {"result": result, "rule": rule}
        key = ("podlock_admission_requests_total", tuple(sorted(labels.items())))
        return samples.get(key, 0.0)

    fired = review(PRIVILEGED, "validate", "enforce", settings).rules
    assert {"privileged-container", "root-user"} <= set(fired)
    for rule in fired:  # one series per rule that fired
        assert requests("validate", "enforce", "CREATE", "denied", rule) == 2
    assert requests("validate", "audit", "CREATE", "allowed", "none") == 1
    assert requests("mutate", "warn", "unknown", "error", "none") == 1

    def count(endpoint: str, mode: str) -> float:
        key = tuple(sorted({"endpoint": endpoint, "mode": mode}.items()))
        return samples.get(("podlock_admission_duration_seconds_count", key), 0.0)

    assert count("validate", "enforce") == 2
    assert count("mutate", "enforce") == 1
    assert count("mutate", "warn") == 1
    assert count("validate", "audit") == 1
    total = sum(v for (name, _), v in samples.items() if name.endswith("duration_seconds_count"))
    assert total == 5


@pytest.mark.parametrize(
    ("operation", "label"),
    [("CREATE", "CREATE"), ("CONNECT", "CONNECT"), ("x" * 500, "other"), ("", "other")],
)
def test_operation_label_is_bounded(settings: Settings, operation: str, label: str) -> None:
    client = create_app(settings).test_client()
    doc = json.loads(CLEAN)
    doc["request"]["operation"] = operation
    assert client.post("/validate", data=json.dumps(doc)).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert f'operation="{label}"' in text
    assert "x" * 50 not in text
