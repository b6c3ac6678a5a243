"""Hypothesis strategies for AdmissionReview bodies: arbitrary JSON, arbitrary bytes, and the
example Pod review changed at random paths (values replaced by other JSON of any type, keys
deleted, huge and odd values). Shared by the HTTP fuzz tests and the projection tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "admission-review-pod.json"
EXAMPLE_DOC: dict[str, Any] = json.loads(EXAMPLE.read_bytes())

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


def paths_in(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_in(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths_in(v, (*prefix, i))
    return out


def changed(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
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
        live = [p for p in paths_in(doc) if p]
        if not live:
            break
        path = draw(st.sampled_from(live))
        doc = changed(doc, path, draw(json_values), draw(st.booleans()))
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
