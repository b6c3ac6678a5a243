"""`podlock serve --certs self-managed` against the real API server of the integration cluster:
two replicas started together race for the Secret and one wins; both caBundles get its CA; a
forced serving renewal, a forced CA rotation and then the Secret's deletion happen while pods
are created in a loop through both replicas, and not one create fails.

The replicas are `podlock serve` processes on the host, each with its own certificate
directory, authenticated as the chart's `podlock` ServiceAccount (a token from the TokenRequest
API) so the chart's RBAC is what they run with. The objects come from the chart itself (default
values), with two test-only changes: every webhook entry calls a replica by URL on loopback (the
mutating configuration one replica, the validating one the other) and selects only this test's
namespace, so no other test's pods pass through these replicas.
"""

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import Cluster, free_port, wait_until
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from deploy_render import CHART, helm, template

from certs.keeper import Keeper, Target, api_client
from certs.rotation import Policy

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
    created: int = 0
    hardened: int = 0
    failures: list[str] = field(default_factory=list)
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
        path = f"/api/v1/namespaces/{GOVERNED}/pods?dryRun=All"
        while not self._stop.is_set():
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = response.read()
            except OSError as e:
                self.failures.append(f"connection: {e}")
                conn = self.cluster.connection()
                continue
            if response.status != 201:
                self.failures.append(f"{response.status}: {answer[:300]!r}")
                continue
            self.created += 1
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


@pytest.fixture
def chart_rbac(cluster: Cluster) -> Iterator[None]:
    """The chart's namespace, ServiceAccount and certificate RBAC; removed afterwards (all but
    the namespace) so that a later `helm install` finds no object it does not own."""
    chart = [doc for doc in yaml.safe_load_all(template({"namespace": {"create": True}})) if doc]
    applied = [o for o in chart if o["kind"] in APPLIED]
    cluster.apply(applied)
    yield
    removable = [o for o in applied if o["kind"] != "Namespace"]
    cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(removable))


@pytest.fixture
def replicas(
    cluster: Cluster, chart_rbac: None, tmp_path: Path
) -> Iterator[tuple[Replica, Replica]]:
    ports = {kind: free_port() for kind in KINDS}
    cluster.create_namespace(GOVERNED)
    for kind in KINDS:
        cluster.kubectl("delete", kind, "podlock", "--ignore-not-found")
    cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, "--ignore-not-found")
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all(configurations(ports)))
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "podlock.kubeconfig")
    started: list[Replica] = []
    try:
        # Started together: both find no Secret, both try to create it.
        for name, kind in (("a", KINDS[0]), ("b", KINDS[1])):
            started.append(start_replica(name, tmp_path, kubeconfig, ports[kind]))
        for replica in started:
            wait_until(
                f"replica {replica.name} to listen",
                lambda r=replica: "Listening at" in r.text() or r.proc.poll() is not None,
                timeout=90,
            )
            assert replica.proc.poll() is None, replica.text()
        yield started[0], started[1]
    finally:
        for replica in started:
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGTERM)
        codes = [r.proc.wait(60) for r in started]
        for kind in KINDS:
            cluster.kubectl("delete", kind, "podlock", "--ignore-not-found")
        cluster.kubectl("delete", "namespace", GOVERNED, "--wait=false")
        cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, "--ignore-not-found")
        assert codes == [0] * len(started), "\n".join(r.text() for r in started)


