"""`podlock lint` under the strict default: the new rules in text, JSON and SARIF, on every
workload kind, and `--fix` for what has a fix (runAsNonRoot, allowPrivilegeEscalation: false,
and with the policy's optional hardening capabilities.drop [ALL] and RuntimeDefault)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from lint_support import check_fix_invariants, run
from strict_reviews import KINDS, in_kind

from webhook.config import Settings, load_settings
from webhook.policy import RULES, evaluate

SCHEMA = json.loads((Path(__file__).parent / "sarif-schema-2.1.0.json").read_text())
DIGEST = "example/app@sha256:" + "0" * 64

HOSTILE = """\
apiVersion: v1
kind: Pod
metadata:
  name: escape
  namespace: shop
spec:
  hostPID: true
  containers:
  - name: app
    image: example/app:1
    terminationMessagePath: /usr/bin/env
    securityContext:
      readOnlyRootFilesystem: true
      runAsNonRoot: false
      allowPrivilegeEscalation: true
      capabilities:
        add: [SYS_ADMIN]
      seccompProfile:
        type: Unconfined
    volumeMounts:
    - name: scratch
      mountPath: /usr/bin
  volumes:
  - name: scratch
    emptyDir: {}
"""
EXPECTED_TEXT = [
    "escape.yaml:7: Pod/shop/escape (pod) host-access: hostPID is true",
    "escape.yaml:10: Pod/shop/escape app mutable-image-reference: image example/app:1 is not "
    "pinned by a digest",
    "escape.yaml:11: Pod/shop/escape app writable-mount: terminationMessagePath "
    "'/usr/bin/env' (a writable file the kubelet mounts) is outside the writable roots",
    "escape.yaml:14: Pod/shop/escape app run-as-non-root: runAsNonRoot is false and no "
    "non-zero runAsUser applies",
    "escape.yaml:15: Pod/shop/escape app privilege-escalation: allowPrivilegeEscalation is true",
    "escape.yaml:17: Pod/shop/escape app capabilities: capabilities.add has SYS_ADMIN, outside "
    "the allowed set",
    "escape.yaml:18: Pod/shop/escape app security-profile: seccompProfile is Unconfined",
    "escape.yaml:21: Pod/shop/escape app writable-mount: writable volume scratch (emptyDir) at "
    "/usr/bin is outside the writable roots",
    "8 findings (capabilities: 1, host-access: 1, mutable-image-reference: 1, "
    "privilege-escalation: 1, run-as-non-root: 1, security-profile: 1, writable-mount: 2) in "
    "1 file, 1 pod spec",
]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "escape.yaml").write_text(HOSTILE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_text(here: Path) -> None:
    result = run("escape.yaml")
    assert result.code == 1
    assert result.stdout.splitlines() == EXPECTED_TEXT


def test_json(here: Path) -> None:
    findings = json.loads(run("escape.yaml", fmt="json").stdout)["findings"]
    assert [(f["line"], f["container"], f["rule"]) for f in findings] == [
        (7, "", "host-access"),
        (10, "app", "mutable-image-reference"),
        (11, "app", "writable-mount"),
        (14, "app", "run-as-non-root"),
        (15, "app", "privilege-escalation"),
        (17, "app", "capabilities"),
        (18, "app", "security-profile"),
        (21, "app", "writable-mount"),
    ]


def test_sarif(here: Path) -> None:
    log = json.loads(run("escape.yaml", fmt="sarif").stdout)
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    results = log["runs"][0]["results"]
    assert {r["ruleId"] for r in results} == set(RULES) - {
        "privileged-container",
        "root-user",
        "writable-root-filesystem",
    }
    levels = {r["ruleId"]: r["level"] for r in results}
    assert levels["mutable-image-reference"] == "warning" and levels["host-access"] == "error"
    (pod_level,) = [r for r in results if r["ruleId"] == "host-access"]
    assert pod_level["message"]["text"] == "Pod/shop/escape pod: hostPID is true"


def test_a_tag_alone_reports_without_failing(here: Path) -> None:
    clean = HOSTILE.split("  hostPID")[0] + (
        "  containers:\n  - name: app\n    image: example/app:1\n    securityContext:\n"
        "      readOnlyRootFilesystem: true\n      runAsNonRoot: true\n"
        "      allowPrivilegeEscalation: false\n"
    )
    Path("tag.yaml").write_text(clean)
    result = run("tag.yaml")
    assert (result.code, result.stdout.count("mutable-image-reference:")) == (0, 2)
    Path("policy.yaml").write_text("rules:\n  mutable-image-reference: deny\n")
    assert run("tag.yaml", config="policy.yaml").code == 1


def test_core_reports_none_of_it(here: Path) -> None:
    Path("policy.yaml").write_text("profile: core\n")
    result = run("escape.yaml", config="policy.yaml")
    assert (result.code, result.stdout) == (0, "0 findings in 1 file, 1 pod spec\n")


BARE_SPEC = {
    "containers": [
        {"name": "app", "image": DIGEST},
        {"name": "user", "image": DIGEST, "securityContext": {"runAsUser": 1000}},
    ]
}


@pytest.mark.parametrize("kind", KINDS)
def test_fix_on_every_kind(here: Path, kind: str, settings: Settings) -> None:
    before = yaml.safe_dump(in_kind(kind, json.loads(json.dumps(BARE_SPEC))), sort_keys=False)
    Path("w.yaml").write_text(before)
    assert run("w.yaml").code == 1
    assert run("w.yaml", fix=True).code == 0  # nothing left after the fix
    after = Path("w.yaml").read_text()
    check_fix_invariants(before, after, settings)
    document = yaml.safe_load(after)
    spec = _template_spec(document, kind)
    contexts = {c["name"]: c["securityContext"] for c in spec["containers"]}
    assert contexts == {
        "app": {
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
        },
        "user": {
            "runAsUser": 1000,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
        },
    }
    assert evaluate(spec, settings, "lint") == []


def test_fix_with_the_optional_hardening(here: Path) -> None:
    Path("policy.yaml").write_text(
        "hardening:\n  dropAllCapabilities: on\n  seccompRuntimeDefault: on\n"
    )
    settings = load_settings("policy.yaml")
    before = yaml.safe_dump(in_kind("Deployment", json.loads(json.dumps(BARE_SPEC))))
    Path("w.yaml").write_text(before)
    result = run("w.yaml", fix=True, config="policy.yaml")
    assert result.code == 0 and "fixed 2 containers in 1 file" in result.stdout
    after = Path("w.yaml").read_text()
    check_fix_invariants(before, after, settings)
    for container in _template_spec(yaml.safe_load(after), "Deployment")["containers"]:
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_what_fix_leaves_for_a_person(here: Path) -> None:
    result = run("escape.yaml", fix=True)
    assert result.code == 1 and "fixed 0 containers in 0 files" in result.stdout
    # Every finding here is an explicit value or a host setting: nothing for --fix to set.
    assert Path("escape.yaml").read_text() == HOSTILE
    assert result.stdout.splitlines()[:-2] == EXPECTED_TEXT[:-1]


def _template_spec(document: dict[str, object], kind: str) -> dict[str, object]:
    value: object = document
    for step in (*KINDS[kind][2], "spec"):
        assert isinstance(value, dict)
        value = value[step]
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("message", ["plain", "caf\u00e9", "del \x7f", "nul \x00 tab \t"])
def test_json_report_is_what_json_dumps_writes(message: str) -> None:
    from webhook.reports import Finding, Report, render_json

    finding = Finding("f.yaml", 3, "Pod", "", "p", "", "host-access", message)
    report = Report(findings=(finding,), errors=(), files=1, pod_specs=1)
    document = {
        "findings": [json.loads(render_json(report))["findings"][0]],
        "errors": [],
        "skipped": [],
    }
    assert render_json(report) == json.dumps(document, indent=2) + "\n"
