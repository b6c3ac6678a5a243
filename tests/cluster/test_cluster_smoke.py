"""The cluster itself: the versions built by make cluster-deps, a Ready node, and a pod that
runs on it from a locally imported image, reachable with kubectl exec."""

from __future__ import annotations

from k8s_cluster import NODE, Cluster, wait_until

POD = """
apiVersion: v1
kind: Pod
metadata: {name: smoke, namespace: default}
spec:
  automountServiceAccountToken: false
  containers:
    - name: main
      image: localhost/podlock-busybox:1.0
      imagePullPolicy: Never
      command: [sh, -c, "echo started; exec sleep 3600"]
"""


def test_server_version_is_the_pinned_release(cluster: Cluster) -> None:
    version = cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.36.3"' in version


def test_node_is_ready_with_its_own_cgroup_root(cluster: Cluster) -> None:
    node = cluster.get("node", NODE)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_a_pod_runs_and_kubectl_exec_reaches_it(cluster: Cluster) -> None:
    cluster.apply(POD)
    try:
        pod = cluster.wait_pod_running("smoke", "default")
        assert pod["spec"]["nodeName"] == NODE
        out = cluster.kubectl("exec", "smoke", "--", "id", "-u").stdout
        assert out.strip() == "1000"  # the image's user
        logs = cluster.kubectl("logs", "smoke").stdout
        assert logs.strip() == "started"
        with open(f"/proc/{_pid_of(cluster, pod)}/cgroup") as f:
            assert cluster.cgroup_root + "/kubepods/" in f.read()
    finally:
        cluster.kubectl("delete", "pod", "smoke", "--wait=false", "--grace-period=0", "--force")


def _pid_of(cluster: Cluster, pod: dict[str, object]) -> int:
    statuses = pod["status"]["containerStatuses"]  # type: ignore[index]
    cid = statuses[0]["containerID"].split("://")[1]
    info = cluster.ctr("tasks", "list").stdout.splitlines()
    for line in info[1:]:
        task, pid, *_ = line.split()
        if task == cid:
            return int(pid)
    raise AssertionError(f"no task {cid} in containerd")


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(cluster: Cluster) -> None:
    """What in-cluster clients (podlock's certificate keeper, the detector) rely on: the Service
    IP leads to the API server, which answers a plain-HTTP request as Go's TLS servers do."""
    probe = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 $KUBERNETES_SERVICE_HOST 443'
    pod = POD.replace("name: smoke", "name: smoke-api").replace(
        'command: [sh, -c, "echo started; exec sleep 3600"]',
        f"command: [sh, -c, '{probe}; exec sleep 3600']",
    )
    cluster.apply(pod)
    try:
        cluster.wait_pod_running("smoke-api", "default")
        wait_until(
            "the API server's answer to the pod",
            lambda: (
                "Client sent an HTTP request to an HTTPS server"
                in cluster.kubectl("logs", "smoke-api").stdout
            ),
            timeout=30,
        )
    finally:
        cluster.kubectl("delete", "pod", "smoke-api", "--wait=false", "--grace-period=0", "--force")
