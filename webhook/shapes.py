"""Pod templates found by their shape in objects of kinds podlock does not know.

Argo Rollouts, Knative Services, OpenKruise CloneSets, OpenShift DeploymentConfigs, KEDA
ScaledJobs, Kubeflow and Ray jobs embed a PodTemplateSpec; their controllers create the Pods,
which the webhook judges at admission. `podlock lint` judges the template ahead, like a
Deployment's: every `template: {spec: {containers: [...]}}` in such an object, at any depth
(`spec.template`, `spec.template.jobTemplate.spec.template`, `spec.workerGroupSpecs[0].template`).

Containers anywhere else in such an object (a Prometheus's `spec.containers`, which are patches
to the operator's own; a KServe predictor; an Argo Workflow step's `container`, a Tekton step:
any mapping with an `image`) are reported as not judged: podlock cannot tell what the
controller makes of them, and says so rather than pass them silently.

Not walked: kinds of Kubernetes' own API groups (their pod specs are the known ones, and
PodTemplate is walked), and policy engines' objects, whose pod specs are patterns to match
(Kyverno, Gatekeeper). The walk visits each collection once (aliases share them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from webhook.podspecs import POD_SPEC_PATHS, Path, PodSpecRef, mapping

# The groups of Kubernetes' own APIs ("" is the core group, `apiVersion: v1`); their kinds
# that hold pod specs are in POD_SPEC_PATHS, except PodTemplate.
_BUILTIN_GROUPS = frozenset(("", "apps", "batch", "autoscaling", "policy", "extensions"))
# Objects whose pod specs are patterns or mutations to apply, not pods.
_PATTERN_GROUPS = ("kyverno.io", "gatekeeper.sh")


@dataclass(frozen=True, slots=True)
class Unjudged:
    """Containers podlock found in an object but does not judge."""

    kind: str
    name: str
    namespace: str
    object_path: Path  # from the document root to the object
    path: Path  # from the object to a `containers` list or a mapping with an `image`


@dataclass(frozen=True, slots=True)
class Shapes:
    judged: list[tuple[Path, PodSpecRef]]  # (path to the object, its pod template's spec)
    unjudged: list[Unjudged]


def by_shape(document: object) -> Shapes:
    """Pod templates and other containers in the document's objects of unknown kinds."""
    found = Shapes([], [])
    for obj, object_path in _objects(document, ()):
        kind = obj.get("kind")
        api_version = obj.get("apiVersion")
        if not isinstance(kind, str) or not isinstance(api_version, str) or not api_version:
            continue  # not a Kubernetes object (kubectl refuses it)
        if kind in POD_SPEC_PATHS or not _walked(kind, api_version):
            continue
        metadata = mapping(obj.get("metadata"))
        name = _text(metadata.get("name") or metadata.get("generateName"))
        namespace = _text(metadata.get("namespace"))
        for path, spec, template in _containers(obj):
            if template is not None:
                template_metadata = mapping(template.get("metadata"))
                ref = PodSpecRef(
                    kind,
                    name,
                    namespace,
                    (*object_path, *path),
                    spec,
                    mapping(template_metadata.get("annotations")),
                    mapping(template_metadata.get("labels")),
                )
                found.judged.append((object_path, ref))
            else:
                found.unjudged.append(Unjudged(kind, name, namespace, object_path, path))
    return found


def _objects(document: object, prefix: Path) -> Iterator[tuple[Mapping[str, Any], Path]]:
    """The document, or the items of a `kind: List` (as podspecs.pod_specs reads them)."""
    if not isinstance(document, dict):
        return
    kind = document.get("kind")
    items = document.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        for index, item in enumerate(items):
            yield from _objects(item, (*prefix, "items", index))
    else:
        yield document, prefix


def _walked(kind: str, api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    if group in _BUILTIN_GROUPS or group.endswith(".k8s.io"):
        return kind == "PodTemplate"
    return not any(group == g or group.endswith("." + g) for g in _PATTERN_GROUPS)


def _containers(
    obj: Mapping[str, Any],
) -> Iterator[tuple[Path, Mapping[str, Any], Mapping[str, Any] | None]]:
    """(path, mapping, template) for every pod template's spec (with its template), and the
    path of every other `containers` list or mapping with an `image` (template None), outside
    metadata and status."""
    seen: set[int] = set()
    stack: list[tuple[Path, object, Mapping[str, Any] | None]] = [
        ((key,), value, None) for key, value in reversed(list(obj.items())) if key not in _NOT_SPEC
    ]
    while stack:
        path, value, parent = stack.pop()
        if id(value) in seen:
            continue
        if isinstance(value, dict):
            seen.add(id(value))
            if _has_containers(value):
                if path[-2:] == ("template", "spec") and parent is not None:
                    yield path, value, parent
                else:
                    yield (*path, "containers"), value, None
                continue
            if isinstance(value.get("image"), str):  # a container by another name
                yield path, value, None
                continue
            stack.extend(
                ((*path, key), child, value if key == "spec" and path[-1] == "template" else None)
                for key, child in reversed(list(value.items()))
                if isinstance(child, dict | list)
            )
        elif isinstance(value, list):
            seen.add(id(value))
            stack.extend(
                ((*path, index), child, None)
                for index, child in reversed(list(enumerate(value)))
                if isinstance(child, dict | list)
            )


_NOT_SPEC = frozenset(("apiVersion", "kind", "metadata", "status"))


def _has_containers(value: Mapping[str, Any]) -> bool:
    containers = value.get("containers")
    return isinstance(containers, list) and any(isinstance(c, dict) for c in containers)


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)