def test_two_replicas_share_one_ca_and_rotate_without_a_failed_review(
    cluster: Cluster, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    logs = a.text() + b.text()
    # One replica created the Secret; the other's create conflicted and it adopted that one.
    assert logs.count("made a CA valid until") == 1, logs
    stored = secret_data(cluster)
    ca = x509.load_pem_x509_certificate(stored["ca.crt"])
    for replica in replicas:
        assert replica.served() == x509.load_pem_x509_certificate(stored["tls.crt"])
    # Every entry of both configurations trusts exactly that CA.
    assert set(ca_bundles(cluster)) == {stored["ca.crt"]}
    first_serving = a.served()

    load = Load(cluster)
    load.start()
    try:
        wait_until("the first reviews", lambda: load.created >= 5 or bool(load.failures), 60)

        run_podlock("certs", "rotate", f"--kubeconfig={cluster.kubeconfig}")
        wait_until(
            "both replicas to serve the renewed certificate",
            lambda: all(r.served() != first_serving for r in replicas),
            timeout=30,
        )
        renewed = secret_data(cluster)
        assert renewed["ca.crt"] == stored["ca.crt"]  # same CA: caBundle unchanged
        assert set(ca_bundles(cluster)) == {stored["ca.crt"]}
        created_before_ca = load.created

        run_podlock("certs", "rotate", "--ca", f"--kubeconfig={cluster.kubeconfig}")

        def from_a_new_ca() -> bool:
            signing = x509.load_pem_x509_certificate(secret_data(cluster)["ca.crt"])
            return signing != ca and all(_signed_by(r.served(), signing) for r in replicas)

        wait_until("both replicas to serve a certificate from the new CA", from_a_new_ca, 60)
        wait_until(
            "reviews after the CA rotation", lambda: load.created > created_before_ca + 5, 60
        )
        rotated = secret_data(cluster)
        new_ca = x509.load_pem_x509_certificate(rotated["ca.crt"])
        # The old CA stays trusted (a replica may still serve its pair until it reloads).
        assert x509.load_pem_x509_certificates(rotated["retired-ca.crt"]) == [ca]
        for bundle in ca_bundles(cluster):
            assert x509.load_pem_x509_certificates(bundle) == [new_ca, ca]
            for replica in replicas:
                assert verifies(replica.served(), bundle)

        # The Secret lost: the first replica to notice makes a third CA, and the CAs caBundle
        # held stay trusted, so the other replica's pair keeps working until it reads the new one.
        created_before_loss = load.created
        cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE)

        def from_a_third_ca() -> bool:
            found = cluster.kubectl("get", "secret", SECRET, "-n", NAMESPACE, check=False)
            if found.returncode != 0:
                return False
            signing = x509.load_pem_x509_certificate(secret_data(cluster)["ca.crt"])
            fresh = signing not in (ca, new_ca)
            return fresh and all(_signed_by(r.served(), signing) for r in replicas)

        wait_until("both replicas to serve a certificate from a third CA", from_a_third_ca, 60)
        wait_until(
            "reviews after the Secret was lost", lambda: load.created > created_before_loss + 5, 60
        )
    finally:
        load.stop()

    third = x509.load_pem_x509_certificate(secret_data(cluster)["ca.crt"])
    for bundle in ca_bundles(cluster):
        assert x509.load_pem_x509_certificates(bundle)[0] == third
        assert set(x509.load_pem_x509_certificates(bundle)) == {third, new_ca, ca}
    assert load.failures == [], load.failures[:5]
    assert load.created >= 20
    assert load.hardened == load.created  # every create went through podlock's mutation
    logs = a.text() + b.text()
    assert "the next CA signs from now on" in logs


