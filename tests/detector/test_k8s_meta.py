"""Kubernetes metadata from recorded pod objects (as the API server returns them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from detector.k8s import (
    NoMetadata,
    PodIndex,
    containers_of_pod,
    metadata_from_env,
    split_image,
    strip_runtime,
)

PODS = Path(__file__).parent / "fixtures" / "pods"
NGINX = "4b825dc642cb6eb9a060e54bf8d69288fbee4904e3c1d2b5a6f7e8d9c0b1a2f3"
METRICS = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
SHIPPER = "c0ffee" * 10 + "c0ff"
DEBUG = "dead00beef00" * 5 + "dead"


def pod(name: str) -> dict[str, Any]:
    return json.loads((PODS / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_every_started_container_is_mapped() -> None:
    metas = {m.container_id: m for m in containers_of_pod(pod("web-running"))}
    assert set(metas) == {NGINX, METRICS, SHIPPER, DEBUG, "0f0e0d0c0b0a0908070605040302010"
                          "0f0e0d0c0b0a090807060504030201000"}  # fmt: skip
    nginx = metas[NGINX]
    assert (nginx.container_name, nginx.pod_name, nginx.namespace) == (
        "nginx", "web-6f7c9d8b5-x2k4q", "shop"
    )  # fmt: skip
    assert nginx.pod_uid == "9e1d3c2b-7a6f-4e5d-8c9b-0a1b2c3d4e5f"
    assert (nginx.repository, nginx.tag) == ("registry.example:5000/shop/nginx", "1.27.2")
    assert nginx.labels["tier"] == "frontend"
    # exec probes only (the httpGet readiness probe is not a command)
    assert nginx.probe_commands == {
        ("sh", "-c", "wget -q -O /dev/null http://127.0.0.1:8080/healthz")
    }


def test_image_id_status_falls_back_to_spec_image() -> None:
    metas = {m.container_id: m for m in containers_of_pod(pod("web-running"))}
    metrics = metas[METRICS]
    assert metrics.repository == "docker.io/prom/nginx-exporter"
    assert metrics.tag is None
    assert metrics.probe_commands == {("cat", "/tmp/ready")}


def test_sidecar_init_and_ephemeral_containers() -> None:
    metas = {m.container_id: m for m in containers_of_pod(pod("web-running"))}
    assert metas[SHIPPER].probe_commands == {
        ("/fluent-bit/bin/fluent-bit", "--dry-run"),
        ("pgrep", "fluent-bit"),
    }
    assert metas[SHIPPER].repository == "docker.io/fluent/fluent-bit"
    assert metas[DEBUG].container_name == "debugger-8mx2p"
    assert metas[DEBUG].probe_commands == frozenset()


def test_pending_pod_has_no_containers_yet() -> None:
    assert containers_of_pod(pod("batch-pending")) == []


@pytest.mark.parametrize(
    ("image", "repository", "tag"),
    [
        ("nginx", "nginx", None),
        ("nginx:1.27", "nginx", "1.27"),
        ("localhost:5000/app", "localhost:5000/app", None),
        ("localhost:5000/app:v2", "localhost:5000/app", "v2"),
        ("docker.io/library/busybox:1.36@sha256:abc", "docker.io/library/busybox", "1.36"),
        ("quay.io/org/img@sha256:abc", "quay.io/org/img", None),
    ],
)
def test_split_image(image: str, repository: str, tag: str | None) -> None:
    assert split_image(image) == (repository, tag)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("containerd://abc", "abc"), ("cri-o://abc", "abc"), ("docker://abc", "abc"), ("abc", "abc")],
)
def test_strip_runtime(raw: str, expected: str) -> None:
    assert strip_runtime(raw) == expected


def test_index_follows_watch_events() -> None:
    index = PodIndex(keep_deleted=8)
    web = pod("web-running")
    index.apply("ADDED", web)
    assert index.lookup(NGINX) is not None
    # a restart gives the container a new id: the old one is no longer the pod's
    restarted = json.loads(json.dumps(web))
    restarted["status"]["containerStatuses"][0]["containerID"] = "containerd://" + "9" * 64
    index.apply("MODIFIED", restarted)
    meta = index.lookup("9" * 64)
    assert meta is not None and meta.container_name == "nginx"
    # deleted pods' containers stay findable for late events, within the bound
    index.apply("DELETED", restarted)
    assert index.lookup("9" * 64) is not None
    assert index.lookup(NGINX) is not None  # the old id: its last events may come late


def test_deleted_containers_are_kept_within_a_bound() -> None:
    index = PodIndex(keep_deleted=2)
    index.apply("ADDED", pod("web-running"))
    index.apply("DELETED", pod("web-running"))
    kept = [cid for cid in (NGINX, METRICS, SHIPPER, DEBUG) if index.lookup(cid) is not None]
    assert len(kept) == 2
    assert index.evicted == len(containers_of_pod(pod("web-running"))) - 2  # counted
    assert index.table_sizes() == {"k8s.containers": 0, "k8s.pods": 0, "k8s.deleted_containers": 2}


def test_replace_all_forgets_pods_not_listed() -> None:
    index = PodIndex()
    index.replace_all([pod("web-running")])
    assert index.lookup(NGINX) is not None
    index.replace_all([])
    assert index._by_container == {}


def test_without_node_name_there_is_no_metadata_and_no_client_import() -> None:
    source = metadata_from_env({})
    assert isinstance(source, NoMetadata)
    assert source.lookup(NGINX) is None
