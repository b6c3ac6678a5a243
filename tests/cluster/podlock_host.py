"""podlock as the cluster sees it: `podlock serve` over TLS on the host, and the webhook
configurations rendered from deploy/ by an overlay that points every webhook's clientConfig at
that server's URL (the API server dials it on loopback) with the serving CA as caBundle.

Only the cluster-wide admission objects of the rendering are applied (the namespace, both
webhook configurations and the mode-label policy): the in-cluster Deployment and DaemonSet need
the podlock image, which this suite does not build.
"""

from __future__ import annotations

import base64
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from deploy_render import kustomize
from k8s_cluster import Cluster, free_port, wait_until

from certs.pki import PemPair, generate_ca, generate_serving

ROOT = Path(__file__).resolve().parents[2]
APPLIED_KINDS = (
    "Namespace",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


def podlock_argv(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from webhook.cli import main; sys.exit(main())",
        *args,
    ]


@dataclass
class Server:
    """One `podlock serve` process; stop() and start() it again on the same port and files."""

    workdir: Path
    port: int
    config: Path | None
    ca: PemPair
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path:
        return self.workdir / "tls.crt"

    @property
    def key(self) -> Path:
        return self.workdir / "tls.key"

    @property
    def log(self) -> Path:
        return self.workdir / "serve.log"

    def write_serving_pair(self) -> None:
        """A fresh serving pair from the same CA, replacing the files atomically (as a
        Secret volume update does); podlock picks it up without a restart."""
        pair = generate_serving(self.ca, "podlock", "podlock-system", ["127.0.0.1"], now=_now())
        for path, data in ((self.cert, pair.cert), (self.key, pair.key)):
            tmp = path.with_suffix(".new")
            tmp.write_bytes(data)
            tmp.replace(path)

    def start(self) -> None:
        argv = ["serve", "--bind", f"127.0.0.1:{self.port}", "--cert", str(self.cert)]
        argv += ["--key", str(self.key), "--workers", "2"]
        if self.config:
            argv += ["--config", str(self.config)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                podlock_argv(*argv), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        context = ssl.create_default_context(cadata=self.ca.cert.decode())

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=2):
                    return True
            except OSError:
                return False

        wait_until(f"podlock serve on {self.url}", ready, timeout=90)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def start_server(workdir: Path, ca: PemPair, config: dict[str, Any] | None = None) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = None
    if config is not None:
        config_path = workdir / "policy.yaml"
        policy = {"apiVersion": "podlock.io/v1alpha1", "kind": "Policy", **config}
        config_path.write_text(yaml.safe_dump(policy))
    server = Server(workdir, free_port(), config_path, ca)
    server.write_serving_pair()
    server.start()
    return server


def new_ca() -> PemPair:
    return generate_ca(now=_now())


def _now() -> datetime:
    return datetime.now(UTC)


def render_host_overlay(workdir: Path, url: str, ca_cert: bytes) -> list[dict[str, Any]]:
    """deploy/ copied aside plus an overlay `host` that replaces every webhook's `service`
    with `url` (keeping each webhook's path) and sets caBundle; the rendered objects."""
    copy = workdir / "deploy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ROOT / "deploy", copy)
    base = kustomize(copy / "base")
    patches = []
    for obj in base:
        if obj["kind"] not in WEBHOOK_KINDS:
            continue
        ops = []
        for index, webhook in enumerate(obj["webhooks"]):
            path = webhook["clientConfig"]["service"]["path"]
            client = {"url": f"{url}{path}", "caBundle": base64.b64encode(ca_cert).decode()}
            ops.append(
                {"op": "replace", "path": f"/webhooks/{index}/clientConfig", "value": client}
            )
        patches.append(
            {
                "target": {"kind": obj["kind"], "name": obj["metadata"]["name"]},
                "patch": yaml.safe_dump(ops),
            }
        )
    overlay = copy / "overlays" / "host"
    overlay.mkdir(parents=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../base"],
        "patches": patches,
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(overlay)


def register(cluster: Cluster, rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Applies the admission objects of a rendering; returns what was applied."""
    objs = [o for o in rendered if o["kind"] in APPLIED_KINDS]
    cluster.apply(objs)
    return objs


def unregister(cluster: Cluster) -> None:
    """Deletes the cluster-wide objects `register` applies (webhook configurations, the
    mode-label policy and its binding), so a later install — the Helm chart's — finds none of
    them in its way. The namespace stays (see `register`'s callers)."""
    for kind in APPLIED_KINDS:
        if kind != "Namespace":
            cluster.kubectl("delete", kind, "-l", "app.kubernetes.io/part-of=podlock")


def wait_for_webhooks(cluster: Cluster, namespace: str) -> None:
    """The API server's webhook informers lag an apply by a moment: wait until a server-side
    dry run in `namespace` is answered by podlock."""
    probe = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "podlock-probe", "namespace": namespace},
        "spec": {
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]
        },
    }

    def answered() -> bool:
        result = cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe), check=False
        )
        return "podlock" in result.stderr

    wait_until("podlock's webhooks to be called", answered, timeout=90, interval=0.5)
