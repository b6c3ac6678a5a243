"""The policy: pure functions from a pod spec and settings to violations.

No I/O, no Flask, no globals beyond constant tables. The webhook, `podlock review` and
`podlock lint` all judge through `evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from webhook.config import Settings
from webhook.podspecs import ContainerRef, Path, PodSpecRef, containers, mapping

PRIVILEGED = "privileged-container"
ROOT_USER = "root-user"
WRITABLE_ROOT = "writable-root-filesystem"
EXEC_INTO_POD = "exec-into-hardened-pod"

# How an unset readOnlyRootFilesystem is judged:
#   lint     - manifests should say what they mean: anything but true is reported;
#   pod      - admission judges a Pod after hardening: unset means mutation did not run;
#   template - the pods a workload creates will be hardened: only an explicit non-true counts.
Context = Literal["lint", "pod", "template"]

OPT_OUT_KEY = "podlock.io/exempt"


@dataclass(frozen=True, slots=True)
class RuleInfo:
    id: str
    title: str
    description: str
    help: str
    severity: Literal["error", "warning", "note"]


RULES: Mapping[str, RuleInfo] = {
    rule.id: rule
    for rule in (
        RuleInfo(
            PRIVILEGED,
            "Privileged container",
            "A privileged container can change the node and its own root filesystem, whatever "
            "readOnlyRootFilesystem says.",
            "Remove securityContext.privileged or set it to false; grant only the capabilities "
            "the container needs.",
            "error",
        ),
        RuleInfo(
            ROOT_USER,
            "Container runs as root",
            "A container whose effective runAsUser is 0 runs as root: it can rewrite whatever "
            "in its filesystem is writable.",
            "Set securityContext.runAsUser to a non-zero UID on the container (or the pod) and "
            "runAsNonRoot: true.",
            "error",
        ),
        RuleInfo(
            WRITABLE_ROOT,
            "Writable root filesystem",
            "A container whose root filesystem is writable can be changed in place, behind the "
            "image's back.",
            "Set securityContext.readOnlyRootFilesystem: true and mount an emptyDir volume at "
            "each path the application writes (podlock lint --fix does both).",
            "error",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    container: str
    path: Path  # relative to the pod spec: the field to change
    message: str

    def describe(self) -> str:
        return f'container "{self.container}": {self.rule}: {self.message}'


def evaluate(
    spec: Mapping[str, Any],
    settings: Settings,
    context: Context,
    only: Iterable[str] | None = None,
) -> list[Violation]:
    """Judge every container of a pod spec (or only the containers named in `only`).

    Runs on every admission: the loop only tests, and a Violation is built only when one is found.
    """
    names = None if only is None else frozenset(only)
    enabled = settings.enabled_rules
    privileged = PRIVILEGED in enabled
    root_user = ROOT_USER in enabled
    writable_root = WRITABLE_ROOT in enabled and mapping(spec.get("os")).get("name") != "windows"
    pod_root = _is_zero(mapping(spec.get("securityContext")).get("runAsUser"))
    unset_breaks = context != "template"  # see Context
    found: list[Violation] = []
    for ref in containers(spec):
        if names is not None and ref.name not in names:
            continue
        context_of = mapping(ref.container.get("securityContext"))
        if privileged and context_of.get("privileged") is True:
            found.append(_violation(ref, PRIVILEGED, "privileged", "privileged is true"))
        if root_user:
            own = context_of.get("runAsUser")
            if own is None and pod_root:
                found.append(
                    Violation(
                        ROOT_USER,
                        ref.name,
                        ("securityContext", "runAsUser"),
                        "runAsUser is 0 (inherited from the pod's securityContext)",
                    )
                )
            elif own is not None and _is_zero(own):
                found.append(_violation(ref, ROOT_USER, "runAsUser", "runAsUser is 0"))
        if writable_root:
            value = context_of.get("readOnlyRootFilesystem")
            if value is not True and (value is not None or unset_breaks):
                found.append(_writable_root(ref, value))
    return found


def _violation(ref: ContainerRef, rule: str, field: str, message: str) -> Violation:
    return Violation(rule, ref.name, (*ref.path, "securityContext", field), message)


def _is_zero(value: object) -> bool:
    # bool is an int in Python: `false` is not UID 0.
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def _writable_root(ref: ContainerRef, value: object) -> Violation:
    if value is None:
        message = "readOnlyRootFilesystem is not set"
    elif value is False:
        message = "readOnlyRootFilesystem is false"
    else:
        message = f"readOnlyRootFilesystem is {value!r}, not true"
    return _violation(ref, WRITABLE_ROOT, "readOnlyRootFilesystem", message)


def exemption(ref: PodSpecRef, namespace: str, settings: Settings) -> str | None:
    """Why this pod is not judged at all, or None. `namespace` is where it is being created."""
    if namespace in settings.exempt_namespaces:
        return f"namespace {namespace} is exempt"
    if namespace in settings.pod_opt_out_namespaces and (
        ref.annotations.get(OPT_OUT_KEY) == "true" or ref.labels.get(OPT_OUT_KEY) == "true"
    ):
        return f"{OPT_OUT_KEY} is allowed in namespace {namespace}"
    return None
