"""Self-managed podlock replicas on the host, against the integration cluster: the chart's
ServiceAccount and RBAC, webhook configurations that call the replicas by URL (one
configuration per replica) and select one namespace, a load of pod creates, and what a client
sees of each replica's certificate. Used by tests/cluster/test_certs_self_managed.py and
tests/bench/bench_certs.py."""

from __future__ import annotations

import base64
import ipaddress
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from deploy_render import template
from k8s_cluster import Cluster, free_port, wait_until

NAMESPACE = "podlock-system"
GOVERNED = "certs-self-managed"
SECRET = "podlock-tls"
KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
# The chart's objects these replicas need; the Deployment and DaemonSet need the image instead.
APPLIED = (
    "Namespace",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
)
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"generateName": "load-"},
    "spec": {"containers": [{"name": "main", "image": "localhost/podlock-busybox:1.0"}]},
}


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def served(self) -> x509.Certificate:
        """The certificate a new TLS connection gets now."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Load:
    """Pods created (server-side dry run: admission runs in full, nothing is scheduled) in a
    loop until stopped; every answer but 201 is kept."""

    cluster: Cluster
    namespace: str = GOVERNED
    created: int = 0
    hardened: int = 0
    failures: list[str] = field(default_factory=list)
    # (time.monotonic() when the answer came, seconds the create took), one per 201
    latencies: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)

    def _run(self) -> None:
        conn = self.cluster.connection()
        body = json.dumps(POD)
        path = f"/api/v1/namespaces/{self.namespace}/pods?dryRun=All"
        while not self._stop.is_set():
            try:
                started = time.monotonic()
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = response.read()
                done = time.monotonic()
            except OSError as e:
                self.failures.append(f"connection: {e}")
                conn = self.cluster.connection()
                continue
            if response.status != 201:
                self.failures.append(f"{response.status}: {answer[:300]!r}")
                continue
            self.created += 1
            self.latencies.append((done, done - started))
            container = json.loads(answer)["spec"]["containers"][0]
            if (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
                self.hardened += 1
        conn.close()


def verifies(cert: x509.Certificate, bundle: bytes) -> bool:
    """Whether the API server, trusting `bundle`, accepts `cert` for 127.0.0.1 now."""
    verifier = (
        PolicyBuilder()
        .store(Store(x509.load_pem_x509_certificates(bundle)))
        .time(datetime.now(UTC))
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    try:
        verifier.verify(cert, [])
    except VerificationError:
        return False
    return True


def secret_data(cluster: Cluster) -> dict[str, bytes]:
    data = cluster.get("secret", SECRET, NAMESPACE)["data"]
    return {key: base64.b64decode(value) for key, value in data.items()}


def ca_bundles(cluster: Cluster) -> list[bytes]:
    return [
        base64.b64decode(hook["clientConfig"].get("caBundle", ""))
        for kind in KINDS
        for hook in cluster.get(kind, "podlock")["webhooks"]
    ]


def configurations(ports: dict[str, int]) -> list[dict[str, Any]]:
    """The chart's webhook configurations, calling the replicas by URL, this namespace only."""
    objs = [doc for doc in yaml.safe_load_all(template({})) if doc]
    configs = []
    for obj in objs:
        if obj["kind"] not in KINDS:
            continue
        port = ports[obj["kind"]]
        for hook in obj["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}
            hook["namespaceSelector"]["matchExpressions"].append(
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [GOVERNED]}
            )
        configs.append(obj)
    return configs


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    token = cluster.kubectl("create", "token", "podlock", "-n", NAMESPACE, "--duration=1h")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.ca_cert),
                },
            }
        ],
        "users": [{"name": "podlock", "user": {"token": token.stdout.strip()}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "podlock"}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(config))
    return path


def start_replica(name: str, workdir: Path, kubeconfig: Path, port: int) -> Replica:
    log = workdir / f"{name}.log"
    argv = [
        sys.executable,
        "-c",
        "import sys; from webhook.cli import main; sys.exit(main())",
        "serve",
        "--certs=self-managed",
        f"--bind=127.0.0.1:{port}",
        "--workers=1",
        f"--kubeconfig={kubeconfig}",
        f"--cert-dir={workdir / name}",
        "--host=127.0.0.1",
        "--cert-check-interval=0.5",
        "--ca-trust-delay=3",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    return Replica(name, port, proc, log)


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def run_podlock(*args: str) -> None:
    argv = [sys.executable, "-c", "import sys; from webhook.cli import main; sys.exit(main())"]
    result = subprocess.run([*argv, *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def apply_chart_rbac(cluster: Cluster) -> list[dict[str, Any]]:
    """The chart's namespace, ServiceAccount and certificate RBAC, applied; returns them."""
    chart = [doc for doc in yaml.safe_load_all(template({"namespace": {"create": True}})) if doc]
    applied = [o for o in chart if o["kind"] in APPLIED]
    cluster.apply(applied)
    return applied


def remove_chart_rbac(cluster: Cluster, applied: list[dict[str, Any]]) -> None:
    """All but the namespace, so that a later `helm install` finds no object it does not own."""
    removable = [o for o in applied if o["kind"] != "Namespace"]
    cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(removable))


def start_replicas(cluster: Cluster, workdir: Path) -> list[Replica]:
    """Two replicas started together (both find no Secret, both try to create it), the
    mutating configuration calling the first and the validating one the second."""
    ports = {kind: free_port() for kind in KINDS}
    cluster.create_namespace(GOVERNED)
    for kind in KINDS:
        cluster.kubectl("delete", kind, "podlock", "--ignore-not-found")
    cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, "--ignore-not-found")
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all(configurations(ports)))
    kubeconfig = service_account_kubeconfig(cluster, workdir / "podlock.kubeconfig")
    started = [
        start_replica(name, workdir, kubeconfig, ports[kind])
        for name, kind in (("a", KINDS[0]), ("b", KINDS[1]))
    ]
    try:
        for replica in started:
            wait_until(
                f"replica {replica.name} to listen",
                lambda r=replica: "Listening at" in r.text() or r.proc.poll() is not None,
                timeout=90,
            )
            assert replica.proc.poll() is None, replica.text()
    except BaseException:
        stop_replicas(cluster, started)
        raise
    return started


def stop_replicas(cluster: Cluster, started: list[Replica]) -> list[int]:
    """SIGTERM to each replica and what it exited with; the test's objects removed."""
    for replica in started:
        if replica.proc.poll() is None:
            replica.proc.send_signal(signal.SIGTERM)
    codes = [r.proc.wait(60) for r in started]
    for kind in KINDS:
        cluster.kubectl("delete", kind, "podlock", "--ignore-not-found")
    cluster.kubectl("delete", "namespace", GOVERNED, "--wait=false", "--ignore-not-found")
    cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, "--ignore-not-found")
    return codes
