"""podlock's admission webhooks called by a real kube-apiserver (issue 10, scenarios 1-10).

podlock serves on the host over TLS; the webhook configurations are deploy/ rendered with an
overlay that points them at it (podlock_host.py). Every request goes through real kubectl.
Every refusal is checked to come from podlock: the webhook's name and podlock's rule id are in
kubectl's error, never just a non-zero exit (the API server runs with --allow-privileged=true,
so it would admit these pods itself).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cluster_images
import jsonpatch
import pytest
import yaml
from cluster_pods import sleeping_pod
from cryptography import x509
from k8s_cluster import Cluster, call, wait_until
from podlock_host import (
    Server,
    new_ca,
    podlock_argv,
    register,
    render_host_overlay,
    start_server,
    unregister,
    wait_for_webhooks,
)

from certs.pki import PemPair

pytestmark = pytest.mark.root
Completed = subprocess.CompletedProcess[str]

ENFORCE, WARN, AUDIT = "pl-enforce", "pl-warn", "pl-audit"
OPT_OUT = "pl-opt-out"  # an enforce namespace whose pods may carry podlock.io/exempt
BUSYBOX, NGINX = cluster_images.BUSYBOX.ref, cluster_images.NGINX.ref
RULES = (
    "privileged-container",
    "root-user",
    "writable-root-filesystem",
    "exec-into-hardened-pod",
    # the strict profile's (issue 11)
    "writable-mount",
    "run-as-non-root",
    "privilege-escalation",
    "capabilities",
    "security-profile",
    "host-access",
    "ephemeral-container-as-exec",
    "late-exemption",
)
# What lint reports as unset where admission sets it instead of refusing; beside
# `privileged: true` --fix cannot set allowPrivilegeEscalation (the API server refuses it there)
HARDENED_WHEN_UNSET = {"privilege-escalation", "run-as-non-root", "writable-root-filesystem"}


@dataclass
class Admission:
    server: Server
    ca: PemPair
    workdir: Path
    rendered: list[dict[str, Any]]


@pytest.fixture(scope="module")
def podlock(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admission]:
    work = tmp_path_factory.mktemp("podlock")
    ca = new_ca()
    server = start_server(work / "serve", ca, {"podOptOutNamespaces": [OPT_OUT]})
    try:
        rendered = render_host_overlay(work, server.url, ca.cert)
        register(cluster, rendered)
        cluster.create_namespace(ENFORCE)
        cluster.create_namespace(OPT_OUT)
        cluster.create_namespace(WARN, {"podlock.io/mode": "warn"})
        cluster.create_namespace(AUDIT, {"podlock.io/mode": "audit"})
        wait_for_webhooks(cluster, ENFORCE)
        yield Admission(server, ca, work, rendered)
    finally:
        unregister(cluster)
        for ns in (ENFORCE, WARN, AUDIT, OPT_OUT):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
        server.stop()


def pod(name: str, namespace: str = ENFORCE, **fields: Any) -> dict[str, Any]:
    """A pod compliant with podlock's policy unless told otherwise (cluster_pods)."""
    return sleeping_pod(name, namespace, **fields)


def deployment(name: str, template_pod: dict[str, Any], namespace: str = ENFORCE) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": labels}, "spec": template_pod["spec"]},
        },
    }


def create(cluster: Cluster, obj: dict[str, Any], *args: str) -> Completed:
    """`kubectl create -f -`, unchecked: the caller looks at the exit code and stderr."""
    return cluster.kubectl("create", "-f", "-", *args, input=yaml.safe_dump(obj), check=False)


def delete_pod(cluster: Cluster, name: str, namespace: str = ENFORCE) -> None:
    cluster.kubectl(
        "delete", "pod", name, "-n", namespace, "--force", "--grace-period=0",
        "--wait=false", "--ignore-not-found",
    )  # fmt: skip


def assert_refused_by_podlock(stderr: str, webhook: str, *expected: str) -> None:
    assert f'admission webhook "{webhook}" denied the request' in stderr, stderr
    assert "podlock denied" in stderr, stderr
    for text in expected:
        assert text in stderr, f"{text!r} not in {stderr}"


