"""Property: whatever arrives at /mutate or /validate, the answer is well formed — a 200 with an
AdmissionReview response that echoes the uid, or a 4xx with one line of text. Never a 500.

Inputs: arbitrary JSON, arbitrary bytes, and the example Pod review mutated at random paths
(values replaced by other JSON of any type, keys deleted, huge and odd values)."""

from __future__ import annotations

import base64
import json

import pytest
from flask.testing import FlaskClient
from http_support import Server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from review_bodies import EXAMPLE_DOC, bodies, changed

from webhook.app import create_app
from webhook.config import load_settings

PATHS = ("/mutate", "/validate", "/mutate/warn", "/validate/audit", "/validate/warn")


def _uid(body: bytes) -> object:
    try:
        return json.loads(body)["request"]["uid"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def check_answer(body: bytes, status: int, ctype: str, data: bytes) -> None:
    if status == 200:
        assert ctype == "application/json"
        answer = json.loads(data)
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        response = answer["response"]
        assert response["uid"] == _uid(body)
        assert isinstance(response["allowed"], bool)
        if not response["allowed"]:
            assert response["status"]["code"] == 403
            assert isinstance(response["status"]["message"], str)
        if "patch" in response:
            assert response["patchType"] == "JSONPatch"
            assert isinstance(json.loads(base64.b64decode(response["patch"])), list)
        for warning in response.get("warnings", []):
            assert len(warning) < 120
    else:
        assert status in (400, 413), (status, data[:200])
        assert ctype.startswith("text/plain")
        text = data.decode()
        assert text.endswith("\n") and text.count("\n") == 1 and len(text) > 1


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    app = create_app(load_settings(None))
    app.testing = True  # an exception in our code fails the test instead of becoming a 500
    return app.test_client()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, path=st.sampled_from(PATHS))
def test_every_answer_is_well_formed(client: FlaskClient, body: bytes, path: str) -> None:
    resp = client.post(path, data=body)
    check_answer(body, resp.status_code, resp.content_type or "", resp.data)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than Python's recursion limit
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        json.dumps(
            changed(EXAMPLE_DOC, ("request", "object", "spec", "containers"), [[[[]]]] * 50, False)
        ).encode(),
        json.dumps(changed(EXAMPLE_DOC, ("request", "uid"), {"nested": "uid"}, False)).encode(),
        json.dumps(changed(EXAMPLE_DOC, ("request", "uid"), "u" * 100_000, False)).encode(),
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "1",'
        b' "object": {"spec": {"containers": [{"securityContext": {"privileged": "yes"}}]}}}}',
    ],
    ids=["deep-array", "deep-object", "nested-lists", "uid-object", "uid-huge", "str-bool"],
)
def test_odd_inputs(client: FlaskClient, body: bytes) -> None:
    for path in PATHS:
        resp = client.post(path, data=body)
        check_answer(body, resp.status_code, resp.content_type or "", resp.data)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=bodies, path=st.sampled_from(PATHS))
def test_real_server_answers_are_well_formed(server: Server, body: bytes, path: str) -> None:
    status, data, ctype = server.request("POST", path, body)
    check_answer(body, status, ctype, data)
