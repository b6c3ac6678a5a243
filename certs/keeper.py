"""Self-managed certificates, the edge: the Secret and the two webhook configurations through the
API server, and the served pair on disk. What to write is certs/rotation.py's decision.

Every replica runs a keeper; they agree through the API server alone. The first to find no
Secret creates it and the others' creates fail with a conflict (409), so they re-read and adopt
what the winner wrote; every later write is a replace at the resourceVersion that was read, and
every caBundle patch is guarded by the configuration's resourceVersion, so a replica that acted
on a stale read retries on fresh data instead of undoing another's work.

The API access this needs (deploy/ grants exactly this): `get`, `update` on the one Secret,
`create` on Secrets in its namespace (RBAC cannot name an object that does not exist yet), and
`get`, `patch` on the two webhook configurations.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from certs.pki import CertError, PemPair, subject_alt_names
from certs.rotation import ANNOTATION_PREFIX, ROTATE, Plan, Policy, Rotation, Stored, plan

log = logging.getLogger("podlock.certs")

REQUEST_TIMEOUT = 10.0  # seconds per API call; the loop retries
ATTEMPTS = 3  # reads and writes per reconcile when other replicas keep winning the race
SECRET_TYPE = "kubernetes.io/tls"
CERT_FILE, KEY_FILE = "tls.crt", "tls.key"

ConfigurationKind = Literal["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
KINDS: tuple[ConfigurationKind, ...] = (
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
)
Obj = dict[str, Any]


class KeeperError(Exception):
    """The API server refused or could not be reached; str() is one sentence."""


class _Conflict(Exception):
    """Another replica wrote first."""


@dataclass(frozen=True)
class Target:
    namespace: str
    secret: str
    webhook_configuration: str  # the name of both the Mutating and the Validating configuration


def api_client(kubeconfig: str | None) -> Any:
    """A client for the API server: the pod's ServiceAccount, or a kubeconfig file."""
    try:
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError, ValueError) as e:
        where = kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config")
        raise KeeperError(f"no API server credentials (in-cluster or {where}): {e}") from None


def keeper_from_args(args: argparse.Namespace) -> Keeper:
    """The keeper `podlock serve --certs self-managed` runs, from its flags."""
    try:
        subject_alt_names(args.service, args.namespace, args.host)
    except CertError as e:
        raise KeeperError(f"--service, --namespace or --host: {e}") from None
    if args.cert_check_interval <= 0 or args.ca_trust_delay < 0:
        raise KeeperError("--cert-check-interval must be positive, --ca-trust-delay not negative")
    policy = Policy(
        service=args.service,
        namespace=args.namespace,
        hosts=tuple(args.host),
        trust_delay=timedelta(seconds=args.ca_trust_delay),
    )
    target = Target(args.namespace, args.secret, args.webhook_configuration)
    return Keeper(api_client(args.kubeconfig), target, policy, args.cert_dir)