def rule_ids(text: str) -> set[str]:
    return {rule for rule in RULES if rule in text}


def mounts(container: dict[str, Any]) -> set[str]:
    return {m["mountPath"] for m in container.get("volumeMounts") or []}


# --- 1. the nginx pod is hardened and runs read-only ---------------------------------------


def test_nginx_pod_is_hardened_runs_and_its_root_filesystem_is_read_only(
    cluster: Cluster, podlock: Admission
) -> None:
    nginx = pod("nginx", image=NGINX, container="nginx", command=())
    result = create(cluster, nginx)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: podlock")]
    assert warnings, f"kubectl printed no podlock warning: {result.stderr}"
    try:
        running = cluster.wait_pod_running("nginx", ENFORCE)
        spec = running["spec"]
        container = spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"/tmp", "/var/cache/nginx", "/var/run"} <= mounts(container)
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        by_path = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        for path in ("/tmp", "/var/cache/nginx", "/var/run"):
            assert by_path[path] in empty_dirs, f"{path} is not an emptyDir"
        write = cluster.kubectl(
            "exec", "nginx", "-n", ENFORCE, "--", "touch", "/etc/x", check=False
        )
        assert write.returncode != 0
        assert "Read-only file system" in write.stderr
        # the app still works: the writable paths it needs are there
        ok = cluster.kubectl("exec", "nginx", "-n", ENFORCE, "--", "touch", "/var/cache/nginx/x")
        assert ok.returncode == 0
        page = cluster.kubectl("exec", "nginx", "-n", ENFORCE, "--", "wget", "-qO-",
                               "http://127.0.0.1:8080/")  # fmt: skip
        assert page.stdout.strip() == "podlock"
    finally:
        delete_pod(cluster, "nginx")


# --- 2. what podlock refuses ---------------------------------------------------------------


