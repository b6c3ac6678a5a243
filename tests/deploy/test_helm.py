"""The Helm chart deploy/helm/podlock, with the helm `make helm-deps` builds: it lints, its values
do what values.yaml says, bad values fail with one sentence, and it is the one source of the
kustomize directories (rendered by tests/support/deploy_render.py): the committed files are
exactly its render, and `kubectl kustomize` and `helm template` install the same objects."""

from __future__ import annotations

import base64
import json
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_render import (
    CHART,
    DEPLOY,
    NAMESPACE,
    RENDERED,
    ROOT,
    RenderError,
    directory_files,
    helm,
    kustomize,
)
from deploy_render import template as helm_template

from detector.config import load_detector_settings
from webhook.cli import build_parser
from webhook.cli import main as podlock_main
from webhook.config import load_settings

Obj = dict[str, Any]

# The detector configured from values: alerts to falcosidekick over mutual TLS with a client
# certificate from a Secret, and a site rules file that overrides a default macro.
DETECTOR_VALUES: Obj = {
    "config": {
        "http_output": {
            "enabled": True,
            "url": "https://falcosidekick.falco:2801/",
            "ca_cert": "/etc/podlock/tls/ca.crt",
            "mtls": True,
            "client_cert": "/etc/podlock/tls/tls.crt",
            "client_key": "/etc/podlock/tls/tls.key",
        },
        "rate_limit": {"enabled": False},
    },
    "rules": {
        "site.yaml": "- macro: user_known_exec_session_activities\n"
        "  condition: (k8s.ns.name = batch and proc.name = pg_dump)\n"
        "  override: {condition: replace}\n"
        "- rule: Site binary written\n"
        "  condition: evt.type = open and fd.name startswith /opt/site\n"
        "  output: site binary written (file=%fd.name)\n"
        "  priority: warning\n"
    },
    "extraVolumes": [{"name": "tls", "secret": {"secretName": "sidekick-client"}}],
    "extraVolumeMounts": [{"name": "tls", "mountPath": "/etc/podlock/tls", "readOnly": True}],
}


