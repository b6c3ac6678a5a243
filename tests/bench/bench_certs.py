"""What a self-managed certificate rotation costs the pods being created meanwhile.

The integration cluster (tests/cluster) and two `podlock serve --certs self-managed` replicas on
the host (tests/cluster/certs_host.py: the chart's RBAC, the mutating configuration calling one
replica and the validating one the other, checks every 0.5 s, a 3 s CA trust delay). One client
creates pods (server-side dry run: admission in full, nothing stored) back to back, on one
keep-alive connection, through three windows of the same run:

- steady: nothing changes;
- serving renewal: from `podlock certs rotate` until both replicas serve the new pair, plus 10 s;
- CA rotation: from `podlock certs rotate --ca` until both replicas serve a pair from the new
  CA (the next CA added to every caBundle, trusted for the delay, then signing), plus 10 s.

A changed caBundle makes the API server build new clients, so the CA rotation costs new TLS
handshakes; the serving renewal changes no caBundle. Latency is the client's, request sent to
response read. Writes tests/bench/results/certs.md. Needs root and `make cluster-deps`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests" / "support"), str(ROOT)]

from certs_host import (  # noqa: E402
    Load,
    apply_chart_rbac,
    run_podlock,
    secret_data,
    signed_by,
    start_replicas,
    stop_replicas,
)
from cryptography import x509  # noqa: E402
from k8s_cluster import Cluster, wait_until  # noqa: E402
from machine import cpu_model  # noqa: E402

RESULTS = HERE / "results" / "certs.md"
STEADY_CREATES = 300
AFTER = 10.0  # seconds of creates kept after a rotation completes


def window(load: Load, start: float, end: float) -> list[float]:
    return [seconds * 1000 for done, seconds in load.latencies if start <= done < end]


def rotate_and_wait(what: str, done: Callable[[], bool], *args: str) -> tuple[float, float]:
    """Ask for a rotation, wait for `done`: when the command started (monotonic), and seconds
    from the request being recorded (the command's return) until `done`."""
    started = time.monotonic()
    run_podlock("certs", "rotate", *args)
    recorded = time.monotonic()
    wait_until(what, done, timeout=120, interval=0.1)
    return started, time.monotonic() - recorded


def main() -> int:
    if os.geteuid() != 0:
        print("bench_certs: needs root (containerd, kubelet)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="podlock-bench-certs-"))
    load_before = os.getloadavg()[0]
    cluster = Cluster.start(work / "cluster")
    kubeconfig = f"--kubeconfig={cluster.kubeconfig}"
    replicas = []
    load = Load(cluster)
    try:
        apply_chart_rbac(cluster)
        replicas = start_replicas(cluster, work)
        load.start()
        wait_until("the warm-up", lambda: load.created >= 50, 120)
        steady_start = time.monotonic()
        wait_until("the steady window", lambda: load.created >= 50 + STEADY_CREATES, 300)
        steady = window(load, steady_start, time.monotonic())

        first = replicas[0].served()
        asked, serving_took = rotate_and_wait(
            "both replicas serving the renewed pair",
            lambda: all(r.served() != first for r in replicas),
            kubeconfig,
        )
        time.sleep(AFTER)
        renewal = window(load, asked, time.monotonic())

        old_ca = x509.load_pem_x509_certificate(secret_data(cluster)["ca.crt"])

        def new_ca_serving() -> bool:
            signing = x509.load_pem_x509_certificate(secret_data(cluster)["ca.crt"])
            return signing != old_ca and all(signed_by(r.served(), signing) for r in replicas)

        asked, ca_took = rotate_and_wait(
            "both replicas serving a pair from the new CA", new_ca_serving, "--ca", kubeconfig
        )
        time.sleep(AFTER)
        rotation = window(load, asked, time.monotonic())
    finally:
        load.stop()
        stop_replicas(cluster, replicas)
        cluster.stop()
    rows = [
        ("steady", steady, None),
        ("serving renewal", renewal, serving_took),
        ("CA rotation", rotation, ca_took),
    ]
    report = render(rows, load.failures, (load_before, os.getloadavg()[0]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print(report)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if load.failures else 0


def render(
    rows: list[tuple[str, list[float], float | None]],
    failures: list[str],
    loads: tuple[float, float],
) -> str:
    def p(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]

    steady_p99 = p(rows[0][1], 99)
    lines = [
        "## Certificates: pod creates while self-managed certificates rotate",
        "",
        f"- {cpu_model()}, {os.cpu_count()} CPUs; load average {loads[0]:.1f} before, "
        f"{loads[1]:.1f} after",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; the integration cluster (tests/cluster), two "
        "self-managed replicas on the host (tests/cluster/certs_host.py), one client creating "
        "pods back to back (server-side dry run) through both",
        f"- failed creates over the whole run: **{len(failures)}**",
        "",
        "| window | creates | p50 ms | p99 ms | max ms | p99 / steady p99 | rotation done in s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values, took in rows:
        done = f"{took:.1f}" if took is not None else "—"
        lines.append(
            f"| {name} | {len(values)} | {statistics.median(values):.1f} | {p(values, 99):.1f} "
            f"| {max(values):.1f} | {p(values, 99) / steady_p99:.2f} | {done} |"
        )
    lines += [
        "",
        "A rotation window runs from the start of `podlock certs rotate [--ca]` (a Python "
        "process: its start-up competes for the CPUs too) until both replicas serve the new pair, "
        f"plus {AFTER:.0f} s; *done in* counts from the request being recorded on the Secret. "
        "The CA rotation includes the 3 s trust "
        "delay this run uses (300 s by default), and its caBundle changes make the API server "
        "open new TLS connections to both replicas.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
