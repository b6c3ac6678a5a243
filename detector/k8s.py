"""Kubernetes metadata for container ids: a pure mapping from pod objects (dicts,
as the API returns them) and the edge that watches this node's pods.

The `kubernetes` client is imported only inside `metadata_from_env`, so the rule
engine and its tests never load it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger("podlock.detector.k8s")

WatchEvent = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class ContainerMeta:
    """What the API server knows about one container of a pod."""

    container_id: str  # 64-hex id, runtime scheme stripped
    container_name: str
    pod_name: str
    namespace: str
    pod_uid: str
    image: str
    repository: str
    tag: str | None
    # argv of each exec liveness/readiness/startup probe of this container
    probe_commands: frozenset[tuple[str, ...]] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)


class MetadataSource(Protocol):
    def lookup(self, container_id: str) -> ContainerMeta | None: ...


class NoMetadata:
    """Used without NODE_NAME or API access: alerts carry the container id only."""

    def lookup(self, container_id: str) -> ContainerMeta | None:
        return None


# --- pure mapping ----------------------------------------------------------------------------

_STATUS_TO_SPEC = (
    ("containerStatuses", "containers"),
    ("initContainerStatuses", "initContainers"),
    ("ephemeralContainerStatuses", "ephemeralContainers"),
)
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def strip_runtime(container_id: str) -> str:
    """`containerd://abc…` → `abc…` (also cri-o://, docker://)."""
    return container_id.split("://", 1)[-1]


def split_image(image: str) -> tuple[str, str | None]:
    """`reg:5000/app/web:1.2@sha256:…` → (`reg:5000/app/web`, `1.2`)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, None


def probe_commands(container_spec: Mapping[str, Any]) -> frozenset[tuple[str, ...]]:
    """The argv of every exec probe of one container spec."""
    commands: set[tuple[str, ...]] = set()
    for key in _PROBES:
        probe = container_spec.get(key) or {}
        command = (probe.get("exec") or {}).get("command")
        if isinstance(command, list) and command:
            commands.add(tuple(str(part) for part in command))
    return frozenset(commands)


def containers_of_pod(pod: Mapping[str, Any]) -> list[ContainerMeta]:
    """Every container of the pod that has a runtime id yet (app, init, ephemeral)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    found: list[ContainerMeta] = []
    for status_key, spec_key in _STATUS_TO_SPEC:
        specs = {c.get("name"): c for c in spec.get(spec_key) or []}
        for st in status.get(status_key) or []:
            raw_id = st.get("containerID")
            if not raw_id:
                continue  # not started yet
            name = str(st.get("name", ""))
            container_spec = specs.get(name, {})
            image = str(st.get("image") or "")
            if not image or image.startswith("sha256:"):
                image = str(container_spec.get("image") or image)
            repository, tag = split_image(image)
            found.append(
                ContainerMeta(
                    container_id=strip_runtime(str(raw_id)),
                    container_name=name,
                    pod_name=str(meta.get("name", "")),
                    namespace=str(meta.get("namespace", "")),
                    pod_uid=str(meta.get("uid", "")),
                    image=image,
                    repository=repository,
                    tag=tag,
                    probe_commands=probe_commands(container_spec),
                    labels=labels,
                )
            )
    return found


class PodIndex:
    """Container id → metadata, fed with pod watch events.

    Containers of deleted pods stay findable for a while (bounded), because their
    last events can arrive after the API server forgot the pod.
    """

    def __init__(self, keep_deleted: int = 1024) -> None:
        # the pods the API server lists now (a relist drops the ones it no longer has)
        self._by_container: dict[str, ContainerMeta] = {}
        self._by_pod: dict[str, tuple[str, ...]] = {}
        # containers of deleted pods, the last `keep_deleted` of them, oldest evicted first
        self._gone: OrderedDict[str, ContainerMeta] = OrderedDict()
        self._keep_deleted = keep_deleted
        self.evicted = 0  # containers of deleted pods forgotten to keep that bound
        self._lock = threading.Lock()

    def lookup(self, container_id: str) -> ContainerMeta | None:
        meta = self._by_container.get(container_id)  # a dict read is atomic in CPython
        if meta is None and self._gone:
            with self._lock:
                meta = self._gone.get(container_id)
        return meta

    def apply(self, kind: WatchEvent, pod: Mapping[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        with self._lock:
            self._forget(uid)
            if kind != "DELETED":
                metas = containers_of_pod(pod)
                for m in metas:
                    self._by_container[m.container_id] = m
                    self._gone.pop(m.container_id, None)
                self._by_pod[uid] = tuple(m.container_id for m in metas)

    def replace_all(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """After a (re)list: pods not listed any more are treated as deleted."""
        pods = list(pods)
        listed = {str((p.get("metadata") or {}).get("uid", "")) for p in pods}
        with self._lock:
            for uid in [u for u in self._by_pod if u not in listed]:
                self._forget(uid)
        for pod in pods:
            self.apply("ADDED", pod)

    def _forget(self, uid: str) -> None:
        for cid in self._by_pod.pop(uid, ()):
            meta = self._by_container.pop(cid, None)
            if meta is not None:
                self._gone[cid] = meta
        while len(self._gone) > self._keep_deleted:
            self._gone.popitem(last=False)
            self.evicted += 1

    def table_sizes(self) -> dict[str, int]:
        """Entries in each table (for metrics and the soak benchmark)."""
        return {
            "k8s.containers": len(self._by_container),
            "k8s.pods": len(self._by_pod),
            "k8s.deleted_containers": len(self._gone),
        }


# --- the watch edge --------------------------------------------------------------------------


class WatchedPods(PodIndex):
    """A PodIndex kept current by a daemon thread watching this node's pods."""

    def __init__(self, node_name: str, core_v1: Any) -> None:
        super().__init__()
        self._node = node_name
        self._api = core_v1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podlock-k8s-watch", daemon=True)

    def start(self) -> WatchedPods:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import importlib
        import json

        watch: Any = importlib.import_module("kubernetes.watch")

        selector = f"spec.nodeName={self._node}"
        backoff = 1.0
        while not self._stop.is_set():
            try:
                resp = self._api.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False
                )
                listing = json.loads(resp.data)
                self.replace_all(listing.get("items") or [])
                version = listing["metadata"]["resourceVersion"]
                backoff = 1.0
                while not self._stop.is_set():
                    stream = watch.Watch().stream(
                        self._api.list_pod_for_all_namespaces,
                        field_selector=selector,
                        resource_version=version,
                        timeout_seconds=60,
                    )
                    for event in stream:
                        raw = event.get("raw_object") or {}
                        if event.get("type") == "ERROR":
                            raise RuntimeError(str(raw.get("message", "watch error")))
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            self.apply(event["type"], raw)
                            version = raw["metadata"]["resourceVersion"]
                        if self._stop.is_set():
                            return
            except Exception as err:  # the watch must outlive API hiccups; relist
                log.warning("pod watch for node %s failed (%s); relisting", self._node, err)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)


def metadata_from_env(environ: Mapping[str, str] | None = None) -> MetadataSource:
    """With NODE_NAME and API access (in-cluster or kubeconfig): watch this node's pods.
    Otherwise alerts carry the container id only."""
    env = os.environ if environ is None else environ
    node = env.get("NODE_NAME", "")
    if not node:
        return NoMetadata()
    try:
        import importlib

        client: Any = importlib.import_module("kubernetes.client")
        config: Any = importlib.import_module("kubernetes.config")
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        source = WatchedPods(node, client.CoreV1Api()).start()
    except Exception as err:  # no API access is a supported mode, not a crash
        log.warning("Kubernetes metadata disabled: %s", err)
        return NoMetadata()
    time.sleep(0)  # let the watch thread start listing
    return source
