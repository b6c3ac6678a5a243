"""Kinds podlock does not know: pod templates judged by their shape, other containers reported
as not judged, in text, JSON, SARIF and with --fix (fixtures/custom-kinds: Argo Rollouts,
Knative, OpenKruise, Ray, and a Prometheus, an Argo Workflow and a Kyverno policy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
from lint_support import check_fix_invariants, parse, run
from test_lint_sarif import SCHEMA

from webhook.config import Settings
from webhook.lint import judged_refs, lint_source
from webhook.policy import PRIVILEGED, ROOT_USER, WRITABLE_ROOT

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "custom-kinds"
NOT_JUDGED = str(FIXTURES / "not-judged.yaml")

# (file, kind, container, rule) the fixtures must produce, whatever else a policy adds.
EXPECTED = {
    ("argo-rollout.yaml", "Rollout", "checkout", WRITABLE_ROOT),
    ("argo-rollout.yaml", "Rollout", "envoy", WRITABLE_ROOT),
    ("argo-rollout.yaml", "Rollout", "envoy", PRIVILEGED),  # `privileged: yes`
    ("knative-service.yaml", "Service", "containers[0]", ROOT_USER),  # `runAsUser: 0e0`
    ("openkruise.yaml", "AdvancedCronJob", "reindex", WRITABLE_ROOT),
    ("ray-cluster.yaml", "RayCluster", "ray-worker", WRITABLE_ROOT),  # `off`
}


def test_pod_templates_of_unknown_kinds_are_judged_in_text() -> None:
    result = run(str(FIXTURES))
    assert result.code == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == (
        "24 findings (mutable-image-reference: 6, privilege-escalation: 7, "
        "privileged-container: 1, root-user: 1, run-as-non-root: 5, writable-root-filesystem: 4), "
        "3 not judged in 5 files, 6 pod specs"
    )
    assert (
        f"{NOT_JUDGED}:11: not judged: Prometheus/monitoring/k8s spec.containers: containers "
        "outside a pod template, which podlock does not judge"
    ) in lines
    assert (
        f"{NOT_JUDGED}:25: not judged: Workflow/nightly-export- spec.templates[0].container: "
        "an image outside a pod template, which podlock does not judge"
    ) in lines
    assert (
        f"{NOT_JUDGED}:60: not judged: Task/ci/build spec.steps[0]: "
        "an image outside a pod template, which podlock does not judge"
    ) in lines
    assert not any("ClusterPolicy" in line for line in lines)  # Kyverno's pattern


def test_json_lists_findings_and_what_was_not_judged() -> None:
    result = run(str(FIXTURES), fmt="json")
    document = json.loads(result.stdout)
    found = {
        (Path(f["file"]).name, f["kind"], f["container"], f["rule"]) for f in document["findings"]
    }
    assert found >= EXPECTED
    assert document["errors"] == []
    assert document["skipped"] == [
        {
            "file": NOT_JUDGED,
            "line": 11,
            "kind": "Prometheus",
            "namespace": "monitoring",
            "name": "k8s",
            "path": "spec.containers",
            "message": "containers outside a pod template, which podlock does not judge",
        },
        {
            "file": NOT_JUDGED,
            "line": 25,
            "kind": "Workflow",
            "namespace": "",
            "name": "nightly-export-",
            "path": "spec.templates[0].container",
            "message": "an image outside a pod template, which podlock does not judge",
        },
        {
            "file": NOT_JUDGED,
            "line": 60,
            "kind": "Task",
            "namespace": "ci",
            "name": "build",
            "path": "spec.steps[0]",
            "message": "an image outside a pod template, which podlock does not judge",
        },
    ]


def test_sarif_has_results_for_templates_and_warnings_for_the_rest() -> None:
    result = run(str(FIXTURES), fmt="sarif")
    log = json.loads(result.stdout)
    jsonschema.validate(log, SCHEMA)
    (sarif_run,) = log["runs"]
    kinds = {r["message"]["text"].split("/")[0] for r in sarif_run["results"]}
    assert {"Rollout", "Service", "AdvancedCronJob", "RayCluster"} <= kinds
    (invocation,) = sarif_run["invocations"]
    assert invocation["executionSuccessful"] is True  # not judging is not an error
    notes = [(n["level"], n["message"]["text"]) for n in invocation["toolExecutionNotifications"]]
    assert notes == [
        (
            "warning",
            "Prometheus/monitoring/k8s spec.containers: containers outside a pod template, "
            "which podlock does not judge",
        ),
        (
            "warning",
            "Workflow/nightly-export- spec.templates[0].container: an image outside a pod "
            "template, which podlock does not judge",
        ),
        (
            "warning",
            "Task/ci/build spec.steps[0]: an image outside a pod template, which podlock does "
            "not judge",
        ),
    ]


def test_fix_hardens_the_templates_and_leaves_the_rest(tmp_path: Path, settings: Settings) -> None:
    copy = tmp_path / "custom-kinds"
    shutil.copytree(FIXTURES, copy)
    before = {p.name: p.read_text() for p in copy.iterdir()}
    result = run(str(copy), fix=True, fmt="json")
    assert result.code == 1  # the privileged and root containers remain
    after = {p.name: p.read_text() for p in copy.iterdir()}
    assert after["not-judged.yaml"] == before["not-judged.yaml"]
    # Knative's is read-only already; the strict profile still sets runAsNonRoot and
    # allowPrivilegeEscalation: false there
    for name in ("argo-rollout.yaml", "openkruise.yaml", "knative-service.yaml"):
        assert after[name] != before[name]
        check_fix_invariants(before[name], after[name], settings)
    remaining = {
        (Path(f["file"]).name, f["container"], f["rule"])
        for f in json.loads(result.stdout)["findings"]
    }
    assert ("argo-rollout.yaml", "checkout", WRITABLE_ROOT) not in remaining
    assert ("openkruise.yaml", "reindex", WRITABLE_ROOT) not in remaining
    assert ("argo-rollout.yaml", "envoy", PRIVILEGED) in remaining
    # An explicit `off` is left for a person, as `false` is.
    assert ("ray-cluster.yaml", "ray-worker", WRITABLE_ROOT) in remaining


def test_where_templates_are_found(settings: Settings) -> None:
    source = parse(
        """\
