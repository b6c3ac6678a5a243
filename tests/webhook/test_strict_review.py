"""The strict profile through `review()`: what the webhook answers for each way past the
three rules of the design, on Pods, every workload kind and ephemeral-container updates."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import replace
from typing import Any

import jsonpatch
import pytest
from strict_reviews import (
    KINDS,
    debug_into,
    debug_node_pod,
    hardened_container,
    hardened_pod,
    in_kind,
    review,
    root_ptrace_debugger,
)

from webhook.config import Settings
from webhook.review import review as judge


def response(raw: bytes, endpoint: Any, mode: Any, settings: Settings) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(judge(raw, endpoint, mode, settings).body)["response"]
    return answer


def test_kubectl_debug_node_is_refused(settings: Settings, core_settings: Settings) -> None:
    raw = review("Pod", debug_node_pod())
    answer = response(raw, "validate", "enforce", settings)
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    for fragment in (
        "pod: host-access: hostPID is true",
        "pod: host-access: hostIPC is true",
        "pod: host-access: hostNetwork is true",
        "hostPath volume host-root at / reaches the container runtime's state",
        'container "debugger": writable-mount: writable volume host-root (hostPath) at /host',
    ):
        assert fragment in message
    # Under `profile: core` only what podlock judged before: the root filesystem (the pod
    # reaches validation unhardened here) — nothing about the host.
    core = response(raw, "validate", "enforce", core_settings)
    assert "host-access" not in core["status"]["message"]


HOSTILE_SPECS: dict[str, tuple[dict[str, Any], str]] = {
    "hostPID": ({"hostPID": True, "containers": [hardened_container()]}, "host-access"),
    "SYS_ADMIN": (
        {
            "containers": [
                {
                    **hardened_container(),
                    "securityContext": {
                        **hardened_container()["securityContext"],
                        "allowPrivilegeEscalation": None,
                        "capabilities": {"add": ["SYS_ADMIN"]},
                        "seccompProfile": {"type": "Unconfined"},
                    },
                }
            ]
        },
        "capabilities",
    ),
    "emptyDir over /usr/bin": (
        {
            "containers": [
                {**hardened_container(), "volumeMounts": [{"name": "v", "mountPath": "/usr/bin"}]}
            ],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
        "writable-mount",
    ),
    "runAsNonRoot false": (
        {
            "containers": [
                {
                    **hardened_container(),
                    "securityContext": {
                        **hardened_container()["securityContext"],
                        "runAsNonRoot": False,
                    },
                }
            ]
        },
        "run-as-non-root",
    ),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", HOSTILE_SPECS)
def test_every_kind_is_refused_on_create(settings: Settings, kind: str, case: str) -> None:
    spec, rule = HOSTILE_SPECS[case]
    answer = response(
        review(kind, in_kind(kind, copy.deepcopy(spec))), "validate", "enforce", settings
    )
    assert answer["allowed"] is False
    assert f": {rule}: " in answer["status"]["message"]
    warned = response(
        review(kind, in_kind(kind, copy.deepcopy(spec))), "validate", "warn", settings
    )
    assert warned["allowed"] is True and any(f": {rule}: " in w for w in warned["warnings"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_passes_when_hardened(settings: Settings, kind: str) -> None:
    obj = in_kind(kind, {"containers": [hardened_container()]})
    answer = response(review(kind, obj), "validate", "enforce", settings)
    assert answer == {"uid": "strict-1", "allowed": True}


def test_the_mutating_webhook_hardens_a_pod_until_it_passes(settings: Settings) -> None:
    pod = in_kind(
        "Pod", {"containers": [{"name": "app", "image": "example/app@sha256:" + "1" * 64}]}
    )
    mutated = response(review("Pod", pod), "mutate", "enforce", settings)
    patch = json.loads(base64.b64decode(mutated["patch"]))
    hardened = jsonpatch.apply_patch(pod, patch)
    context = hardened["spec"]["containers"][0]["securityContext"]
    assert context == {
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
    }
    # Warnings are cut to the API server's 120 characters; the audit annotation has it all.
    (warning,) = mutated["warnings"]
    assert warning.startswith("podlock set readOnlyRootFilesystem: true, runAsNonRoot: true, ")
    audit = response(review("Pod", pod), "mutate", "audit", settings)["auditAnnotations"]
    assert audit["mutations"] == (
        "set readOnlyRootFilesystem: true, runAsNonRoot: true, allowPrivilegeEscalation: false "
        'on container "app", emptyDir at /tmp'
    )
    assert response(review("Pod", hardened), "validate", "enforce", settings)["allowed"] is True


# --- kubectl debug: ephemeral containers --------------------------------------------------


def test_a_root_ptrace_debugger_is_hardened_and_refused(settings: Settings) -> None:
    raw = debug_into(hardened_pod(), root_ptrace_debugger())
    mutated = response(raw, "mutate", "enforce", settings)
    patch = json.loads(base64.b64decode(mutated["patch"]))
    # Every hardening, not only the read-only root; privileged is left for validation.
    assert patch == [
        {
            "op": "add",
            "path": "/spec/ephemeralContainers/0/securityContext/readOnlyRootFilesystem",
            "value": True,
        },
        {
            "op": "add",
            "path": "/spec/ephemeralContainers/0/securityContext/runAsNonRoot",
            "value": True,
        },
    ]
    answer = response(raw, "validate", "enforce", settings)
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert 'container "debugger-x1": privileged-container' in message
    assert 'container "debugger-x1": capabilities: capabilities.add has SYS_PTRACE' in message


@pytest.mark.parametrize(
    ("action", "mode", "allowed", "key"),
    [
        ("deny", "enforce", False, "status"),
        ("deny", "warn", True, "warnings"),
        ("warn", "enforce", True, "warnings"),
        ("audit", "enforce", True, "auditAnnotations"),
        ("off", "enforce", True, None),
    ],
)
def test_exec_rule_applies_to_kubectl_debug(
    settings: Settings, action: Any, mode: Any, allowed: bool, key: str | None
) -> None:
    # A debugger that passes every other rule: only the exec rule can stop it.
    raw = debug_into(hardened_pod(), hardened_container("debugger-ok"))
    answer = response(raw, "validate", mode, replace(settings, exec_action=action))
    assert answer["allowed"] is allowed
    extras = {"status", "warnings", "auditAnnotations"} & answer.keys()
    assert extras == ({key} if key else set())
    if key == "status":
        assert answer["status"]["message"].startswith(
            "podlock denied kubectl debug into pod shop/web (ephemeral container debugger-ok): "
            "exec-into-hardened-pod"
        )


def test_core_lets_kubectl_debug_through_the_exec_rule(core_settings: Settings) -> None:
    raw = debug_into(hardened_pod(), hardened_container("debugger-ok"))
    denying = replace(core_settings, exec_action="deny")
    assert response(raw, "validate", "enforce", denying)["allowed"] is True


# --- exemptions cannot be granted after admission -----------------------------------------

OPT_OUT = {"podlock.io/exempt": "true"}


def test_an_opt_out_added_by_the_update_does_not_count(settings: Settings) -> None:
    opting = replace(settings, pod_opt_out_namespaces=frozenset({"shop"}))
    old = hardened_pod()
    new = hardened_pod(labels=OPT_OUT)
    new["spec"]["ephemeralContainers"] = [root_ptrace_debugger()]
    raw = review("Pod", new, "UPDATE", old=old, sub_resource="ephemeralcontainers")
    assert response(raw, "validate", "enforce", opting)["allowed"] is False
    # Present before the update: the pod is exempt, as it was at creation.
    old_exempt = hardened_pod(labels=OPT_OUT)
    raw = review("Pod", new, "UPDATE", old=old_exempt, sub_resource="ephemeralcontainers")
    assert response(raw, "validate", "enforce", opting) == {"uid": "strict-1", "allowed": True}
    # late-exemption off: what podlock did before.
    lenient = replace(opting, enabled_rules=opting.enabled_rules - {"late-exemption"})
    raw = review("Pod", new, "UPDATE", old=old, sub_resource="ephemeralcontainers")
    assert response(raw, "validate", "enforce", lenient)["allowed"] is True


def legacy_pod(**metadata: Any) -> dict[str, Any]:
    """A pod admitted before podlock was installed: it breaks several rules."""
    pod = hardened_pod(**metadata)
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True, "runAsUser": 0}
    return pod


# (old metadata, new metadata, namespace allows the opt-out, late-exemption on, refused)
PLAIN_UPDATES = {
    "label added": ({}, {"labels": OPT_OUT}, True, True, True),
    "annotation added": ({}, {"annotations": OPT_OUT}, True, True, True),
    "added beside other labels": (
        {"labels": {"app": "web"}},
        {"labels": {"app": "web", **OPT_OUT}},
        True,
        True,
        True,
    ),
    "label already there": (
        {"labels": OPT_OUT},
        {"labels": {**OPT_OUT, "v": "2"}},
        True,
        True,
        False,
    ),
    "annotation there, label added": (
        {"annotations": OPT_OUT},
        {"annotations": OPT_OUT, "labels": OPT_OUT},
        True,
        True,
        False,
    ),
    "opt-out removed": ({"labels": OPT_OUT}, {"labels": {"app": "web"}}, True, True, False),
    "late-exemption off": ({}, {"labels": OPT_OUT}, True, False, False),
    "namespace without opt-out": ({}, {"labels": OPT_OUT}, False, True, False),
    "not true": ({}, {"labels": {"podlock.io/exempt": "yes"}}, True, True, False),
    "unrelated label": ({"labels": {"app": "web"}}, {"labels": {"app": "shop"}}, True, True, False),
    "finalizer removed": ({"finalizers": ["x/y"]}, {}, True, True, False),
}


@pytest.mark.parametrize("case", sorted(PLAIN_UPDATES))
def test_a_plain_pod_update_may_not_add_the_opt_out(settings: Settings, case: str) -> None:
    """`kubectl label pod web podlock.io/exempt=true`, then `kubectl debug`: the label is
    refused where it would count. Every other plain update passes, even on a pod podlock would
    refuse now (one admitted before podlock): a running pod's spec is not judged again."""
    old_metadata, new_metadata, opt_out, late, refused = PLAIN_UPDATES[case]
    policy = replace(settings, pod_opt_out_namespaces=frozenset({"shop"} if opt_out else ()))
    if not late:
        policy = replace(policy, enabled_rules=policy.enabled_rules - {"late-exemption"})
    raw = review("Pod", legacy_pod(**new_metadata), "UPDATE", old=legacy_pod(**old_metadata))
    answer = response(raw, "validate", "enforce", policy)
    if not refused:
        assert answer == {"uid": "strict-1", "allowed": True}
        return
    where = "label" if "labels" in new_metadata else "annotation"
    assert answer["allowed"] is False
    assert answer["status"]["message"] == (
        f"podlock denied Pod shop/web: pod: late-exemption: the {where} podlock.io/exempt can "
        "only be set when the pod is created"
    )
    # Nothing to harden on an UPDATE: the mutating webhook is not even registered for it.
    assert response(raw, "mutate", "enforce", policy) == {"uid": "strict-1", "allowed": True}


