"""AdmissionReview handling: golden request/response pairs plus the decisions spelled out.

Regenerate the golden responses after an intended change with PODLOCK_UPDATE_GOLDEN=1, then
read the diff before committing it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from webhook.config import Settings
from webhook.review import RequestError, review

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "admission"
CASES = sorted(p.name.removesuffix(".request.json") for p in GOLDEN.glob("*.request.json"))
ENDPOINTS = [(e, m) for e in ("mutate", "validate") for m in ("enforce", "warn", "audit")]


def request_bytes(case: str) -> bytes:
    return (GOLDEN / f"{case}.request.json").read_bytes()


def answer(case: str, endpoint: Any, mode: Any, settings: Settings) -> dict[str, Any]:
    body = review(request_bytes(case), endpoint, mode, settings).body
    response: dict[str, Any] = json.loads(body)["response"]
    return response


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("endpoint", "mode"), ENDPOINTS)
def test_golden(settings: Settings, case: str, endpoint: Any, mode: Any) -> None:
    body = review(request_bytes(case), endpoint, mode, settings).body
    golden = GOLDEN / f"{case}.{endpoint}-{mode}.response.json"
    if os.environ.get("PODLOCK_UPDATE_GOLDEN"):
        golden.write_bytes(body)
    assert body == golden.read_bytes()


ROOT_PRIVILEGED = {
    "privileged-container",
    "root-user",
    "writable-root-filesystem",
    "run-as-non-root",
    "privilege-escalation",
    "mutable-image-reference",
}
# What each request must get under the default policy (profile: strict), spelled out:
# (case, endpoint, mode) -> (allowed, patched, rules)
DECISIONS = [
    ("pod-create-nginx", "mutate", "enforce", True, True, {"writable-root-filesystem"}),
    ("pod-create-nginx", "mutate", "warn", True, False, {"writable-root-filesystem"}),
    (
        "pod-create-nginx",
        "validate",
        "enforce",
        False,
        False,
        {"writable-root-filesystem", "mutable-image-reference"},
    ),
    (
        "pod-create-root-privileged",
        "validate",
        "enforce",
        False,
        False,
        ROOT_PRIVILEGED,
    ),
    (
        "pod-create-root-privileged",
        "validate",
        "warn",
        True,
        False,
        ROOT_PRIVILEGED,
    ),
    (
        "pod-create-root-privileged",
        "validate",
        "audit",
        True,
        False,
        ROOT_PRIVILEGED,
    ),
    ("pod-create-exempt-namespace", "mutate", "enforce", True, False, set()),
    ("pod-create-exempt-namespace", "validate", "enforce", True, False, set()),
    ("pod-create-windows", "mutate", "enforce", True, False, set()),
    # Windows pods: no Linux securityContext rules, but the image is still a tag (a warning).
    ("pod-create-windows", "validate", "enforce", True, False, {"mutable-image-reference"}),
    ("pod-update-labels", "validate", "enforce", True, False, set()),
    ("pod-update-labels", "mutate", "enforce", True, False, set()),
    (
        "pod-ephemeral-debug",
        "mutate",
        "enforce",
        True,
        True,
        {"writable-root-filesystem", "run-as-non-root", "privilege-escalation"},
    ),
    (
        "pod-ephemeral-debug",
        "validate",
        "enforce",
        False,
        False,
        {
            "writable-root-filesystem",
            "run-as-non-root",
            "privilege-escalation",
            "mutable-image-reference",
        },
    ),
    ("deployment-create-writable", "mutate", "enforce", True, False, set()),
    (
        "deployment-create-writable",
        "validate",
        "enforce",
        False,
        False,
        {"writable-root-filesystem", "mutable-image-reference"},
    ),
    ("deployment-scale-legacy", "validate", "enforce", True, False, set()),
    (
        "deployment-update-adds-privileged",
        "validate",
        "enforce",
        False,
        False,
        {"privileged-container"},
    ),
    (
        "cronjob-create-root",
        "validate",
        "enforce",
        False,
        False,
        {"root-user", "mutable-image-reference"},
    ),
    ("exec-connect", "validate", "enforce", True, False, {"exec-into-hardened-pod"}),
]


@pytest.mark.parametrize(("case", "endpoint", "mode", "allowed", "patched", "rules"), DECISIONS)
def test_decisions(
    settings: Settings,
    case: str,
    endpoint: Any,
    mode: Any,
    allowed: bool,
    patched: bool,
    rules: set[str],
) -> None:
    outcome = review(request_bytes(case), endpoint, mode, settings)
    response = json.loads(outcome.body)["response"]
    assert response["uid"] == json.loads(request_bytes(case))["request"]["uid"]
    assert (outcome.allowed, outcome.patched, set(outcome.rules)) == (allowed, patched, rules)
    assert response["allowed"] is allowed
    assert ("patch" in response) is patched
    if not allowed:
        assert response["status"]["code"] == 403
    for warning in response.get("warnings", []):
        assert len(warning) < 120


def test_denial_names_every_container_rule_and_field(settings: Settings) -> None:
    message = answer("pod-create-root-privileged", "validate", "enforce", settings)["status"][
        "message"
    ]
    assert 'container "api": privileged-container: privileged is true' in message
    assert 'container "api": root-user: runAsUser is 0 (inherited' in message
    assert 'container "api": writable-root-filesystem: readOnlyRootFilesystem is false' in message
    # The sidecar sets its own non-root user and a read-only root: only the strict profile's
    # allowPrivilegeEscalation (unset: mutation would have set it) names it.
    assert 'container "sidecar": privilege-escalation: allowPrivilegeEscalation is not set' in (
        message
    )
    assert 'container "sidecar": root-user' not in message
    assert "mutable-image-reference" not in message  # a warning, not a reason to refuse


def test_mutation_patch_applies_and_then_passes_validation(settings: Settings) -> None:
    request = json.loads(request_bytes("pod-create-nginx"))
    response = answer("pod-create-nginx", "mutate", "enforce", settings)
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    pod = jsonpatch.apply_patch(request["request"]["object"], patch)
    web = pod["spec"]["containers"][0]
    assert web["securityContext"]["readOnlyRootFilesystem"] is True
    assert sorted(m["mountPath"] for m in web["volumeMounts"]) == [
        "/tmp",
        "/var/cache/nginx",
        "/var/run",
    ]
    assert {v["name"] for v in pod["spec"]["volumes"]} >= {m["name"] for m in web["volumeMounts"]}
    assert response["warnings"]
    # The hardened pod is what the validating webhook then sees: it must pass.
    request["request"]["object"] = pod
    validated = review(json.dumps(request).encode(), "validate", "enforce", settings)
    # Only the tag-only image is left, as a warning.
    assert validated.allowed and validated.rules == ("mutable-image-reference",)


def test_ephemeral_patch_touches_only_the_new_container(settings: Settings) -> None:
    response = answer("pod-ephemeral-debug", "mutate", "enforce", settings)
    patch = json.loads(base64.b64decode(response["patch"]))
    assert patch == [
        {
            "op": "add",
            "path": "/spec/ephemeralContainers/0/securityContext",
            "value": {
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
            },
        }
    ]


def test_warn_mode_changes_nothing_and_says_what_it_would_do(settings: Settings) -> None:
    response = answer("pod-create-nginx", "mutate", "warn", settings)
    assert "patch" not in response
    assert any(
        w.startswith("podlock would set readOnlyRootFilesystem") for w in response["warnings"]
    )


def test_audit_mode_only_annotates(settings: Settings) -> None:
    response = answer("pod-create-root-privileged", "validate", "audit", settings)
    assert response["allowed"] is True
    assert "warnings" not in response
    assert "privileged-container" in response["auditAnnotations"]["violations"]


def test_long_changes_are_cut_in_warnings_but_whole_in_the_audit(settings: Settings) -> None:
    doc = json.loads(request_bytes("pod-create-nginx"))
    paths = [f"/var/lib/application-data-{i}" for i in range(6)]
    doc["request"]["object"]["metadata"]["annotations"] = {
        "podlock.io/writable-paths": ",".join(paths)
    }
    raw = json.dumps(doc).encode()
    warned = json.loads(review(raw, "mutate", "warn", settings).body)["response"]["warnings"]
    assert all(len(w) < 120 for w in warned) and any(w.endswith("…") for w in warned)
    audit = json.loads(review(raw, "mutate", "audit", settings).body)["response"]
    assert all(path in audit["auditAnnotations"]["mutations"] for path in paths)


@pytest.mark.parametrize(
    ("action", "mode", "allowed", "has"),
    [
        ("deny", "enforce", False, "status"),
        ("deny", "warn", True, "warnings"),
        ("deny", "audit", True, "auditAnnotations"),
        ("warn", "enforce", True, "warnings"),
        ("audit", "enforce", True, "auditAnnotations"),
        ("off", "enforce", True, None),
    ],
)
def test_exec_guard(
    settings: Settings, action: Any, mode: Any, allowed: bool, has: str | None
) -> None:
    from dataclasses import replace

    outcome = review(
        request_bytes("exec-connect"), "validate", mode, replace(settings, exec_action=action)
    )
    response = json.loads(outcome.body)["response"]
    assert response["allowed"] is allowed
    extras = {"status", "warnings", "auditAnnotations"} & response.keys()
    assert extras == ({has} if has else set())


V1 = b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}'


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"not json", 400, "not JSON"),
        (b"[]", 400, "not a JSON object"),
        (
            V1[:-1].replace(b"/v1", b"/v1beta1") + b', "request": {"uid": "x"}}',
            400,
            "not an AdmissionReview admission.k8s.io/v1",
        ),
        (V1, 400, "no request"),
        (
            V1[:-1] + b', "request": {"uid": ""}}',
            400,
            "no uid",
        ),
        (
            V1[:-1] + b', "request": {"uid": 7}}',
            400,
            "no uid",
        ),
        (b"\xff\xfe", 400, "not JSON"),
        (b" " * (6 * 1024 * 1024 + 1), 413, "larger than"),
    ],
)
def test_unusable_requests(settings: Settings, body: bytes, status: int, reason: str) -> None:
    with pytest.raises(RequestError) as caught:
        review(body, "validate", "enforce", settings)
    assert caught.value.status == status
    assert reason in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    "obj",
    [
        None,
        "a string",
        {"spec": None},
        {"spec": {"containers": "nope"}},
        {
            "spec": {
                "containers": [None, 1, {"securityContext": []}, {"name": 5, "volumeMounts": {}}]
            }
        },
        {
            "metadata": {"annotations": {"podlock.io/writable-paths": 7}},
            "spec": {"containers": [{}]},
            "kind": 9,
        },
    ],
)
@pytest.mark.parametrize(("endpoint", "mode"), ENDPOINTS)
def test_odd_objects_are_judged_not_crashed_on(
    settings: Settings, obj: Any, endpoint: Any, mode: Any
) -> None:
    request = json.loads(request_bytes("pod-create-nginx"))
    request["request"]["object"] = obj
    outcome = review(json.dumps(request).encode(), endpoint, mode, settings)
    assert json.loads(outcome.body)["response"]["uid"] == request["request"]["uid"]


def run_review(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "webhook.cli", "review", *args]
    return subprocess.run(command, input=stdin, capture_output=True, check=False)


@pytest.mark.parametrize("case", ["pod-create-nginx", "deployment-create-writable", "exec-connect"])
def test_cli_prints_the_webhook_bytes(settings: Settings, case: str) -> None:
    path = str(GOLDEN / f"{case}.request.json")
    for endpoint, mode in (("mutate", "enforce"), ("validate", "warn")):
        result = run_review(f"--{endpoint}", "--mode", mode, path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == review(request_bytes(case), endpoint, mode, settings).body  # type: ignore[arg-type]
    from_stdin = run_review("--mutate", "-", stdin=request_bytes(case))
    assert from_stdin.stdout == review(request_bytes(case), "mutate", "enforce", settings).body


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-"], b"{", "<stdin>: request body is not JSON"),
        (["/nonexistent/review.json"], None, "/nonexistent/review.json: cannot read"),
        (
            ["--config", "/nonexistent/policy.yaml", "-"],
            b"{}",
            "/nonexistent/policy.yaml: cannot read",
        ),
    ],
)
def test_cli_malformed_input(args: list[str], stdin: bytes | None, message: str) -> None:
    result = run_review(*args, stdin=stdin)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_with_the_writable_root_rule_off_nothing_is_hardened(settings: Settings) -> None:
    from dataclasses import replace

    from webhook.policy import WRITABLE_ROOT

    off = replace(settings, enabled_rules=settings.enabled_rules - {WRITABLE_ROOT})
    raw = (
        Path(__file__).resolve().parents[2] / "examples" / "admission-review-pod.json"
    ).read_bytes()
    assert review(raw, "mutate", "enforce", settings).patched  # on: hardened
    outcome = review(raw, "mutate", "enforce", off)
    assert not outcome.patched and outcome.rules == ()
    assert "patch" not in json.loads(outcome.body)["response"]
