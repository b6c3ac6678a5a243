"""The one-command install inside the integration cluster, from the image `make image` builds:
`helm install` of deploy/helm/podlock, both replicas ready behind the Service (the API server
calls the endpoints: aggregator routing, no kube-proxy), a pod in a governed namespace hardened
by them, podlock-system exempt, and a rolling upgrade to a new image while pods are created in
a loop: not one create fails (two replicas, maxUnavailable 0, readiness, the preStop drain, the
PodDisruptionBudget).

The certificates are `podlock certs generate`'s (certificates.source=generated): the cluster's
pods cannot reach its API server (it listens on loopback and no kube-proxy serves the
`kubernetes` Service), which self-managed replicas need; those run against the same API server
from the host in test_certs_self_managed.py. The detector DaemonSet is left out (its own tests
run it).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from certs_host import Load
from cluster import Cluster, wait_until
from deploy_render import CHART, ROOT, helm

from certs.cli import write_bundle
from certs.pki import generate_bundle

NAMESPACE = "podlock-system"
GOVERNED = "podlock-in-cluster"
VERSION = "0.1.0"
ARCHIVE = ROOT / "dist" / f"podlock-{VERSION}.oci.tar"
PRIVILEGED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "privileged"},
    "spec": {
        "containers": [
            {
                "name": "main",
                "image": "localhost/podlock-busybox:1.0",
                "securityContext": {"privileged": True},
            }
        ]
    },
}


@pytest.fixture(scope="module")
def installed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`make image`, imported into the node's containerd, then `helm install`."""
    subprocess.run(["make", "--no-print-directory", "image"], cwd=ROOT, check=True)
    cluster.ctr("images", "import", "--base-name", "localhost/podlock", str(ARCHIVE))
    certs = tmp_path_factory.mktemp("generated")
    write_bundle(str(certs), generate_bundle("podlock", NAMESPACE, now=datetime.now(UTC)))
    install = [
        "install",
        "podlock",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set",
        "certificates.source=generated",
        "--set-file",
        f"certificates.generated.caCert={certs / 'ca.crt'}",
        "--set-file",
        f"certificates.generated.tlsCert={certs / 'tls.crt'}",
        "--set-file",
        f"certificates.generated.tlsKey={certs / 'tls.key'}",
        "--set",
        "detector.enabled=false",
    ]
    result = helm(*install, kubeconfig=cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    try:
        rollout(cluster)
        cluster.create_namespace(GOVERNED)
        yield
    finally:
        helm(
            "uninstall",
            "podlock",
            "--namespace",
            NAMESPACE,
            "--wait",
            kubeconfig=cluster.kubeconfig,
        )
        cluster.kubectl("delete", "namespace", GOVERNED, "--wait=false", "--ignore-not-found")


def rollout(cluster: Cluster) -> None:
    result = cluster.kubectl(
        "rollout", "status", "deployment/podlock", "-n", NAMESPACE, "--timeout=300s", check=False
    )
    if result.returncode != 0:
        described = cluster.kubectl("describe", "pods", "-n", NAMESPACE, check=False).stdout
        raise AssertionError(f"the rollout did not finish: {result.stderr}\n{described[-4000:]}")


def test_both_replicas_are_ready_behind_the_service(cluster: Cluster, installed: None) -> None:
    deployment = cluster.get("deployment", "podlock", NAMESPACE)
    assert deployment["status"]["readyReplicas"] == 2
    pods = json.loads(
        cluster.kubectl(
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=webhook",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {f"localhost/podlock:{VERSION}"}
    # The image runs as the chart says: non-root, read-only root filesystem.
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532


def test_a_pod_is_hardened_by_the_in_cluster_webhook(cluster: Cluster, installed: None) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hardened", "namespace": GOVERNED},
        "spec": {
            "containers": [{"name": "main", "image": "localhost/podlock-busybox:1.0"}],
        },
    }
    created = json.loads(
        cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(pod)).stdout
    )
    try:
        container = created["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    finally:
        cluster.kubectl("delete", "pod", "hardened", "-n", GOVERNED, "--wait=false")


def test_podlock_system_is_exempt(cluster: Cluster, installed: None) -> None:
    # The same privileged pod: refused in a governed namespace, admitted untouched in podlock's.
    body = json.dumps(PRIVILEGED_POD)
    governed = cluster.kubectl(
        "create", "--dry-run=server", "-n", GOVERNED, "-f", "-", input=body, check=False
    )
    assert governed.returncode != 0
    assert "podlock" in governed.stderr and "privileged" in governed.stderr
    exempt = cluster.kubectl(
        "create", "--dry-run=server", "-n", NAMESPACE, "-f", "-", "-o", "json", input=body
    )
    assert "readOnlyRootFilesystem" not in exempt.stdout


NEXT = [f"localhost/podlock:{VERSION}-next"] * 2


def webhook_images(cluster: Cluster) -> list[str]:
    """The image of every webhook pod, terminating ones included."""
    selector = "app.kubernetes.io/component=webhook"
    jsonpath = "jsonpath={.items[*].spec.containers[0].image}"
    out = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", jsonpath)
    return sorted(out.stdout.split())


def test_a_rolling_upgrade_fails_no_create(cluster: Cluster, installed: None) -> None:
    # A new image (the same bytes under a new tag): every replica is replaced.
    cluster.ctr(
        "images",
        "tag",
        "--force",
        f"localhost/podlock:{VERSION}",
        f"localhost/podlock:{VERSION}-next",
    )
    load = Load(cluster, namespace=GOVERNED)
    load.start()
    try:
        wait_until("the first creates", lambda: load.created >= 5 or bool(load.failures), 60)
        upgrade = [
            "upgrade",
            "podlock",
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            f"image.tag={VERSION}-next",
        ]
        result = helm(*upgrade, kubeconfig=cluster.kubeconfig)
        assert result.returncode == 0, result.stderr
        before = load.created
        rollout(cluster)
        # The old replicas drain (preStop sleep, then gunicorn's graceful stop) until they are
        # gone; creates go on throughout, and a few seconds after.
        wait_until("the old replicas to be gone", lambda: webhook_images(cluster) == NEXT, 120)
        time.sleep(5)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.created > before + 20
    assert load.hardened == load.created