def test_the_service_account_may_touch_only_its_certificates(
    cluster: Cluster, chart_rbac: None
) -> None:
    user = f"--as=system:serviceaccount:{NAMESPACE}:podlock"
    cases = [
        (["get", f"secret/{SECRET}", "-n", NAMESPACE], True),
        (["update", f"secret/{SECRET}", "-n", NAMESPACE], True),
        (["create", "secrets", "-n", NAMESPACE], True),
        (["get", "secret/other", "-n", NAMESPACE], False),
        (["list", "secrets", "-n", NAMESPACE], False),
        (["delete", f"secret/{SECRET}", "-n", NAMESPACE], False),
        (["get", f"secret/{SECRET}", "-n", "default"], False),
        (["patch", "mutatingwebhookconfigurations/podlock"], True),
        (["patch", "validatingwebhookconfigurations/podlock"], True),
        (["patch", "validatingwebhookconfigurations/other"], False),
        (["delete", "mutatingwebhookconfigurations/podlock"], False),
        (["create", "mutatingwebhookconfigurations"], False),
    ]
    answers = []
    for args, _ in cases:
        result = cluster.kubectl("auth", "can-i", *args, user, check=False)
        answers.append((args, result.stdout.strip() == "yes"))
    assert answers == [(args, allowed) for args, allowed in cases]


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def run_podlock(*args: str) -> None:
    argv = [sys.executable, "-c", "import sys; from webhook.cli import main; sys.exit(main())"]
    result = subprocess.run([*argv, *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_helm_install_and_upgrade_keep_the_ca_bundle(cluster: Cluster, tmp_path: Path) -> None:
    """The one-command install, then an upgrade: the chart does not own caBundle, so an upgrade
    (Helm 4 applies server-side) leaves the keeper's caBundle in place. The image is not in
    this cluster, so the keeper runs here, as the chart's ServiceAccount."""
    chart = str(CHART)
    install = ["install", "podlock", chart, "--namespace", NAMESPACE, "--create-namespace"]
    result = helm(*install, kubeconfig=cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    try:
        kubeconfig = service_account_kubeconfig(cluster, tmp_path / "podlock.kubeconfig")
        policy = Policy(service="podlock", namespace=NAMESPACE)
        keeper = Keeper(
            api_client(str(kubeconfig)), Target(NAMESPACE, SECRET, "podlock"), policy, str(tmp_path)
        )
        keeper.reconcile()
        stored = secret_data(cluster)
        assert set(ca_bundles(cluster)) == {stored["ca.crt"]}

        upgrade = ["upgrade", "podlock", chart, "--namespace", NAMESPACE, "--set", "replicas=3"]
        result = helm(*upgrade, kubeconfig=cluster.kubeconfig)
        assert result.returncode == 0, result.stderr
        assert cluster.get("deployment", "podlock", NAMESPACE)["spec"]["replicas"] == 3
        assert set(ca_bundles(cluster)) == {stored["ca.crt"]}
        assert not keeper.reconcile().write  # nothing to repair
    finally:
        uninstall = ["uninstall", "podlock", "--namespace", NAMESPACE, "--wait"]
        result = helm(*uninstall, kubeconfig=cluster.kubeconfig)
        cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, "--ignore-not-found")
    assert result.returncode == 0, result.stderr
    for kind in KINDS:
        assert cluster.kubectl("get", kind, "podlock", check=False).returncode != 0


def test_a_create_race_has_one_winner(cluster: Cluster, chart_rbac: None, tmp_path: Path) -> None:
    """Two keepers that both read "no Secret" before either writes: the API server lets one
    create win; the other's create conflicts, it reads again and adopts the winner's CA. (The
    barrier only orders the real calls; every call goes to the real API server.)"""
    cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, "--ignore-not-found")
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "podlock.kubeconfig")
    both_read = threading.Barrier(2, timeout=30)
    keepers = []
    for name in ("a", "b"):
        keeper = Keeper(
            api_client(str(kubeconfig)),
            Target(NAMESPACE, SECRET, "podlock"),
            Policy(service="podlock", namespace=NAMESPACE),
            str(tmp_path / name),
        )
        read = keeper._read_secret
        first = [True]

        def read_then_wait(read: Any = read, first: list[bool] = first) -> Any:
            found = read()
            if first[0]:
                first[0] = False
                both_read.wait()
            return found

        keeper._read_secret = read_then_wait  # type: ignore[method-assign]
        keepers.append(keeper)
    plans: list[Any] = [None, None]
    threads = [
        threading.Thread(target=lambda i=i: plans.__setitem__(i, keepers[i].reconcile()))
        for i in range(2)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(plans), "a keeper failed; see the log"
        stored = secret_data(cluster)
        # Both read no Secret and tried to create one; the winner's plan is the one that
        # stands, the loser's create conflicted and its second plan adopts, changing nothing.
        made = sorted("made a CA" in " ".join(p.events) for p in plans)
        assert made == [False, True]
        assert sorted(p.write for p in plans) == [False, True]
        assert [p.serving.cert for p in plans] == [stored["tls.crt"], stored["tls.crt"]]
        for name in ("a", "b"):
            assert (tmp_path / name / "tls.crt").read_bytes() == stored["tls.crt"]
    finally:
        cluster.kubectl("delete", "secret", SECRET, "-n", NAMESPACE, "--ignore-not-found")
