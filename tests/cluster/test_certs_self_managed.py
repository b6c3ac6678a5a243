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

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from certs_host import (
    KINDS,
    NAMESPACE,
    SECRET,
    Load,
    Replica,
    apply_chart_rbac,
    ca_bundles,
    remove_chart_rbac,
    run_podlock,
    secret_data,
    service_account_kubeconfig,
    signed_by,
    start_replicas,
    stop_replicas,
    verifies,
)
from cryptography import x509
from deploy_render import CHART, helm, template
from k8s_cluster import Cluster, wait_until

from certs.keeper import Keeper, Target, api_client
from certs.rotation import Policy


@pytest.fixture
def chart_rbac(cluster: Cluster) -> Iterator[None]:
    applied = apply_chart_rbac(cluster)
    yield
    remove_chart_rbac(cluster, applied)


@pytest.fixture
def replicas(
    cluster: Cluster, chart_rbac: None, tmp_path: Path
) -> Iterator[tuple[Replica, Replica]]:
    started: list[Replica] = []
    try:
        started = start_replicas(cluster, tmp_path)
        yield started[0], started[1]
    finally:
        codes = stop_replicas(cluster, started)
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
        wait_until("the first reviews", lambda: load.created >= 5 or bool(load.failures), 120)

        run_podlock("certs", "rotate", f"--kubeconfig={cluster.kubeconfig}")
        wait_until(
            "both replicas to serve the renewed certificate",
            lambda: all(r.served() != first_serving for r in replicas),
            timeout=120,
        )
        renewed = secret_data(cluster)
        assert renewed["ca.crt"] == stored["ca.crt"]  # same CA: caBundle unchanged
        assert set(ca_bundles(cluster)) == {stored["ca.crt"]}
        created_before_ca = load.created

        run_podlock("certs", "rotate", "--ca", f"--kubeconfig={cluster.kubeconfig}")

        def from_a_new_ca() -> bool:
            signing = x509.load_pem_x509_certificate(secret_data(cluster)["ca.crt"])
            return signing != ca and all(signed_by(r.served(), signing) for r in replicas)

        wait_until("both replicas to serve a certificate from the new CA", from_a_new_ca, 120)
        wait_until(
            "reviews after the CA rotation", lambda: load.created > created_before_ca + 5, 120
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
            return fresh and all(signed_by(r.served(), signing) for r in replicas)

        wait_until("both replicas to serve a certificate from a third CA", from_a_third_ca, 120)
        wait_until(
            "reviews after the Secret was lost", lambda: load.created > created_before_loss + 5, 120
        )
        # twenty in all, however fast the steps went (a loaded machine creates fewer a second)
        wait_until("twenty reviews", lambda: load.created >= 20 or bool(load.failures), 120)
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


def test_the_real_api_server_accepts_the_chart(cluster: Cluster) -> None:
    """Every object of the default install and of the detector-less one, applied as a server-side
    dry run (the API server's own validation and admission, nothing stored); and the webhook's
    pod meets the Pod Security `restricted` profile, the detector's does not."""
    cluster.create_namespace(NAMESPACE)
    for values in ({}, {"detector": {"enabled": False}}):
        objs = [doc for doc in yaml.safe_load_all(template(values)) if doc]
        cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(objs))
    restricted = "podlock-psa-restricted"
    cluster.create_namespace(restricted, {"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        objs = [doc for doc in yaml.safe_load_all(template({})) if doc]
        verdicts = {}
        for kind, name in (("Deployment", "podlock"), ("DaemonSet", "podlock-detector")):
            (workload,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"psa-{name}", "namespace": restricted},
                # PSA judges the pod, not its ServiceAccount (which this namespace lacks).
                "spec": {**workload["spec"]["template"]["spec"], "serviceAccountName": "default"},
            }
            result = cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
            )
            verdicts[kind] = (result.returncode == 0, result.stderr)
        assert verdicts["Deployment"][0], verdicts["Deployment"][1]
        assert not verdicts["DaemonSet"][0]
        assert "violates PodSecurity" in verdicts["DaemonSet"][1]
    finally:
        cluster.kubectl("delete", "namespace", restricted, "--wait=false")
