"""Container identity from a cgroup v2 path. Pure.

Container runtimes name the container's leaf cgroup after its 64-hex id:

    containerd, systemd driver  …/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope
    containerd, cgroupfs driver /kubepods/besteffort/pod<uid>/<id>
    CRI-O                       …/crio-<id>.scope  (cgroupfs: …/pod<uid>/crio-<id>)
    Docker                      /docker/<id>, /system.slice/docker-<id>.scope
    Podman                      /machine.slice/libpod-<id>.scope, /libpod_parent/libpod-<id>

The runtimes' monitors (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`)
are not containers. The kernel side applies the same leaf test
(`looks_like_container` in podlock.bpf.c); this module is the authority.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ID = r"(?P<id>[0-9a-f]{64})"
_LEAF = re.compile(
    r"^(?:"
    + _ID
    + r"|(?P<prefix>cri-containerd|crio|docker|libpod)-"
    + _ID.replace("id", "id2")
    + r"(?:\.scope)?)$"
)
# `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _ for ->.slice` (systemd)
_POD = re.compile(
    r"^(?:kubepods(?:-[a-z]+)?-)?pod(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_]"
    r"[0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$"
)


@dataclass(frozen=True, slots=True)
class ContainerRef:
    container_id: str  # full 64-hex id
    pod_uid: str | None  # Kubernetes pod UID when the path carries one
    runtime: str  # "containerd", "crio", "docker", "podman", or "unknown" for a bare id


_RUNTIMES = {
    "cri-containerd": "containerd",
    "crio": "crio",
    "docker": "docker",
    "libpod": "podman",
}


def parse_cgroup_path(path: str) -> ContainerRef | None:
    """The container a cgroup path belongs to, or None for the host."""
    parts = [p for p in path.strip().split("/") if p]
    if not parts:
        return None
    leaf = _LEAF.match(parts[-1])
    if leaf is None:
        return None
    if leaf.group("id"):
        container_id = leaf.group("id")
        # a bare id: containerd's cgroupfs driver under kubepods, or Docker's /docker/<id>
        if "docker" in parts[:-1]:
            runtime = "docker"
        elif any(p.startswith("kubepods") for p in parts):
            runtime = "containerd"
        else:
            runtime = "unknown"
    else:
        container_id = leaf.group("id2")
        runtime = _RUNTIMES[leaf.group("prefix")]
    pod_uid = None
    for part in parts[:-1]:
        pod = _POD.match(part)
        if pod is not None:
            pod_uid = pod.group("uid").replace("_", "-")
    return ContainerRef(container_id=container_id, pod_uid=pod_uid, runtime=runtime)


def cgroup_v2_path(proc_cgroup: str) -> str | None:
    """The v2 path from the text of /proc/PID/cgroup (the `0::` line)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None
