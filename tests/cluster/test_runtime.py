"""`podlock detect` on the node, with pod metadata from the real API server (issue 10,
scenario 11): real `kubectl cp` and `kubectl exec` into a pod the kubelet runs, and the pod's
own exec liveness probe, which must stay silent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_pods import sleeping_pod
from detect_host import Alert, Detector, watching
from k8s_cluster import Cluster, wait_until

pytestmark = pytest.mark.root

NAMESPACE = "pl-runtime"
POD = "drift"
CONTAINER = "app"
CP_RULE = "kubectl cp into container"
VOLUME_RULE = "Write to container volume in exec session"
REFUSED_RULE = "Write attempt refused by read-only root filesystem"
PROBE_FILE = "/var/cache/app/probe"

HARDENED = {
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
MANIFEST = sleeping_pod(POD, NAMESPACE, container=CONTAINER, security=HARDENED)
MANIFEST["spec"]["containers"][0] |= {
    # an exec session that writes to a volume: silent only because it is the probe
    "livenessProbe": {
        "exec": {"command": ["sh", "-c", f"date > {PROBE_FILE}"]},
        "periodSeconds": 1,
        "timeoutSeconds": 10,  # a loaded machine: a failed probe restarts the pod
    },
    "volumeMounts": [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/var/cache/app"},
    ],
}
MANIFEST["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]


def of(detector: Detector, rule: str) -> list[Alert]:
    return [
        a for a in detector.alerts()
        if a["rule"] == rule and a["output_fields"].get("k8s.pod.name") == POD
    ]  # fmt: skip


def wait_for(detector: Detector, rule: str, match: Callable[[Alert], bool]) -> Alert:
    return detector.wait_for(
        f"a {rule!r} alert for {POD}",
        lambda a: a["rule"] == rule and a["output_fields"].get("k8s.pod.name") == POD and match(a),
        timeout=60,
    )[0]


@pytest.fixture(scope="module")
def detector(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detector]:
    workdir = tmp_path_factory.mktemp("detect")
    with watching(cluster, workdir, NAMESPACE, MANIFEST, POD) as d:
        yield d


def fields(alert: Alert) -> dict[str, Any]:
    out: dict[str, Any] = alert["output_fields"]
    return out


def test_kubectl_cp_of_a_directory_is_one_alert_with_pod_metadata(
    cluster: Cluster, detector: Detector, tmp_path: Path
) -> None:
    source = tmp_path / "payload"
    (source / "sub").mkdir(parents=True)
    (source / "a.sh").write_text("echo a\n")
    (source / "sub" / "b.txt").write_text("b\n")
    cluster.kubectl("cp", str(source), f"{NAMESPACE}/{POD}:/tmp/payload", "-c", CONTAINER)
    alert = wait_for(detector, CP_RULE, lambda a: "/tmp/payload/a.sh" in a["output"])
    f = fields(alert)
    assert f["k8s.ns.name"] == NAMESPACE
    assert f["container.name"] == CONTAINER
    for path in ("/tmp/payload/a.sh", "/tmp/payload/sub/b.txt"):
        assert path in alert["output"]
    # still exactly one alert once everything before a later write has come out
    detector.mark(cluster, NAMESPACE, POD)
    assert len([a for a in of(detector, CP_RULE) if "/tmp/payload/" in a["output"]]) == 1


def test_exec_write_into_an_emptydir_is_the_volume_rule(
    cluster: Cluster, detector: Detector
) -> None:
    cluster.kubectl("exec", POD, "-n", NAMESPACE, "--", "sh", "-c", "echo x > /tmp/exec-note")
    alert = wait_for(detector, VOLUME_RULE, lambda a: fields(a).get("fd.name") == "/tmp/exec-note")
    assert fields(alert)["container.name"] == CONTAINER
    assert fields(alert)["k8s.ns.name"] == NAMESPACE


def test_exec_write_into_the_root_filesystem_is_the_refused_attempt_rule(
    cluster: Cluster, detector: Detector
) -> None:
    result = cluster.kubectl(
        "exec", POD, "-n", NAMESPACE, "--", "sh", "-c", "echo x > /etc/evil", check=False
    )
    assert "Read-only file system" in result.stderr
    alert = wait_for(detector, REFUSED_RULE, lambda a: fields(a).get("fd.name") == "/etc/evil")
    assert fields(alert)["k8s.pod.name"] == POD


def test_the_pods_own_exec_liveness_probe_gives_no_alert(
    cluster: Cluster, detector: Detector
) -> None:
    # the probe has run (it wrote its file) while the detector was watching
    started = time.monotonic()
    wait_until(
        "the liveness probe to run",
        lambda: (
            cluster.kubectl(
                "exec", POD, "-n", NAMESPACE, "--", "test", "-s", PROBE_FILE, check=False
            ).returncode
            == 0
        ),
        timeout=60,
    )
    time.sleep(max(0.0, 3 - (time.monotonic() - started)))  # three probe periods at least
    detector.mark(cluster, NAMESPACE, POD)  # every probe run before it has been evaluated
    noisy = [a for a in detector.alerts() if PROBE_FILE in a["output"]]
    assert not noisy, noisy