REFUSED = [
    pytest.param(
        pod("priv", container="shell", security={"privileged": True}),
        "privileged-container", "shell", id="privileged",
    ),
    pytest.param(
        pod("root", container="app", security={"runAsUser": 0}),
        "root-user", "app", id="runAsUser-0",
    ),
    pytest.param(
        pod("podroot", container="web", pod_security={"runAsUser": 0}),
        "root-user", "web", id="pod-runAsUser-0",
    ),
    pytest.param(
        pod("rw", container="writer", security={"readOnlyRootFilesystem": False}),
        "writable-root-filesystem", "writer", id="readOnlyRootFilesystem-false",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("manifest", "rule", "container"), REFUSED)
def test_podlock_refuses(
    cluster: Cluster, podlock: Admission, manifest: dict[str, Any], rule: str, container: str
) -> None:
    result = create(cluster, manifest)
    assert result.returncode != 0
    name = manifest["metadata"]["name"]
    assert_refused_by_podlock(
        result.stderr, "enforce.validate.podlock.io", f"Pod {ENFORCE}/{name}", container, rule
    )
    gone = cluster.kubectl("get", "pod", name, "-n", ENFORCE, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


# --- 3. workloads ----------------------------------------------------------------------------


def test_deployment_breaking_a_rule_is_refused_at_apply(
    cluster: Cluster, podlock: Admission
) -> None:
    bad = deployment("bad", pod("x", container="worker", security={"privileged": True}))
    result = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert result.returncode != 0
    assert_refused_by_podlock(
        result.stderr, "enforce.validate.podlock.io", "Deployment", "worker",
        "privileged-container",
    )  # fmt: skip
    assert cluster.kubectl("get", "deployment", "bad", "-n", ENFORCE, check=False).returncode != 0


def test_compliant_deployment_pods_are_hardened_and_run(
    cluster: Cluster, podlock: Admission
) -> None:
    good = deployment("good", pod("x", container="worker"))
    cluster.apply(good)
    try:

        def created() -> bool:
            out = cluster.kubectl("get", "pods", "-n", ENFORCE, "-l", "app=good", "-o", "name")
            return bool(out.stdout.strip())

        wait_until("the controller manager to create the pod", created, timeout=60)
        name = cluster.kubectl(
            "get",
            "pods",
            "-n",
            ENFORCE,
            "-l",
            "app=good",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ).stdout
        running = cluster.wait_pod_running(name, ENFORCE)
        container = running["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert "/tmp" in mounts(container)
        # the Deployment's own template is not changed: podlock hardens pods, not templates
        template = cluster.get("deployment", "good", ENFORCE)["spec"]["template"]["spec"]
        assert "readOnlyRootFilesystem" not in json.dumps(template)
    finally:
        cluster.kubectl("delete", "deployment", "good", "-n", ENFORCE, "--wait=false")


# --- 4. kubectl debug ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(cluster: Cluster, podlock: Admission) -> Iterator[str]:
    """A hardened, running pod to debug and exec into."""
    cluster.apply(pod("target"))
    cluster.wait_pod_running("target", ENFORCE)
    yield "target"
    delete_pod(cluster, "target")


def debug(
    cluster: Cluster, pod_name: str, profile: str, container: str, namespace: str = ENFORCE
) -> Completed:
    return cluster.kubectl(
        "debug", pod_name, "-n", namespace, f"--profile={profile}", f"--container={container}",
        f"--image={BUSYBOX}", "--image-pull-policy=Never", "--", "sleep", "3600",
        check=False,
    )  # fmt: skip


def test_kubectl_debug_sysadmin_is_refused(cluster: Cluster, target: str) -> None:
    result = debug(cluster, target, "sysadmin", "dbg-admin")
    assert result.returncode != 0
    assert_refused_by_podlock(
        result.stderr, "enforce.validate.podlock.io", "dbg-admin", "privileged-container"
    )
    ephemeral = cluster.get("pod", target, ENFORCE)["spec"].get("ephemeralContainers") or []
    assert "dbg-admin" not in {c["name"] for c in ephemeral}


def test_kubectl_debug_general_is_refused_for_its_ptrace_capability(
    cluster: Cluster, target: str
) -> None:
    """The general profile adds SYS_PTRACE: a debugger that can rewrite the app's memory, which
    the strict profile refuses (issue 11; under `profile: core` it would be hardened instead)."""
    result = debug(cluster, target, "general", "dbg-general")
    assert result.returncode != 0
    assert_refused_by_podlock(
        result.stderr, "enforce.validate.podlock.io", "dbg-general", "capabilities"
    )
    assert "SYS_PTRACE" in result.stderr


def test_kubectl_debug_baseline_gets_a_read_only_ephemeral_container(
    cluster: Cluster, target: str
) -> None:
    result = debug(cluster, target, "baseline", "dbg")
    assert result.returncode == 0, result.stderr
    ephemeral = {
        c["name"]: c for c in cluster.get("pod", target, ENFORCE)["spec"]["ephemeralContainers"]
    }
    assert ephemeral["dbg"]["securityContext"]["readOnlyRootFilesystem"] is True

    def running() -> bool:
        statuses = cluster.get("pod", target, ENFORCE)["status"].get("ephemeralContainerStatuses")
        return any(s["name"] == "dbg" and "running" in s["state"] for s in statuses or [])

    wait_until("the ephemeral container to run", running, timeout=60)
    write = cluster.kubectl("exec", target, "-n", ENFORCE, "-c", "dbg", "--", "touch", "/x",
                            check=False)  # fmt: skip
    assert "Read-only file system" in write.stderr


# --- 5. server-side dry run = podlock lint = podlock review ----------------------------------


DRY_RUN_CASES = {
    "compliant-pod": pod("dry-ok"),
    "nginx-pod": pod("dry-nginx", image=NGINX, command=()),
    "privileged-pod": pod("dry-priv", security={"privileged": True}),
    "root-pod": pod("dry-root", pod_security={"runAsUser": 0}),
    "writable-pod": pod("dry-rw", security={"readOnlyRootFilesystem": False}),
    "bad-deployment": deployment("dry-bad", pod("x", security={"privileged": True})),
    "good-deployment": deployment("dry-good", pod("x")),
}


def _review(obj: dict[str, Any], endpoint: str, workdir: Path) -> dict[str, Any]:
    """`podlock review` of a CREATE of `obj`, like the API server sends it."""
    group, _, version = obj["apiVersion"].rpartition("/")
    resource = obj["kind"].lower() + "s"
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "dry-run",
            "kind": {"group": group, "version": version, "kind": obj["kind"]},
            "resource": {"group": group, "version": version, "resource": resource},
            "namespace": obj["metadata"]["namespace"],
            "name": obj["metadata"]["name"],
            "operation": "CREATE",
            "object": obj,
            "dryRun": True,
        },
    }
    path = workdir / f"review-{endpoint}.json"
    path.write_text(json.dumps(review))
    out = subprocess.run(
        podlock_argv("review", f"--{endpoint}", str(path)),
        capture_output=True,
        text=True,
        check=True,
    )
    response: dict[str, Any] = json.loads(out.stdout)["response"]
    return response


def _reviewed_verdict(obj: dict[str, Any], workdir: Path) -> set[str]:
    """The API server's chain through `podlock review`: mutate, apply the patch, validate."""
    mutated = _review(obj, "mutate", workdir)
    if "patch" in mutated:
        obj = jsonpatch.apply_patch(obj, json.loads(base64.b64decode(mutated["patch"])))
    validated = _review(obj, "validate", workdir)
    return set() if validated["allowed"] else rule_ids(validated["status"]["message"])


def _linted_verdict(path: Path) -> set[str]:
    """`podlock lint --fix`, then what lint still finds: what no hardening can repair (the
    tag-only image is a warning, which refuses nothing)."""
    subprocess.run(podlock_argv("lint", "--fix", str(path)), capture_output=True, check=False)
    out = subprocess.run(
        podlock_argv("lint", "--format", "json", str(path)), capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    findings = json.loads(out.stdout)["findings"]
    return {f["rule"] for f in findings if f["rule"] != "mutable-image-reference"}


@pytest.mark.parametrize("case", sorted(DRY_RUN_CASES))
def test_server_dry_run_agrees_with_lint_and_review(
    cluster: Cluster, podlock: Admission, case: str, tmp_path: Path
) -> None:
    obj = DRY_RUN_CASES[case]
    manifest = tmp_path / f"{case}.yaml"
    manifest.write_text(yaml.safe_dump(obj))
    result = cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-f", str(manifest),
                             check=False)  # fmt: skip
    if result.returncode == 0:
        admitted = set[str]()
    else:
        assert "podlock denied" in result.stderr, result.stderr
        admitted = rule_ids(result.stderr)
    assert admitted == _reviewed_verdict(obj, tmp_path), "podlock review disagrees"
    linted = _linted_verdict(manifest)
    assert admitted <= linted, "podlock lint disagrees"
    assert linted - admitted <= HARDENED_WHEN_UNSET, "podlock lint disagrees"
    assert bool(admitted) == bool(linted), "podlock lint disagrees"
    if obj["kind"] == "Pod" and result.returncode == 0:
        # the same hardening: the API server's dry-run object and lint --fix's file
        fixed = yaml.safe_load(manifest.read_text())["spec"]["containers"][0]
        served = json.loads(result.stdout)["spec"]["containers"][0]
        assert served["securityContext"] == fixed["securityContext"]
        assert mounts(served) - {"/var/run/secrets/kubernetes.io/serviceaccount"} == mounts(fixed)
    name = obj["metadata"]["name"]
    kind = obj["kind"].lower()
    assert cluster.kubectl("get", kind, name, "-n", ENFORCE, check=False).returncode != 0


# --- 6. warn and audit namespaces ------------------------------------------------------------


def test_warn_namespace_admits_with_podlock_warnings(cluster: Cluster, podlock: Admission) -> None:
    result = create(cluster, pod("priv", WARN, container="shell", security={"privileged": True}))
    try:
        assert result.returncode == 0, result.stderr
        warnings = [x for x in result.stderr.splitlines() if x.startswith("Warning: podlock")]
        assert any("privileged-container" in w for w in warnings), result.stderr
        assert any("would" in w for w in warnings), result.stderr  # the hardening it would do
        container = cluster.get("pod", "priv", WARN)["spec"]["containers"][0]
        assert "readOnlyRootFilesystem" not in container["securityContext"]
    finally:
        delete_pod(cluster, "priv", WARN)


def test_audit_namespace_admits_silently_and_the_audit_log_says_why(
    cluster: Cluster, podlock: Admission
) -> None:
    result = create(cluster, pod("priv", AUDIT, container="shell", security={"privileged": True}))
    try:
        assert result.returncode == 0, result.stderr
        assert "podlock" not in result.stderr
        container = cluster.get("pod", "priv", AUDIT)["spec"]["containers"][0]
        assert "readOnlyRootFilesystem" not in container["securityContext"]

        def annotated() -> dict[str, str]:
            for event in cluster.audit_events():
                ref = event.get("objectRef") or {}
                if (
                    event.get("verb") == "create"
                    and ref.get("resource") == "pods"
                    and ref.get("namespace") == AUDIT
                    and ref.get("name") == "priv"
                    and event.get("stage") == "ResponseComplete"
                ):
                    notes: dict[str, str] = event.get("annotations") or {}
                    return notes
            return {}

        wait_until("the pod's audit event", lambda: bool(annotated()), timeout=60)
        notes = annotated()
        assert "privileged-container" in notes.get("audit.validate.podlock.io/violations", "")
        assert "readOnlyRootFilesystem" in notes.get("audit.mutate.podlock.io/mutations", "")
    finally:
        delete_pod(cluster, "priv", AUDIT)


def test_only_mode_admins_may_set_a_namespace_mode(cluster: Cluster, podlock: Admission) -> None:
    """The mode-label policy from deploy/, enforced by the API server itself: a user allowed
    to patch namespaces still may not switch one to audit; a podlock:mode-admins member may."""
    rbac = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "namespace-editor"},
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "patch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "namespace-editors"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "namespace-editor",
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "editors"}],
    }
    cluster.apply([rbac, binding])
    cluster.create_namespace("pl-labels")
    try:
        dev = cluster.add_user("dev", ["editors"])
        admin = cluster.add_user("mode-admin", ["editors", "podlock:mode-admins"])
        label = ("label", "namespace", "pl-labels", "podlock.io/mode=audit", "--overwrite")
        refused = cluster.kubectl(*label, kubeconfig=dev, check=False)
        assert refused.returncode != 0
        assert "ValidatingAdmissionPolicy 'podlock-mode-label'" in refused.stderr, refused.stderr
        other = cluster.kubectl("label", "namespace", "pl-labels", "team=a", kubeconfig=dev)
        assert other.returncode == 0  # every other label change is untouched
        cluster.kubectl(*label, kubeconfig=admin)
        labels = cluster.get("namespace", "pl-labels")["metadata"]["labels"]
        assert labels["podlock.io/mode"] == "audit"
    finally:
        cluster.kubectl("delete", "namespace", "pl-labels", "--wait=false")
        cluster.kubectl("delete", "clusterrolebinding", "namespace-editors")
        cluster.kubectl("delete", "clusterrole", "namespace-editor")