def objects(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_id(objs: Sequence[Obj]) -> dict[tuple[str, str, str], Obj]:
    """Objects keyed by kind, namespace and name, with base64 normalised: kustomize wraps the
    base64 it generates at 70 columns, helm does not, and the API server reads both alike."""

    def unwrap(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: unwrap(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [unwrap(v) for v in value]
        if key == "caBundle" or (isinstance(value, str) and key in ("tls.crt", "tls.key")):
            return "".join(value.split())
        return value

    found: dict[tuple[str, str, str], Obj] = {}
    for obj in objs:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in found, f"{key} rendered twice"
        found[key] = unwrap(obj)
    return found


def only(objs: Sequence[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def certificate_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("generated")
    argv = ["certs", "generate", "--out", str(out), "--service", "podlock"]
    assert podlock_main([*argv, "--namespace", NAMESPACE]) == 0
    return {name: (out / name).read_text("ascii") for name in ("ca.crt", "tls.crt", "tls.key")}


def generated_values(files: Mapping[str, str]) -> dict[str, Any]:
    return {
        "certificates": {
            "source": "generated",
            "generated": {
                "caCert": files["ca.crt"],
                "tlsCert": files["tls.crt"],
                "tlsKey": files["tls.key"],
            },
        }
    }


# --- the chart itself ------------------------------------------------------------------------


def test_the_chart_version_is_podlocks() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text("utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert chart["version"] == chart["appVersion"] == project["version"]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"certificates": {"source": "cert-manager"}},
        {"certificates": {"source": "generated", "generated": {"external": True}}},
        {"detector": {"enabled": False}, "namespace": {"create": True}},
        {"detector": DETECTOR_VALUES},
    ],
    ids=["self-managed", "cert-manager", "generated", "no-detector", "detector-config"],
)
def test_helm_lint(values: Obj, tmp_path: Path) -> None:
    (tmp_path / "values.json").write_text(json.dumps(values))
    result = helm("lint", "--strict", str(CHART), "-f", str(tmp_path / "values.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


# Values a user can get wrong, and the sentence helm must answer with (from the chart's checks).
BAD_VALUES: list[tuple[Obj, str]] = [
    # values.schema.json
    ({"replica": 3}, "additional properties 'replica' not allowed"),
    ({"certificates": {"sorce": "cert-manager"}}, "additional properties 'sorce' not allowed"),
    ({"certificates": {"source": "vault"}}, "/certificates/source': value must be one of"),
    ({"defaultMode": "off"}, "/defaultMode': value must be one of 'enforce', 'warn', 'audit'"),
    ({"replicas": 1}, "/replicas': minimum: got 1, want 2"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy': value must be one of"),
    # the chart's own checks
    ({"certificates": {"source": "generated"}}, "certificates.source=generated: give"),
    ({"modeAdminGroups": ["it's"]}, "cannot go into the CEL list"),
    (
        {"detector": {"rules": {"a.yaml": 3}}},
        "at '/detector/rules/a.yaml': got number, want string",
    ),
    ({"detector": {"rules": {"../x.yaml": "[]"}}}, 'detector.rules: "../x.yaml" is not a rules'),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values_fail_with_one_sentence(values: Obj, message: str) -> None:
    with pytest.raises(RenderError) as failed:
        helm_template(values)
    assert message in str(failed.value)
    assert "\n" not in str(failed.value)


# --- one source of truth ---------------------------------------------------------------------


@pytest.mark.parametrize("directory", sorted(RENDERED))
def test_the_kustomize_directories_are_the_chart_rendered(directory: str) -> None:
    expected = directory_files(directory)
    target = DEPLOY / directory
    on_disk = {p.name: p.read_text("utf-8") for p in target.glob("*.yaml")}
    stale = [name for name in on_disk if name not in expected]
    differ = [name for name in expected if on_disk.get(name) != expected[name]]
    assert not stale and not differ, (
        f"deploy/{directory} is not the chart's render (stale: {stale}, differ: {differ}): "
        "edit deploy/helm/podlock, then run `make deploy-manifests`"
    )


def test_kustomize_and_helm_install_the_same_objects(
    tmp_path: Path, certificate_files: dict[str, str]
) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("ca.crt", "tls.crt", "tls.key"))
    for name, text in certificate_files.items():
        (copy / "overlays" / "generated-certs" / name).write_text(text, "ascii")
    create = {"namespace": {"create": True}}
    installs = {
        "base": create,
        "overlays/cert-manager": {**create, "certificates": {"source": "cert-manager"}},
        "overlays/generated-certs": {**create, **generated_values(certificate_files)},
    }
    for directory, values in installs.items():
        kustomized = by_id(kustomize(copy / directory))
        charted = by_id(objects(helm_template(values)))
        assert sorted(kustomized) == sorted(charted), directory
        for key, obj in charted.items():
            assert kustomized[key] == obj, f"{directory}: {key} differs"


# --- what the values do ----------------------------------------------------------------------


def test_the_default_install_is_self_managed_without_a_namespace_object() -> None:
    # `helm install --create-namespace` makes the namespace; the chart must not claim it too.
    objs = objects(helm_template({}))
    assert not [o for o in objs if o["kind"] == "Namespace"]
    command = only(objs, "Deployment", "podlock")["spec"]["template"]["spec"]["containers"][0][
        "command"
    ]
    assert build_parser().parse_args(command[1:]).certs == "self-managed"
    assert only(objs, "Deployment", "podlock")["spec"]["template"]["spec"]["containers"][0][
        "image"
    ] == ("localhost/podlock:0.1.0")


def test_values_reach_the_objects(tmp_path: Path) -> None:
    values = {
        "image": {
            "repository": "registry.example/podlock",
            "tag": "9.9.9",
            "pullPolicy": "Always",
            "pullSecrets": ["registry"],
        },
        "webhook": {
            "nodeSelector": {"pool": "system"},
            "tolerations": [{"key": "system", "operator": "Exists"}],
        },
        "replicas": 3,
        "defaultMode": "warn",
        "exemptNamespaces": ["kube-system", "monitoring"],
        "policy": {"rules": {"root-user": False}, "defaultMode": "audit"},
        "modeAdminGroups": ["platform"],
        "certificates": {
            "secretName": "webhook-tls",
            "selfManaged": {"checkInterval": 7, "caTrustDelay": 60},
        },
        "detector": {"enabled": False},
    }
    objs = objects(helm_template(values, namespace="guard"))
    deployment = only(objs, "Deployment", "podlock")
    assert deployment["spec"]["replicas"] == 3
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["imagePullPolicy"]) == (
        "registry.example/podlock:9.9.9",
        "Always",
    )
    spec = deployment["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["nodeSelector"] == {"pool": "system"}
    assert spec["tolerations"] == [{"key": "system", "operator": "Exists"}]
    args = build_parser().parse_args(container["command"][1:])
    assert (args.namespace, args.secret) == ("guard", "webhook-tls")
    assert (args.cert_check_interval, args.ca_trust_delay) == (7, 60)
    assert only(objs, "Role", "podlock-certs")["rules"][0]["resourceNames"] == ["webhook-tls"]
    # Everything namespaced lands in the release namespace.
    assert {o["metadata"].get("namespace") for o in objs} <= {"guard", None}
    # The policy: top-level values win over the same keys in `policy`; the release namespace is
    # always exempt, in the policy and in every selector alike.
    (tmp_path / "policy.yaml").write_text(
        only(objs, "ConfigMap", "podlock-policy")["data"]["policy.yaml"], "utf-8"
    )
    settings = load_settings(str(tmp_path / "policy.yaml"))
    assert settings.default_mode == "warn"
    assert settings.exempt_namespaces == ("kube-system", "monitoring", "guard")
    assert "root-user" not in settings.enabled_rules
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in only(objs, kind, "podlock")["webhooks"]:
            (exempt,) = [
                e["values"]
                for e in hook["namespaceSelector"]["matchExpressions"]
                if e["key"] == "kubernetes.io/metadata.name"
            ]
            assert exempt == list(settings.exempt_namespaces)
            assert hook["clientConfig"]["service"]["namespace"] == "guard"
    groups = only(objs, "ValidatingAdmissionPolicy", "podlock-mode-label")["spec"]["variables"][0]
    assert groups["expression"] == "['platform']"
    assert not [o for o in objs if "detector" in o["metadata"]["name"]]
    # Without the privileged detector, the namespace enforces the restricted profile.
    created = objects(
        helm_template({"detector": {"enabled": False}, "namespace": {"create": True}})
    )
    labels = only(created, "Namespace", "podlock-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # A changed policy changes the pod template, so the replicas roll and read it.
    default = only(objects(helm_template({})), "Deployment", "podlock")
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
        != default["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]
    )


def test_detector_config_and_rules_from_values(tmp_path: Path) -> None:
    """What `podlock detect` reads in the DaemonSet pod is what the values say, and it loads."""
    objs = objects(helm_template({"detector": DETECTOR_VALUES}))
    daemonset = only(objs, "DaemonSet", "podlock-detector")
    pod = daemonset["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == [
        "podlock", "detect", "--json", "--config", "/etc/podlock/config/detect.yaml",
        "--metrics-bind", "0.0.0.0:8766",
    ]  # fmt: skip
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert (mounts["config"], mounts["tls"]) == ("/etc/podlock/config", "/etc/podlock/tls")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["tls"]["secret"] == {"secretName": "sidekick-client"}
    items = {i["key"]: i["path"] for i in volumes["config"]["configMap"]["items"]}
    assert items == {"detect.yaml": "detect.yaml", "rules.site.yaml": "rules.d/site.yaml"}
    # The ConfigMap laid out as the kubelet mounts it, then read by the detector's own loader.
    data = only(objs, "ConfigMap", "podlock-detector")["data"]
    for key, path in items.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(data[key], "utf-8")
    config = yaml.safe_load(data["detect.yaml"])
    assert config["rules_file"] == ["builtin", "/etc/podlock/config/rules.d"]
    settings = load_detector_settings(
        str(tmp_path / "detect.yaml"), ["builtin", str(tmp_path / "rules.d")], environ={}
    )
    assert settings.http_output.mtls and settings.http_output.ca_cert == "/etc/podlock/tls/ca.crt"
    assert not settings.rate_limit.enabled
    assert [r.name for r in settings.rules.rules][-1] == "Site binary written"
    # A changed rules file rolls the pods; without config or rules nothing is mounted.
    changed = {**DETECTOR_VALUES, "rules": {"site.yaml": "[]\n"}}
    other = only(objects(helm_template({"detector": changed})), "DaemonSet", "podlock-detector")
    annotation = "checksum/config"
    assert (
        other["spec"]["template"]["metadata"]["annotations"][annotation]
        != pod["metadata"]["annotations"][annotation]
    )
    plain = objects(helm_template({}))
    assert not [
        o for o in plain if o["kind"] == "ConfigMap" and "detector" in o["metadata"]["name"]
    ]
    (plain_container,) = only(plain, "DaemonSet", "podlock-detector")["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--config" not in plain_container["command"]


def test_generated_certificates_from_values(certificate_files: dict[str, str]) -> None:
    objs = objects(helm_template(generated_values(certificate_files)))
    secret = only(objs, "Secret", "podlock-tls")
    assert base64.b64decode(secret["data"]["tls.key"]).decode() == certificate_files["tls.key"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in only(objs, kind, "podlock")["webhooks"]:
            ca = base64.b64decode(hook["clientConfig"]["caBundle"]).decode()
            assert ca == certificate_files["ca.crt"]