class Keeper:
    def __init__(
        self,
        api: Any,
        target: Target,
        policy: Policy,
        cert_dir: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._admission = client.AdmissionregistrationV1Api(api)
        self.target = target
        self.policy = policy
        self.cert_dir = Path(cert_dir)
        self._clock = clock

    @property
    def cert_path(self) -> str:
        return str(self.cert_dir / CERT_FILE)

    @property
    def key_path(self) -> str:
        return str(self.cert_dir / KEY_FILE)

    def reconcile(self) -> Plan:
        """Read, decide, write what changed, and install the pair to serve. Raises KeeperError."""
        for _ in range(ATTEMPTS):
            secret = self._read_secret()
            configurations = {kind: self._read_configuration(kind) for kind in KINDS}
            bundles: dict[str, list[bytes]] = {
                kind: [_ca_bundle(hook) for hook in obj.get("webhooks") or []]
                for kind, obj in configurations.items()
                if obj is not None
            }
            decided = plan(_stored(secret), bundles, self._clock(), self.policy)
            if decided.write:
                try:
                    self._write_secret(secret, decided.stored)
                except _Conflict:
                    continue  # another replica wrote first: decide again on what it wrote
                for event in decided.events:
                    log.info("Secret %s/%s: %s", self.target.namespace, self.target.secret, event)
            for kind, obj in configurations.items():
                if obj is not None and any(
                    _ca_bundle(hook) != decided.bundle for hook in obj.get("webhooks") or []
                ):
                    self._patch_bundle(kind, obj, decided.bundle)
            if install_pair(self.cert_dir, decided.serving):
                log.info("serving the certificate from Secret %s", self.target.secret)
            return decided
        raise KeeperError(
            f"Secret {self.target.namespace}/{self.target.secret} changed under every one of "
            f"{ATTEMPTS} attempts to update it; trying again later"
        )

    # --- API calls -----------------------------------------------------------------------------

    def _read_secret(self) -> Obj | None:
        return self._call_or_none(
            "read",
            self._secret_name(),
            self._core.read_namespaced_secret,
            self.target.secret,
            self.target.namespace,
        )

    def _write_secret(self, read: Obj | None, stored: Stored) -> None:
        data = {key: _b64(value) for key, value in sorted(stored.data.items())}
        if read is None:
            body: Obj = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": self.target.secret,
                    "namespace": self.target.namespace,
                    "labels": {"app.kubernetes.io/name": "podlock"},
                    "annotations": dict(stored.annotations),
                },
                "type": SECRET_TYPE,
                "data": data,
            }
            self._call(
                "create",
                self._secret_name(),
                self._core.create_namespaced_secret,
                self.target.namespace,
                body,
            )
            return
        metadata = read["metadata"]
        others = {
            k: v
            for k, v in (metadata.get("annotations") or {}).items()
            if not k.startswith(ANNOTATION_PREFIX)
        }
        # The resourceVersion read travels in the body: a write in between makes this a 409.
        body = {**read, "metadata": {**metadata, "annotations": {**others, **stored.annotations}}}
        body["data"] = data
        self._call(
            "update",
            self._secret_name(),
            self._core.replace_namespaced_secret,
            self.target.secret,
            self.target.namespace,
            body,
        )

    def _read_configuration(self, kind: ConfigurationKind) -> Obj | None:
        read = (
            self._admission.read_mutating_webhook_configuration
            if kind == "MutatingWebhookConfiguration"
            else self._admission.read_validating_webhook_configuration
        )
        return self._call_or_none(
            "read", f"{kind} {self.target.webhook_configuration}", read, self._configuration()
        )

    def _patch_bundle(self, kind: ConfigurationKind, read: Obj, bundle: bytes) -> None:
        patch = (
            self._admission.patch_mutating_webhook_configuration
            if kind == "MutatingWebhookConfiguration"
            else self._admission.patch_validating_webhook_configuration
        )
        # A JSON patch that applies only to the version read: entries cannot have moved.
        ops: list[Obj] = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": read["metadata"]["resourceVersion"],
            }
        ]
        for i, _ in enumerate(read.get("webhooks") or []):
            ops.append(
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": _b64(bundle)}
            )
        what = f"{kind} {self.target.webhook_configuration}"
        try:
            self._call(
                "patch the caBundle of",
                what,
                patch,
                self._configuration(),
                ops,
                content_type="application/json-patch+json",
            )
        except _Conflict:
            log.info("%s changed while patching its caBundle; patching again next time", what)
            return
        log.info("%s: caBundle now holds %d CA(s)", what, bundle.count(b"-----BEGIN"))

    def _configuration(self) -> str:
        return self.target.webhook_configuration

    def _secret_name(self) -> str:
        return f"Secret {self.target.namespace}/{self.target.secret}"

    def _call_or_none(self, verb: str, what: str, method: Any, *args: Any) -> Obj | None:
        try:
            return self._call(verb, what, method, *args)
        except _Missing:
            return None

    def _call(
        self, verb: str, what: str, method: Any, *args: Any, content_type: str | None = None
    ) -> Obj:
        options: dict[str, Any] = {"_content_type": content_type} if content_type else {}
        try:
            response = method(
                *args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **options
            )
        except ApiException as e:
            if e.status == 404:
                raise _Missing from None
            # 409: stale resourceVersion or already created; 422: a failed JSON patch test.
            if e.status in (409, 422):
                raise _Conflict from None
            raise KeeperError(f"cannot {verb} {what}: {_reason(e)}") from None
        except (HTTPError, OSError) as e:
            raise KeeperError(
                f"cannot {verb} {what}: the API server is unreachable ({e})"
            ) from None
        result: Obj = json.loads(response.data or b"{}")
        return result


def request_rotation(api: Any, namespace: str, secret: str, what: Rotation) -> None:
    """Ask the keepers to rotate now (`podlock certs rotate`): an annotation they act on and
    remove at their next check."""
    body = {"metadata": {"annotations": {ROTATE: what}}}
    try:
        client.CoreV1Api(api).patch_namespaced_secret(
            secret,
            namespace,
            body,
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )
    except ApiException as e:
        raise KeeperError(f"cannot annotate Secret {namespace}/{secret}: {_reason(e)}") from None
    except (HTTPError, OSError) as e:
        raise KeeperError(f"cannot annotate Secret {namespace}/{secret}: {e}") from None


class _Missing(Exception):
    """404: the object does not exist."""


def _reason(e: ApiException) -> str:
    try:
        message = json.loads(e.body or "{}")["message"]
    except (TypeError, ValueError, KeyError):
        message = e.reason
    return f"HTTP {e.status}: {message}"


def _stored(secret: Obj | None) -> Stored | None:
    if secret is None:
        return None
    data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
    annotations = {
        key: value
        for key, value in (secret["metadata"].get("annotations") or {}).items()
        if key.startswith(ANNOTATION_PREFIX)
    }
    return Stored(data=data, annotations=annotations)


def _ca_bundle(hook: Mapping[str, Any]) -> bytes:
    encoded = (hook.get("clientConfig") or {}).get("caBundle") or ""
    return base64.b64decode(encoded)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def install_pair(directory: Path, pair: PemPair) -> bool:
    """Make `directory`/tls.crt and tls.key this pair, both switched at once, as the kubelet
    updates a mounted Secret: the files are symlinks through `..data` to a fresh directory, and
    one rename swaps it. Returns False when the pair is already there."""
    cert, key = directory / CERT_FILE, directory / KEY_FILE
    try:
        if cert.read_bytes() == pair.cert and key.read_bytes() == pair.key:
            return False
    except OSError:
        pass
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="..pair-", dir=directory))
    for name, data, mode in ((CERT_FILE, pair.cert, 0o644), (KEY_FILE, pair.key, 0o600)):
        fd = os.open(fresh / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    fresh.chmod(0o755)
    _replace_symlink(directory / "..data", fresh.name)
    for name in (CERT_FILE, KEY_FILE):
        link = directory / name
        if not link.is_symlink() or os.readlink(link) != f"..data/{name}":
            _replace_symlink(link, f"..data/{name}")
    for old in directory.glob("..pair-*"):
        if old != fresh:
            shutil.rmtree(old, ignore_errors=True)
    return True


def _replace_symlink(path: Path, target: str) -> None:
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, path)
