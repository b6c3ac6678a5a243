"""`podlock detect` on the cluster's node (this host), with pod metadata from the cluster's API
server (NODE_NAME and the admin kubeconfig): started, its JSON alerts read, stopped."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from k8s_cluster import NODE, Cluster, wait_until
from podlock_host import podlock_argv

Alert = dict[str, Any]


class Detector:
    def __init__(self, workdir: Path, cluster: Cluster, *extra: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.alerts_file = workdir / "alerts.jsonl"
        self.stderr = workdir / "detector.log"
        pidfile = workdir / "pid"
        env = {**os.environ, "NODE_NAME": NODE, "KUBECONFIG": str(cluster.kubeconfig)}
        with self.alerts_file.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                podlock_argv("detect", "--json", "--pidfile", str(pidfile), *extra),
                stdout=out,
                stderr=err,
                env=env,
            )

        def attached() -> bool:
            assert self.proc.poll() is None, self.stderr.read_text()
            return pidfile.exists()

        wait_until("podlock detect to attach", attached, timeout=60)

    def alerts(self) -> list[Alert]:
        lines = self.alerts_file.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_for(
        self, what: str, match: Callable[[Alert], bool], count: int = 1, timeout: float = 60
    ) -> list[Alert]:
        """The alerts `match` accepts, once there are `count` of them."""
        found: list[Alert] = []

        def seen() -> bool:
            assert self.proc.poll() is None, self.stderr.read_text()
            found[:] = [a for a in self.alerts() if match(a)]
            return len(found) >= count

        try:
            wait_until(what, seen, timeout=timeout)
        except Exception:
            rules = sorted({a["rule"] for a in self.alerts()})
            raise AssertionError(f"{what}: not seen; alerts so far: {rules}") from None
        return found

    def mark(self, cluster: Cluster, namespace: str, pod: str) -> Alert:
        """A write by an exec session in `pod` (to a path of its own in /tmp), and its alert.
        Alerts come out in the order of their events: the alerts of everything that happened
        before are out by then."""
        path = f"/tmp/.podlock-mark-{secrets.token_hex(6)}"
        cluster.kubectl("exec", pod, "-n", namespace, "--", "sh", "-c", f": > {path}")
        (alert,) = self.wait_for(
            f"the alert of the write to {path}", lambda a: a["output_fields"].get("fd.name") == path
        )
        return alert

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def watching(
    cluster: Cluster, workdir: Path, namespace: str, objects: Any, pod: str, *extra: str
) -> Iterator[Detector]:
    """A namespace with these objects, `pod` running, and a detector on the node watching it;
    the detector stopped and the namespace deleted afterwards."""
    cluster.create_namespace(namespace)
    cluster.apply(objects)
    detector = None
    try:
        cluster.wait_pod_running(pod, namespace)
        detector = Detector(workdir, cluster, *extra)
        # its pod watch has listed the pod before anyone execs (a loaded machine may take
        # more than a second): an exec session's write then comes out with the pod's name
        for _ in range(10):  # fewer than the rate limit's burst of alerts of one rule
            if detector.mark(cluster, namespace, pod)["output_fields"].get("k8s.pod.name") == pod:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"podlock detect never learned the pod {namespace}/{pod}")
        yield detector
    finally:
        if detector is not None:
            detector.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
