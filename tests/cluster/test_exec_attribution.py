"""Who ran it (issue 12), in the real cluster: two people with their own client certificates
run `kubectl exec` and `kubectl cp` into one pod; `podlock detect`, following the API server's
audit log, names each of them on the alerts of their own session, and a session entered
without the API server (containerd's own exec) says it is unmatched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_pods import sleeping_pod
from detect_host import Alert, Detector, watching
from k8s_cluster import Cluster

pytestmark = pytest.mark.root

NAMESPACE = "pl-who"
POD = "team-app"
ROOTFS_RULE = "Write to container root filesystem in exec session"
CP_RULE = "kubectl cp into container"
SAME_COMMAND = ("sh", "-c", "echo hello >> /tmp/who-was-it")

MANIFESTS: list[dict[str, Any]] = [
    sleeping_pod(POD, NAMESPACE, container="app"),
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "exec", "namespace": NAMESPACE},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "exec", "namespace": NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "exec"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "oncall"}],
    },
]


@pytest.fixture(scope="module")
def detector(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detector]:
    workdir, follow = tmp_path_factory.mktemp("who"), ("--audit-log", str(cluster.audit_log))
    with watching(cluster, workdir, NAMESPACE, MANIFESTS, POD, *follow) as d:
        yield d


def _fields(alert: Alert) -> dict[str, Any]:
    out: dict[str, Any] = alert["output_fields"]
    return out


def _on_pod(alert: Alert) -> bool:
    return _fields(alert).get("k8s.pod.name") == POD


def _audit_ids(cluster: Cluster, user: str) -> list[str]:
    """The audit ids of the user's exec requests to the pod (each audited in several stages)."""
    ids = [
        e["auditID"]
        for e in cluster.audit_events()
        if e.get("user", {}).get("username") == user
        and e.get("objectRef", {}).get("subresource") == "exec"
        and e.get("objectRef", {}).get("name") == POD
    ]
    return list(dict.fromkeys(ids))


def test_two_people_running_the_same_command_a_second_apart_are_each_named(
    cluster: Cluster, detector: Detector
) -> None:
    alice = cluster.add_user("alice", ["oncall"])
    bob = cluster.add_user("bob", ["oncall", "sre"])
    for kubeconfig in (alice, bob):
        cluster.kubectl("exec", POD, "-n", NAMESPACE, "--", *SAME_COMMAND, kubeconfig=kubeconfig)
        time.sleep(1)
    alerts = detector.wait_for(
        "the two sessions' writes",
        lambda a: a["rule"] == ROOTFS_RULE and _on_pod(a) and "/tmp/who-was-it" in a["output"],
        count=2,
    )
    alerts.sort(key=lambda a: a["time"])
    assert [_fields(a).get("user.name") for a in alerts] == ["alice", "bob"]
    assert _fields(alerts[1])["k8s.user.groups"] == "oncall,sre,system:authenticated"
    assert [_fields(a)["k8s.audit.id"] for a in alerts] == [
        *_audit_ids(cluster, "alice"),
        *_audit_ids(cluster, "bob"),
    ]
    assert alerts[0]["output"].endswith(f"k8s_audit_id={_fields(alerts[0])['k8s.audit.id']}")


def test_a_copy_names_who_copied(cluster: Cluster, detector: Detector, tmp_path: Path) -> None:
    carol = cluster.add_user("carol", ["oncall"])
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "tool.sh").write_text("echo tool\n")
    cluster.kubectl("cp", str(payload), f"{NAMESPACE}/{POD}:/tmp/payload", kubeconfig=carol)
    (alert,) = detector.wait_for(
        "the copy's alert",
        lambda a: a["rule"] == CP_RULE and _on_pod(a) and "/tmp/payload/tool.sh" in a["output"],
    )
    assert _fields(alert)["user.name"] == "carol"
    assert _fields(alert)["k8s.audit.id"] in _audit_ids(cluster, "carol")


def test_a_session_the_api_server_never_saw_is_unmatched_and_names_nobody(
    cluster: Cluster, detector: Detector
) -> None:
    pod = cluster.get("pod", POD, NAMESPACE)
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://")[1]
    # what someone on the node could do: enter the container through containerd directly
    cluster.ctr(
        "tasks", "exec", "--exec-id", "behind-the-api", container_id,
        "sh", "-c", "echo sneaky > /tmp/node-side",
    )  # fmt: skip
    (alert,) = detector.wait_for(
        "the node-side session's write",
        lambda a: a["rule"] == ROOTFS_RULE and _on_pod(a) and "/tmp/node-side" in a["output"],
    )
    assert "user.name" not in _fields(alert)
    assert _fields(alert)["podlock.audit"] == "unmatched"
    assert alert["output"].endswith("k8s_user=<unmatched>")