def test_a_plain_pod_update_adding_the_opt_out_warns_or_audits(settings: Settings) -> None:
    opting = replace(settings, pod_opt_out_namespaces=frozenset({"shop"}))
    raw = review("Pod", hardened_pod(labels=OPT_OUT), "UPDATE", old=hardened_pod())
    line = (
        "pod: late-exemption: the label podlock.io/exempt can only be set when the pod is created"
    )
    warned = response(raw, "validate", "warn", opting)
    assert warned == {"uid": "strict-1", "allowed": True, "warnings": [f"podlock: {line}"]}
    audited = response(raw, "validate", "audit", opting)
    assert audited == {
        "uid": "strict-1",
        "allowed": True,
        "auditAnnotations": {"violations": line},
    }
    outcome = judge(raw, "validate", "enforce", opting)
    assert (outcome.allowed, outcome.operation, outcome.rules) == (
        False,
        "UPDATE",
        ("late-exemption",),
    )


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "Pod"])
def test_a_workload_cannot_exempt_itself_on_update(settings: Settings, kind: str) -> None:
    opting = replace(settings, pod_opt_out_namespaces=frozenset({"shop"}))
    old = in_kind(kind, {"containers": [hardened_container()]})
    bad = {"hostPID": True, "containers": [hardened_container()]}
    new = in_kind(kind, bad, labels=OPT_OUT)
    answer = response(review(kind, new, "UPDATE", old=old), "validate", "enforce", opting)
    assert answer["allowed"] is False and "hostPID is true" in answer["status"]["message"]
    # Created with the opt-out: exempt, on CREATE and on UPDATE.
    assert response(review(kind, new), "validate", "enforce", opting)["allowed"] is True
    again = review(kind, new, "UPDATE", old=in_kind(kind, bad, labels=OPT_OUT))
    assert response(again, "validate", "enforce", opting)["allowed"] is True


# --- mutable image references ---------------------------------------------------------------


def test_a_tag_warns_and_the_policy_can_make_it_refuse(settings: Settings) -> None:
    container = {**hardened_container(), "image": "example/app:1", "imagePullPolicy": "Always"}
    raw = review("Pod", in_kind("Pod", {"containers": [container]}))
    warned = response(raw, "validate", "enforce", settings)
    assert warned["allowed"] is True
    (warning,) = warned["warnings"]
    assert warning.startswith(
        'podlock: container "app": mutable-image-reference: image example/app:1 is not pinned '
    )
    audit = response(raw, "validate", "audit", settings)["auditAnnotations"]["violations"]
    assert audit.endswith("is not pinned by a digest (and imagePullPolicy is Always)")
    refused = response(raw, "validate", "enforce", replace(settings, image_action="deny"))
    assert refused["allowed"] is False
    assert response(raw, "validate", "enforce", replace(settings, image_action="off")) == {
        "uid": "strict-1",
        "allowed": True,
    }
