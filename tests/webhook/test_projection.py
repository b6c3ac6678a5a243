"""The projected parse (webhook/projection.py) gives every answer the full parse gives: over the
golden admission requests, every workload in the manifest corpus, and fuzzed bodies."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest
import yaml
from corpus import corpus_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from review_bodies import EXAMPLE, EXAMPLE_DOC, bodies, changed

from webhook import projection
from webhook.config import MODES, Mode, Settings, load_settings
from webhook.hardening import WRITABLE_PATHS_KEY
from webhook.podspecs import POD_SPEC_PATHS, WORKLOAD_KINDS
from webhook.policy import OPT_OUT_KEY, VOLUME_TYPES
from webhook.review import Endpoint, RequestError, review

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "admission"
ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)
POLICY = load_settings(None)


class _Unexpected:
    """A decoder for which every body has an unexpected shape: decode_review parses it whole."""

    def decode(self, raw: bytes) -> Any:
        raise msgspec.ValidationError("forced full parse")


@contextmanager
def full_parse() -> Iterator[None]:
    saved = projection._DECODER
    projection._DECODER = _Unexpected()  # type: ignore[assignment]
    try:
        yield
    finally:
        projection._DECODER = saved


def _answer(raw: bytes, endpoint: Endpoint, mode: Mode, policy: Settings) -> object:
    try:
        return review(raw, endpoint, mode, policy)
    except RequestError as err:
        return (err.status, err.message)


def assert_same_answer(
    raw: bytes, endpoint: Endpoint, mode: Mode, policy: Settings = POLICY
) -> None:
    projected = _answer(raw, endpoint, mode, policy)
    with full_parse():
        whole = _answer(raw, endpoint, mode, policy)
    assert projected == whole, (endpoint, mode, raw[:300])


def assert_same_answers(raw: bytes, policy: Settings = POLICY) -> None:
    for endpoint in ENDPOINTS:
        for mode in MODES:
            assert_same_answer(raw, endpoint, mode, policy)


def test_the_projection_leaves_out_what_is_never_judged() -> None:
    # Without this the tests below would pass with a schema that never matched anything.
    pod = projection.decode_review(EXAMPLE.read_bytes())["request"]["object"]
    container = pod["spec"]["containers"][0]
    assert set(container) == {"name", "image", "imagePullPolicy", "securityContext", "volumeMounts"}
    # Every field of this one is judged now (the strict profile reads capabilities too)...
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    # ... but of a volume only its name, its type and a hostPath's path.
    assert all(
        set(v) <= {"name", *projection._Volume.__annotations__} for v in pod["spec"]["volumes"]
    )
    assert all(v.get("configMap", {}) == {} for v in pod["spec"]["volumes"])
    assert pod["spec"]["securityContext"] == {
        "runAsUser": 101,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "fsGroup" not in pod["spec"]["securityContext"]
    assert "tolerations" not in pod["spec"]
    assert pod["metadata"]["annotations"] == {} and pod["metadata"]["labels"] == {}


def test_the_projection_keeps_every_annotation_and_label_podlock_reads() -> None:
    assert set(projection._PodlockKeys.__annotations__) == {OPT_OUT_KEY, WRITABLE_PATHS_KEY}


def test_the_projection_names_every_read_only_volume_type() -> None:
    # A read-only type the schema dropped would leave a volume with no type: judged writable.
    assert set(projection._Volume.__annotations__) == {"name", *VOLUME_TYPES}


OPT_OUT_POLICY = Settings(pod_opt_out_namespaces=frozenset({"shop"}))
METADATA = ("request", "object", "metadata")
SPEC = ("request", "object", "spec")
CONTAINER = (*SPEC, "containers", 1)
SECURITY = (*CONTAINER, "securityContext")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ((*METADATA, "annotations"), {WRITABLE_PATHS_KEY: "nginx=/var/lib/web; /scratch"}),
        ((*METADATA, "annotations"), {WRITABLE_PATHS_KEY: "/"}),
        ((*METADATA, "annotations"), {WRITABLE_PATHS_KEY: ["/data"]}),
        ((*METADATA, "annotations"), {OPT_OUT_KEY: "true", "other": "x"}),
        ((*METADATA, "annotations"), {OPT_OUT_KEY: True}),
        ((*METADATA, "annotations"), ["podlock.io/exempt"]),
        ((*METADATA, "annotations"), None),
        ((*METADATA, "labels"), {OPT_OUT_KEY: "true"}),
        ((*METADATA, "labels"), "podlock.io/exempt=true"),
        (SECURITY, None),
        (SECURITY, "privileged"),
        (SECURITY, {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}),
        (SECURITY, {"runAsUser": 0, "readOnlyRootFilesystem": "yes"}),
        (SECURITY, {"runAsUser": 0.0, "readOnlyRootFilesystem": False}),
        (("request", "object", "spec", "securityContext"), {"runAsUser": 0, "fsGroup": 0}),
        (("request", "object", "spec", "securityContext"), [0]),
        (("request", "object", "spec", "os"), {"name": "windows", "x": 1}),
        (("request", "object", "spec", "os"), "windows"),
        # The strict profile's fields.
        (SECURITY, {"allowPrivilegeEscalation": True, "runAsNonRoot": False}),
        (SECURITY, {"capabilities": {"add": ["cap_sys_admin", 7], "drop": "ALL"}}),
        (SECURITY, {"seccompProfile": {"type": "Unconfined"}, "procMount": "Unmasked"}),
        (SECURITY, {"appArmorProfile": {"type": "Unconfined"}, "seLinuxOptions": {"type": "x"}}),
        (SECURITY, {"windowsOptions": {"hostProcess": True}}),
        ((*CONTAINER, "terminationMessagePath"), "/usr/bin/ls"),
        ((*CONTAINER, "volumeDevices"), [{"name": "d", "devicePath": "/usr/lib/x"}]),
        ((*CONTAINER, "volumeMounts"), [{"name": "cfg", "mountPath": "/usr/bin"}]),
        ((*CONTAINER, "volumeMounts"), [{"name": "host", "mountPath": "/h", "readOnly": True}]),
        ((*CONTAINER, "imagePullPolicy"), "Always"),
        ((*SPEC, "volumes"), [{"name": "cfg", "configMap": {"name": "c", "items": []}}]),
        ((*SPEC, "volumes"), [{"name": "cfg", "emptyDir": {}}]),
        ((*SPEC, "volumes"), [{"name": "cfg", "futureType": {}, "configMap": {}}]),
        ((*SPEC, "volumes"), [{"name": "cfg", "futureType": {"path": "/"}}]),
        ((*SPEC, "volumes"), [{"name": "host", "hostPath": {"path": "/etc/localtime"}}]),
        ((*SPEC, "volumes"), [{"name": "host", "hostPath": "/"}]),
        ((*SPEC, "hostPID"), True),
        ((*SPEC, "shareProcessNamespace"), True),
        ((*SPEC, "securityContext"), {"seccompProfile": {"type": "Unconfined"}}),
    ],
)
def test_the_fields_podlock_reads_in_narrowed_objects(path: tuple[Any, ...], value: Any) -> None:
    raw = json.dumps(changed(EXAMPLE_DOC, path, value, False)).encode()
    for policy in (POLICY, OPT_OUT_POLICY):
        assert_same_answers(raw, policy)


def test_numbers_read_the_same_either_way() -> None:
    # orjson reads an integer beyond 64 bits as a float; both of podlock's parses keep it exact.
    path = ("request", "object", "spec", "containers", 1, "securityContext")
    doc = changed(EXAMPLE_DOC, (*path, "readOnlyRootFilesystem"), 2**70, False)
    raw = json.dumps(doc).encode()
    assert_same_answers(raw)
    assert (
        f"readOnlyRootFilesystem is {2**70}, not true"
        in review(raw, "validate", "enforce", POLICY).body.decode()
    )


def test_a_body_that_is_not_json_is_refused_with_its_position() -> None:
    with pytest.raises(RequestError, match=r"not JSON: .*line 1 column 13"):
        review(b'{"kind": 1, ]', "mutate", "enforce", POLICY)


@pytest.mark.parametrize(
    "raw",
    [b'"\xff"', json.dumps(EXAMPLE_DOC).encode().replace(b'"shop"', b'"sh\xffop"')],
    ids=["bare", "in-a-field-podlock-reads"],
)
def test_bad_utf8_is_refused_not_crashed_on(raw: bytes) -> None:
    assert b"\xff" in raw
    for endpoint in ENDPOINTS:
        with pytest.raises(RequestError, match="not JSON"):
            review(raw, endpoint, "enforce", POLICY)


def test_the_golden_requests() -> None:
    requests = sorted(GOLDEN.glob("*.request.json"))
    assert len(requests) > 10
    for path in requests:
        assert_same_answers(path.read_bytes())


def _workloads() -> Iterator[dict[str, Any]]:
    for path in sorted(corpus_dir().rglob("*.y*ml")):
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # the corpus keeps a few broken files for the linter's error paths
        for doc in documents:
            items = doc.get("items") if isinstance(doc, dict) else None
            for obj in items if isinstance(items, list) else [doc]:
                if isinstance(obj, dict) and obj.get("kind") in WORKLOAD_KINDS:
                    yield obj


def _without_containers(obj: dict[str, Any]) -> dict[str, Any]:
    """The object before an UPDATE that added all its containers: /validate judges every one."""
    old = copy.deepcopy(obj)
    spec: Any = old
    for step in POD_SPEC_PATHS[obj["kind"]]:
        spec = spec.get(step) if isinstance(spec, dict) else None
    if isinstance(spec, dict):
        spec["containers"] = []
    return old


def _review_of(obj: dict[str, Any], operation: str) -> bytes:
    kind = obj["kind"]
    request = {
        "uid": "corpus",
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"resource": "pods" if kind == "Pod" else kind.lower() + "s"},
        "namespace": "shop",
        "operation": operation,
        "object": obj,
        "oldObject": _without_containers(obj) if operation == "UPDATE" else None,
    }
    review_doc = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    }
    return json.dumps(review_doc, default=str).encode()  # YAML dates become strings, as in JSON


def test_every_workload_in_the_corpus() -> None:
    workloads = list(_workloads())
    assert len(workloads) > 200
    for obj in workloads:
        for operation in ("CREATE", "UPDATE"):
            assert_same_answers(_review_of(obj, operation))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, endpoint=st.sampled_from(ENDPOINTS), mode=st.sampled_from(MODES))
def test_fuzzed_bodies(body: bytes, endpoint: Endpoint, mode: Mode) -> None:
    assert_same_answer(body, endpoint, mode)
