"""Property: whatever arrives at /mutate or /validate, the answer is well formed — a 200 with an
AdmissionReview response that echoes the uid, or a 4xx with one line of text. Never a 500.

Inputs: arbitrary JSON, arbitrary bytes, and the example Pod review mutated at random paths
(values replaced by other JSON of any type, keys deleted, huge and odd values)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from http_support import EXAMPLE, Server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.app import create_app
from webhook.config import load_settings

EXAMPLE_DOC: dict[str, Any] = json.loads(EXAMPLE.read_bytes())
PATHS = ("/mutate", "/validate", "/mutate/warn", "/validate/audit", "/validate/warn")

odd_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "/", "..", "0", "\x00", "é" * 3, "true", "null", "CREATE", "Pod"]),
    st.builds(lambda n: "x" * n, st.integers(1000, 100_000)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=12), inner, max_size=5),
    ),
    max_leaves=20,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = [p for p in _paths(EXAMPLE_DOC) if p]


def _mutate(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def mutated_reviews(draw: st.DrawFn) -> bytes:
    doc: Any = EXAMPLE_DOC
    for _ in range(draw(st.integers(1, 5))):
        live = [p for p in _paths(doc) if p]
        if not live:
            break
        path = draw(st.sampled_from(live))
        doc = _mutate(doc, path, draw(json_values), draw(st.booleans()))
    return json.dumps(doc).encode()


@st.composite
def wrapped_values(draw: st.DrawFn) -> bytes:
    """A valid envelope around any request object, so the core gets past the uid check."""
    request = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
    request["uid"] = draw(st.text(min_size=1, max_size=40))
    for key in ("object", "oldObject", "kind", "operation", "namespace", "subResource"):
        if draw(st.booleans()):
            request[key] = draw(json_values)
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    return json.dumps(review).encode()


bodies = st.one_of(
    mutated_reviews(),
    wrapped_values(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


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
            _mutate(EXAMPLE_DOC, ("request", "object", "spec", "containers"), [[[[]]]] * 50, False)
        ).encode(),
        json.dumps(_mutate(EXAMPLE_DOC, ("request", "uid"), {"nested": "uid"}, False)).encode(),
        json.dumps(_mutate(EXAMPLE_DOC, ("request", "uid"), "u" * 100_000, False)).encode(),
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