# --- 7. exempt namespaces --------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["kube-system", "podlock-system"])
def test_exempt_namespaces_are_untouched(
    cluster: Cluster, podlock: Admission, namespace: str
) -> None:
    plain = pod("untouched", namespace)
    privileged = pod("untouched-priv", namespace, security={"privileged": True})
    try:
        for manifest in (plain, privileged):
            result = create(cluster, manifest)
            assert result.returncode == 0, result.stderr
            assert "podlock" not in result.stderr
        container = cluster.get("pod", "untouched", namespace)["spec"]["containers"][0]
        assert "securityContext" not in container
        assert "/tmp" not in mounts(container)
    finally:
        for manifest in (plain, privileged):
            delete_pod(cluster, manifest["metadata"]["name"], namespace)


# --- 8. kubectl exec --------------------------------------------------------------------------


def _exec_url(cluster: Cluster, url: str) -> None:
    index = cluster.kubectl("get", "validatingwebhookconfiguration", "podlock", "-o", "json").stdout
    webhooks = json.loads(index)["webhooks"]
    at = next(i for i, w in enumerate(webhooks) if w["name"] == "exec.validate.podlock.io")
    path = webhooks[at]["clientConfig"]["url"].split("/", 3)[3]
    patch = [
        {"op": "replace", "path": f"/webhooks/{at}/clientConfig/url", "value": f"{url}/{path}"}
    ]
    cluster.kubectl(
        "patch", "validatingwebhookconfiguration", "podlock", "--type=json", "-p", json.dumps(patch)
    )


