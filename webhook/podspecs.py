"""Where pod specs live inside Kubernetes objects, and the containers inside a pod spec.

The one walker that the webhook, `podlock review` and `podlock lint` all use. It never
raises on odd input: anything that is not shaped like a pod spec is simply not one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[str | int, ...]

# kind -> path from the object to its pod spec
POD_SPEC_PATHS: Mapping[str, Path] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
WORKLOAD_KINDS = frozenset(POD_SPEC_PATHS)

CONTAINER_GROUPS = ("containers", "initContainers", "ephemeralContainers")


class PodSpecRef:
    """A pod spec found in an object, with what the policy needs to know about it.

    Plain classes here and in the planner, not NamedTuples: compiled by mypyc they are native
    objects, while a NamedTuple is built by a Python-level `__new__` on every admission.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        namespace: str,  # "" when the manifest sets none
        path: Path,  # from the document root to the pod spec
        spec: Mapping[str, Any],
        # Of the pod (or template), as written: a value that is not a string is checked where read.
        annotations: Mapping[str, object],
        labels: Mapping[str, object],
    ) -> None:
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.path = path
        self.spec = spec
        self.annotations = annotations
        self.labels = labels

    @property
    def is_windows(self) -> bool:
        os_spec = self.spec.get("os")
        return isinstance(os_spec, dict) and os_spec.get("name") == "windows"


class ContainerRef:
    def __init__(
        self,
        group: str,  # containers | initContainers | ephemeralContainers
        path: Path,  # (group, index in that list), from the pod spec
        name: str,
        container: Mapping[str, Any],
    ) -> None:
        self.group = group
        self.path = path
        self.name = name
        self.container = container


def mapping(value: object) -> Mapping[str, Any]:
    """The value if it is a mapping, else an empty one: odd input is judged, not crashed on."""
    return value if isinstance(value, dict) else {}


def _get(obj: object, path: Path) -> object:
    for step in path:
        if isinstance(step, str) and isinstance(obj, dict):
            obj = obj.get(step)
        else:
            return None
    return obj


def pod_specs(doc: object, prefix: Path = ()) -> Iterator[PodSpecRef]:
    """Every pod spec in a document: a Pod, a workload's template, or items of a `kind: List`."""
    if not isinstance(doc, dict):
        return
    kind = doc.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List") and "items" in doc):
        items = doc.get("items")
        if isinstance(items, list):
            for index, item in enumerate(items):
                yield from pod_specs(item, (*prefix, "items", index))
        return
    if isinstance(kind, str):
        ref = pod_spec(doc, kind, prefix)
        if ref is not None:
            yield ref


def pod_spec(obj: Mapping[str, Any], kind: str, prefix: Path = ()) -> PodSpecRef | None:
    """The pod spec of one object judged as `kind` (admission takes the kind from the request,
    not from the object), or None when the kind has none or the object lacks it."""
    spec_path = POD_SPEC_PATHS.get(kind)
    if spec_path is None:
        return None
    spec = _get(obj, spec_path)
    if not isinstance(spec, dict):
        return None
    metadata = mapping(obj.get("metadata"))
    pod_metadata = metadata if kind == "Pod" else mapping(_get(obj, (*spec_path[:-1], "metadata")))
    name = metadata.get("name") or metadata.get("generateName") or ""
    namespace = metadata.get("namespace") or ""
    return PodSpecRef(
        kind,
        name if isinstance(name, str) else str(name),
        namespace if isinstance(namespace, str) else str(namespace),
        (*prefix, *spec_path),
        spec,
        mapping(pod_metadata.get("annotations")),
        mapping(pod_metadata.get("labels")),
    )


def containers(spec: Mapping[str, Any]) -> Iterator[ContainerRef]:
    """Every container of a pod spec, in containers, initContainers and ephemeralContainers."""
    for group in CONTAINER_GROUPS:
        items = spec.get(group)
        if not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            name = item.get("name")
            yield ContainerRef(
                group,
                (group, index),
                name if isinstance(name, str) and name else f"{group}[{index}]",
                item,
            )
