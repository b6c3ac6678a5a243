"""AdmissionReview requests for the strict profile's tests: the pod `kubectl debug node/…`
creates, `kubectl debug` adding an ephemeral container, and any pod spec wrapped in each
workload kind. Shared by the review tests and the HTTP tests (Flask client and gunicorn)."""

from __future__ import annotations

import copy
import json
from typing import Any

Obj = dict[str, Any]
DIGEST = "example/app@sha256:" + "0" * 64

# group, resource and the path to the pod template's parent, per kind
KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "Pod": ("", "pods", ()),
    "Deployment": ("apps", "deployments", ("spec", "template")),
    "StatefulSet": ("apps", "statefulsets", ("spec", "template")),
    "DaemonSet": ("apps", "daemonsets", ("spec", "template")),
    "ReplicaSet": ("apps", "replicasets", ("spec", "template")),
    "ReplicationController": ("", "replicationcontrollers", ("spec", "template")),
    "Job": ("batch", "jobs", ("spec", "template")),
    "CronJob": ("batch", "cronjobs", ("spec", "jobTemplate", "spec", "template")),
}


def hardened_container(name: str = "app") -> Obj:
    """A container that passes every strict rule, as the mutating webhook leaves it."""
    return {
        "name": name,
        "image": DIGEST,
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
        },
    }


def debug_node_pod() -> Obj:
    """What `kubectl debug node/worker-1 -it --image=busybox` creates (kubectl's legacy
    profile): the node's namespaces and its root filesystem at /host."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "node-debugger-worker-1-abcde", "namespace": "shop"},
        "spec": {
            "nodeName": "worker-1",
            "hostIPC": True,
            "hostNetwork": True,
            "hostPID": True,
            "containers": [
                {
                    "name": "debugger",
                    "image": "busybox",
                    "stdin": True,
                    "tty": True,
                    "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
                }
            ],
            "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
        },
    }


def hardened_pod(namespace: str = "shop", **metadata: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": namespace, **metadata},
        "spec": {"containers": [hardened_container("web")]},
    }


def review(
    kind: str,
    obj: Obj,
    operation: str = "CREATE",
    old: Obj | None = None,
    sub_resource: str = "",
    uid: str = "strict-1",
) -> bytes:
    group, resource, _ = KINDS[kind]
    metadata = obj.get("metadata", {})
    request: Obj = {
        "uid": uid,
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "namespace": metadata.get("namespace", "shop"),
        "name": metadata.get("name", ""),
        "operation": operation,
        "object": obj,
        "oldObject": old,
    }
    if sub_resource:
        request["subResource"] = sub_resource
    document = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    return json.dumps(document).encode()


def debug_into(pod: Obj, ephemeral: Obj) -> bytes:
    """`kubectl debug -it web --image=… --target=web`: a pods/ephemeralcontainers UPDATE."""
    new = copy.deepcopy(pod)
    new["spec"]["ephemeralContainers"] = [ephemeral]
    return review("Pod", new, "UPDATE", old=pod, sub_resource="ephemeralcontainers")


def root_ptrace_debugger() -> Obj:
    """The ephemeral container `kubectl debug --profile=sysadmin` asks for."""
    return {
        "name": "debugger-x1",
        "image": "busybox",
        "targetContainerName": "web",
        "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_PTRACE"]}},
    }


def in_kind(kind: str, spec: Obj, namespace: str = "shop", labels: Obj | None = None) -> Obj:
    """A pod spec wrapped in an object of `kind` (the template's labels set to `labels`)."""
    _, _, template_at = KINDS[kind]
    metadata: Obj = {"name": f"{kind.lower()}-x", "namespace": namespace}
    if kind == "Pod":
        if labels:
            metadata["labels"] = labels
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    template: Obj = {"metadata": {"labels": labels or {"app": "x"}}, "spec": spec}
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": metadata}
    parent = obj
    for step in template_at[:-1]:
        parent = parent.setdefault(step, {})
    parent[template_at[-1]] = template
    return obj