def test_exec_denied_when_the_exec_rule_is_deny(
    cluster: Cluster, podlock: Admission, target: str, tmp_path: Path
) -> None:
    strict = start_server(
        tmp_path / "deny", podlock.ca, {"rules": {"exec-into-hardened-pod": "deny"}}
    )
    try:
        _exec_url(cluster, strict.url)

        def refused() -> Any:
            result = cluster.kubectl("exec", target, "-n", ENFORCE, "--", "true", check=False)
            return result if result.returncode != 0 else None

        wait_until("the exec webhook to use the deny policy", lambda: refused() is not None,
                   timeout=60, interval=0.5)  # fmt: skip
        assert_refused_by_podlock(
            refused().stderr, "exec.validate.podlock.io", "exec-into-hardened-pod", "command true"
        )
    finally:
        _exec_url(cluster, podlock.server.url)
        strict.stop()


def test_exec_allowed_and_audited_when_the_exec_rule_is_audit(
    cluster: Cluster, podlock: Admission, target: str
) -> None:
    def works() -> bool:
        result = cluster.kubectl(
            "exec", target, "-n", ENFORCE, "--", "echo", "audited", check=False
        )
        return result.returncode == 0 and result.stdout.strip() == "audited"

    wait_until("kubectl exec to work under the audit policy", works, timeout=60, interval=0.5)

    def annotation() -> str:
        for event in cluster.audit_events():
            ref = event.get("objectRef") or {}
            if ref.get("subresource") == "exec" and ref.get("name") == target:
                note = (event.get("annotations") or {}).get("exec.validate.podlock.io/exec", "")
                if "command echo audited" in note:
                    return str(note)
        return ""

    wait_until("the exec's audit annotation", lambda: bool(annotation()), timeout=60)
    assert f"kubectl exec into pod {ENFORCE}/{target}" in annotation()


