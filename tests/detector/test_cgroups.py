"""Container identity from cgroup paths: one row per runtime and driver."""

from __future__ import annotations

import pytest

from detector.cgroups import ContainerRef, cgroup_v2_path, parse_cgroup_path

ID = "3f1c0d9a8b7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a"
UID = "0b9c7a4e-2f31-4d5e-9a8b-1c2d3e4f5a6b"
UID_ = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # containerd, cgroupfs driver (the kubelet layout the e2e tests use)
        (f"/kubepods/besteffort/pod{UID}/{ID}", ContainerRef(ID, UID, "containerd")),
        (f"/kubepods/burstable/pod{UID}/{ID}", ContainerRef(ID, UID, "containerd")),
        (f"/kubepods/pod{UID}/{ID}", ContainerRef(ID, UID, "containerd")),
        # containerd, systemd driver
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
            f"cri-containerd-{ID}.scope",
            ContainerRef(ID, UID, "containerd"),
        ),
        (
            f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope",
            ContainerRef(ID, UID, "containerd"),
        ),
        # CRI-O, systemd and cgroupfs drivers
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"crio-{ID}.scope",
            ContainerRef(ID, UID, "crio"),
        ),
        (f"/kubepods/besteffort/pod{UID}/crio-{ID}", ContainerRef(ID, UID, "crio")),
        # Docker, cgroupfs and systemd drivers
        (f"/docker/{ID}", ContainerRef(ID, None, "docker")),
        (f"/system.slice/docker-{ID}.scope", ContainerRef(ID, None, "docker")),
        # Podman
        (f"/machine.slice/libpod-{ID}.scope", ContainerRef(ID, None, "podman")),
        (f"/libpod_parent/libpod-{ID}", ContainerRef(ID, None, "podman")),
        (
            f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope",
            ContainerRef(ID, None, "podman"),
        ),
        # a bare id outside any known parent
        (f"/custom/{ID}", ContainerRef(ID, None, "unknown")),
        # not containers: the host, pod-level cgroups, runtime monitors, near-misses
        ("/", None),
        ("", None),
        ("/system.slice/containerd.service", None),
        (f"/kubepods/besteffort/pod{UID}", None),
        (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice", None),
        (f"/machine.slice/libpod-conmon-{ID}.scope", None),
        (f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope", None),
        (f"/kubepods/besteffort/pod{UID}/{ID[:-1]}", None),  # 63 hex digits
        (f"/kubepods/besteffort/pod{UID}/{ID.upper()}", None),  # runtimes write lower case
        (f"/docker/{ID}x", None),
    ],
)
def test_parse_cgroup_path(path: str, expected: ContainerRef | None) -> None:
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0::/kubepods/x\n", "/kubepods/x"),
        ("9:name=systemd:/\n4:memory:/m\n0::/\n", "/"),
        ("4:memory:/m\n", None),
    ],
)
def test_cgroup_v2_path(text: str, expected: str | None) -> None:
    assert cgroup_v2_path(text) == expected