apiVersion: v1
kind: PodTemplate
metadata: {name: base, namespace: kube-system}
template:
  spec:
    containers: [{name: a, image: x}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: not-walked}
data: {}
spec: {template: {spec: {containers: [{name: b, image: x}]}}}
---
apiVersion: v1
kind: List
items:
- apiVersion: kubeflow.org/v1
  kind: PyTorchJob
  metadata: {name: mnist}
  spec:
    pytorchReplicaSpecs:
      Master: {template: {spec: {containers: [{name: c, image: x}]}}}
      Worker: &worker {template: {spec: {containers: [{name: d, image: x}]}}}
      Spare: *worker
- apiVersion: keda.sh/v1alpha1
  kind: ScaledJob
  spec: {jobTargetRef: {template: {spec: {containers: [{name: e, image: x}]}}}}
- kind: Rollout
  spec: {template: {spec: {containers: [{name: f, image: x}]}}}
"""
    )
    refs = [(ref.kind, ref.path) for _, _, ref in judged_refs(source, settings)]
    assert refs == [
        # The PodTemplate is in kube-system, exempt: not judged.
        ("PyTorchJob", ("items", 0, "spec", "pytorchReplicaSpecs", "Master", "template", "spec")),
        ("PyTorchJob", ("items", 0, "spec", "pytorchReplicaSpecs", "Worker", "template", "spec")),
        ("ScaledJob", ("items", 1, "spec", "jobTargetRef", "template", "spec")),
    ]
    # The alias is one mapping, walked once; the Rollout without apiVersion is no object.
    assert lint_source(source, settings).skipped == []
    again = parse(
        "apiVersion: v1\nkind: PodTemplate\nmetadata: {name: t}\n" + "template:\n"
        "  spec:\n    containers: [{name: a, image: x}]\n"
    )
    assert [ref.kind for _, _, ref in judged_refs(again, settings)] == ["PodTemplate"]