# --- 9. podlock down: fail closed, except the exempt namespaces ------------------------------


def test_podlock_down_fails_closed_and_recovers(cluster: Cluster, podlock: Admission) -> None:
    podlock.server.stop()
    try:
        down = create(cluster, pod("while-down"))
        assert down.returncode != 0
        assert 'failed calling webhook "enforce.mutate.podlock.io"' in down.stderr, down.stderr
        assert "connection refused" in down.stderr
        system = create(cluster, pod("while-down", "kube-system"))
        assert system.returncode == 0, system.stderr
    finally:
        delete_pod(cluster, "while-down", "kube-system")
        podlock.server.start()

    def recovered() -> bool:
        return create(cluster, pod("after-restart")).returncode == 0

    wait_until("pod creation to work again", recovered, timeout=90, interval=0.5)
    hardened = cluster.get("pod", "after-restart", ENFORCE)["spec"]["containers"][0]
    assert hardened["securityContext"]["readOnlyRootFilesystem"] is True
    delete_pod(cluster, "after-restart")


# --- 10. certificate rotation under load -----------------------------------------------------


def test_certificate_rotation_fails_no_admission(cluster: Cluster, podlock: Admission) -> None:
    """Clients send server-side dry-run pod creates (the whole webhook chain, nothing stored)
    while the serving certificate is replaced three times; every one must be admitted."""
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(n: int) -> None:
        conn = cluster.connection()
        body = pod(f"rotation-{n}")
        while not stop.is_set():
            status, answer = call(
                conn, "POST", f"/api/v1/namespaces/{ENFORCE}/pods?dryRun=All", body
            )
            results.append((status, answer.get("message", "")))
        conn.close()

    def answered_since(count: int, more: int) -> None:
        wait_until(f"{more} more answers", lambda: len(results) >= count + more, timeout=60)

    def serves_the_latest() -> bool:
        served = ssl.get_server_certificate(("127.0.0.1", podlock.server.port))
        latest = podlock.server.cert.read_bytes()
        return bool(
            x509.load_pem_x509_certificate(served.encode())
            == x509.load_pem_x509_certificate(latest)
        )

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        answered_since(0, 5)  # the load is flowing before the first rotation
        for _ in range(3):
            podlock.server.write_serving_pair()
            wait_until("the new pair to be served", serves_the_latest, timeout=60)
            answered_since(len(results), 5)  # requests went on across the switch
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [r for r in results if r[0] != 201]
    assert len(results) >= 20, f"only {len(results)} requests were sent"
    assert not failures, failures[:5]


