"""Pod creates through a real kube-apiserver with and without podlock's webhooks, in one run.

The integration cluster (tests/cluster) and `podlock serve` on the host, registered through the
webhook configurations rendered from deploy/. Each round creates 500 pods from 16 concurrent
clients, each on its own keep-alive HTTPS connection as the cluster admin; rounds alternate
between webhooks registered (every create then waits on /mutate and /validate) and not, so both
arms see the same machine load. The pods carry a scheduling gate: they are stored but never
scheduled, so the kubelet's work does not disturb the timing. Latency is the client's, request
sent to response read. Writes tests/bench/results/cluster.md. Needs root and `make
cluster-deps`.

    PODLOCK_BENCH_CLUSTER_PAIRS (default 3)  rounds with and without podlock
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "cluster"), str(TESTS / "support")]

from k8s_cluster import Cluster, call, wait_until  # noqa: E402
from machine import cpu_model  # noqa: E402
from podlock_host import (  # noqa: E402
    new_ca,
    register,
    render_host_overlay,
    start_server,
    unregister,
    wait_for_webhooks,
)

RESULTS = Path(__file__).resolve().parent / "results" / "cluster.md"
PODS = 500
CLIENTS = 16
NAMESPACE = "bench"
CONTROL_PLANE = ("kube-apiserver", "etcd")


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "schedulingGates": [{"name": "podlock.io/bench"}],
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "app",
                    "image": "localhost/nginx:1.27",
                    "imagePullPolicy": "Never",
                }
            ],
        },
    }


def round_of_creates(cluster: Cluster, tag: str) -> tuple[list[float], list[str]]:
    """PODS creates from CLIENTS threads: (latencies in ms, failure messages)."""
    latencies: list[float] = []
    failures: list[str] = []
    names = iter(range(PODS))
    lock = threading.Lock()

    def client() -> None:
        conn = cluster.connection()
        while True:
            with lock:
                n = next(names, None)
            if n is None:
                break
            body = pod(f"{tag}-{n}")
            start = time.perf_counter()
            try:
                status, answer = call(conn, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body)
            except OSError as err:
                status, answer = 0, {"message": str(err)}
                conn.close()
                conn = cluster.connection()
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                if status == 201:
                    latencies.append(elapsed)
                else:
                    failures.append(f"{status}: {answer.get('message', '')}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # one deletecollection: gated pods were never scheduled, so they go at once
    conn = cluster.connection()
    status, answer = call(conn, "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods")
    conn.close()
    assert status == 200, answer

    def emptied() -> bool:
        listing = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "name").stdout
        return not listing.strip()

    wait_until(f"the pods of {NAMESPACE} to be deleted", emptied, timeout=300, interval=1)
    return latencies, failures


def wait_unregistered(cluster: Cluster) -> None:
    """Until the API server stops calling podlock (its webhook informer lags a delete)."""
    probe = pod("probe-off")
    probe["spec"]["containers"][0]["securityContext"] = {"privileged": True}

    def silent() -> bool:
        conn = cluster.connection()
        try:
            status, _ = call(conn, "POST", f"/api/v1/namespaces/{NAMESPACE}/pods?dryRun=All", probe)
        finally:
            conn.close()
        return bool(status == 201)

    wait_until("podlock's webhooks to be gone", silent, timeout=30, interval=0.5)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and all their threads so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def family(pid: int) -> list[int]:
    """A process and its children (gunicorn's master and workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    if os.geteuid() != 0:
        print("bench_cluster: needs root (containerd, kubelet)", file=sys.stderr)
        return 2
    pairs = int(os.environ.get("PODLOCK_BENCH_CLUSTER_PAIRS", "3"))
    work = Path(tempfile.mkdtemp(prefix="podlock-bench-cluster-"))
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    cluster = Cluster.start(work / "cluster")
    cluster_seconds = time.monotonic() - started
    ca = new_ca()
    server = start_server(work / "serve", ca)
    arms: dict[str, list[float]] = {"without podlock": [], "with podlock": []}
    failed: dict[str, list[str]] = {"without podlock": [], "with podlock": []}
    # CPU seconds per arm: the control plane (API server + etcd) and podlock's processes
    control: dict[str, float] = {"without podlock": 0.0, "with podlock": 0.0}
    webhook: dict[str, float] = {"without podlock": 0.0, "with podlock": 0.0}
    try:
        rendered = render_host_overlay(work, server.url, ca.cert)
        cluster.create_namespace(NAMESPACE)
        round_of_creates(cluster, "warmup")  # connections, caches, etcd's first compaction
        for n in range(pairs):
            # the order alternates, so neither arm always runs first after a deletion
            order = ("with podlock", "without podlock")
            for arm in order if n % 2 == 0 else order[::-1]:
                if arm == "with podlock":
                    register(cluster, rendered)
                    wait_for_webhooks(cluster, NAMESPACE)
                else:
                    unregister(cluster)
                    wait_unregistered(cluster)
                planes = [c.proc.pid for c in cluster.components if c.name in CONTROL_PLANE]
                assert server.proc is not None
                podlock_pids = family(server.proc.pid)
                before = cpu_seconds(planes), cpu_seconds(podlock_pids)
                latencies, failures = round_of_creates(cluster, f"r{n}")
                control[arm] += cpu_seconds(planes) - before[0]
                webhook[arm] += cpu_seconds(podlock_pids) - before[1]
                arms[arm] += latencies
                failed[arm] += failures
                print(
                    f"round {n} {arm}: p50 {statistics.median(latencies):.2f} ms, "
                    f"{len(failures)} failed",
                    flush=True,
                )
    finally:
        server.stop()
        cluster.stop()
    loads = (load_before, os.getloadavg()[0])
    cpu = {arm: (control[arm], webhook[arm]) for arm in arms}
    report = render(arms, failed, cpu, pairs, cluster_seconds, time.monotonic() - started, loads)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print(report)
    print(f"wrote {RESULTS}")
    if any(failed.values()):
        print(f"component logs kept in {work / 'cluster' / 'logs'}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def render(
    arms: dict[str, list[float]],
    failed: dict[str, list[str]],
    cpu: dict[str, tuple[float, float]],
    pairs: int,
    cluster_seconds: float,
    total_seconds: float,
    loads: tuple[float, float],
) -> str:
    off, on = arms["without podlock"], arms["with podlock"]
    lines = [
        "## Cluster: pod creates through kube-apiserver, with and without podlock",
        "",
        f"- nproc {os.cpu_count()}, CPU {cpu_model()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- single-node cluster from tests/cluster (Kubernetes v1.36.3, etcd v3.6.16), started "
        f"in {cluster_seconds:.0f} s; `podlock serve` on the host (2 workers), registered "
        "from deploy/ with clientConfig.url",
        f"- {pairs} pair(s) of rounds, each round {PODS} pod creates from {CLIENTS} concurrent "
        "clients (keep-alive HTTPS as cluster admin); arms alternate; pods are scheduling-gated "
        "(stored, never run); a warm-up round first, not counted",
        f"- total bench time {total_seconds / 60:.1f} min; 1-min load average {loads[0]:.1f} at "
        f"start, {loads[1]:.1f} at end (a shared machine: compare the arms of one run, not runs)",
        "",
        "- CPU ms/create: CPU time (user + system) spent during the rounds by the API server "
        "and etcd, and by podlock serve's master and workers, divided by the creates sent; "
        "unlike latency it does not count the time other jobs on the machine hold the CPU",
        "",
        "| arm | creates | p50 ms | p90 ms | p99 ms | failed | API server + etcd CPU ms/create "
        "| podlock CPU ms/create |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, values in arms.items():
        sent = len(values) + len(failed[arm])
        plane, hook = (1000 * seconds / sent for seconds in cpu[arm])
        lines.append(
            f"| {arm} | {len(values)} | {percentile(values, 0.5):.2f} | "
            f"{percentile(values, 0.9):.2f} | {percentile(values, 0.99):.2f} | "
            f"{len(failed[arm])} | {plane:.2f} | {hook:.2f} |"
        )
    per_create = {
        arm: tuple(1000 * x / max(1, len(arms[arm]) + len(failed[arm])) for x in cpu[arm])
        for arm in arms
    }
    plane_added = per_create["with podlock"][0] - per_create["without podlock"][0]
    hook_added = per_create["with podlock"][1] - per_create["without podlock"][1]
    p50 = percentile(on, 0.5) - percentile(off, 0.5)
    p99 = percentile(on, 0.99) - percentile(off, 0.99)
    lines += [
        "",
        f"Added by podlock per create: **{p50:.2f} ms at p50, {p99:.2f} ms at p99** "
        "(target: at most 3 ms and 10 ms); failed creates: "
        f"{sum(len(f) for f in failed.values())}. CPU added per create: "
        f"{plane_added + hook_added:.2f} ms ({plane_added:.2f} ms in the API server and etcd, "
        f"{hook_added:.2f} ms in podlock).",
        "",
        f"{CLIENTS} clients keep {os.cpu_count()} cores busy (the API server and etcd alone use "
        f"{per_create['without podlock'][0]:.1f} ms of CPU per create), so each create waits "
        "behind the others: in this closed loop the latency podlock adds is about clients x "
        f"added CPU / cores = {CLIENTS * (plane_added + hook_added) / (os.cpu_count() or 1):.0f} "
        "ms, queueing rather than podlock's own time; the CPU column is the figure to compare "
        "across machines.",
        "",
    ]
    for arm, failures in failed.items():
        if failures:
            lines.append(f"First failures {arm}: {failures[:3]}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