# --- 11. an exemption cannot be granted after admission (issue 11, item 7) --------------------


def test_the_opt_out_cannot_be_added_to_a_running_pod(cluster: Cluster, podlock: Admission) -> None:
    """`kubectl label pod late podlock.io/exempt=true`, then `kubectl debug --profile=sysadmin`:
    the label is refused (late-exemption), so the debugger is judged and refused too. Every
    other label change passes, and does not even wait for podlock (the webhook's matchCondition):
    it succeeds while podlock is down, where adding the opt-out fails closed."""
    cluster.apply(pod("late", OPT_OUT))
    try:
        cluster.wait_pod_running("late", OPT_OUT)
        for verb, where in (("label", "label"), ("annotate", "annotation")):
            result = cluster.kubectl(
                verb, "pod", "late", "-n", OPT_OUT, "podlock.io/exempt=true", check=False
            )
            assert result.returncode != 0
            assert_refused_by_podlock(
                result.stderr, "enforce.validate.podlock.io", f"Pod {OPT_OUT}/late: pod: "
                f"late-exemption: the {where} podlock.io/exempt can only be set when the pod is "
                "created",
            )  # fmt: skip
        metadata = cluster.get("pod", "late", OPT_OUT)["metadata"]
        assert "podlock.io/exempt" not in (metadata.get("labels") or {})
        assert "podlock.io/exempt" not in (metadata.get("annotations") or {})
        refused = debug(cluster, "late", "sysadmin", "dbg-late", OPT_OUT)
        assert refused.returncode != 0
        assert_refused_by_podlock(
            refused.stderr, "enforce.validate.podlock.io", "dbg-late", "privileged-container"
        )
        relabel = cluster.kubectl("label", "pod", "late", "-n", OPT_OUT, "team=a", check=False)
        assert relabel.returncode == 0, relabel.stderr
        podlock.server.stop()
        try:
            down = cluster.kubectl(
                "label", "pod", "late", "-n", OPT_OUT, "team=b", "--overwrite", check=False
            )
            assert down.returncode == 0, down.stderr
            closed = cluster.kubectl(
                "label", "pod", "late", "-n", OPT_OUT, "podlock.io/exempt=true", check=False
            )
            assert closed.returncode != 0
            assert 'failed calling webhook "enforce.validate.podlock.io"' in closed.stderr
        finally:
            podlock.server.start()
        labels = cluster.get("pod", "late", OPT_OUT)["metadata"]["labels"]
        assert labels.get("team") == "b" and "podlock.io/exempt" not in labels
    finally:
        delete_pod(cluster, "late", OPT_OUT)
