"""The policy: pure functions from a pod spec and settings to violations.

No I/O, no Flask, no globals beyond constant tables. The webhook, `podlock review` and
`podlock lint` all judge through `evaluate`.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from webhook.config import (
    IMAGE_RULE,
    ImageProfile,
    Settings,
    capability_name,
    clean_path,
    under,
    under_any,
)
from webhook.podspecs import ContainerRef, Path, PodSpecRef, containers, mapping

PRIVILEGED = "privileged-container"
ROOT_USER = "root-user"
WRITABLE_ROOT = "writable-root-filesystem"
EXEC_INTO_POD = "exec-into-hardened-pod"
WRITABLE_MOUNT = "writable-mount"
RUN_AS_NON_ROOT = "run-as-non-root"
PRIVILEGE_ESCALATION = "privilege-escalation"
CAPABILITIES = "capabilities"
SECURITY_PROFILE = "security-profile"
HOST_ACCESS = "host-access"
DEBUG_AS_EXEC = "ephemeral-container-as-exec"
LATE_EXEMPTION = "late-exemption"
MUTABLE_IMAGE = IMAGE_RULE

# Volume types the kubelet always mounts read-only (the API's own data and image volumes).
READ_ONLY_VOLUMES = frozenset({"configMap", "secret", "downwardAPI", "projected", "image"})
# Every volume type of core/v1, to name a volume's type in messages; a key not listed here (a
# type from a newer API) leaves the type unknown, which is judged writable.
VOLUME_TYPES = READ_ONLY_VOLUMES | {
    "hostPath",
    "emptyDir",
    "persistentVolumeClaim",
    "ephemeral",
    "csi",
    "gitRepo",
    "nfs",
    "iscsi",
    "rbd",
    "cephfs",
    "fc",
    "flexVolume",
    "glusterfs",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "cinder",
    "vsphereVolume",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "quobyte",
    "photonPersistentDisk",
    "flocker",
}
# The kubelet's default terminationMessagePath (the API server sets it on every container).
TERMINATION_LOG = "/dev/termination-log"
# Where the kubelet and container runtimes keep their state and sockets: a hostPath at, above
# or below one of these hands a pod the node's containers, never allowed.
RUNTIME_STATE = (
    "/var/lib/containerd",
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/docker",
    "/run/docker",
    "/var/run/docker",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/var/lib/containers",
    "/run/containers",
    "/var/run/containers",
    "/run/crio",
    "/var/run/crio",
    "/run/cri-dockerd.sock",
    "/var/run/cri-dockerd.sock",
    "/var/lib/kubelet",
    "/etc/kubernetes",
)
# Pod Security baseline's SELinux types.
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"

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
        RuleInfo(
            WRITABLE_MOUNT,
            "Writable mount outside the writable roots",
            "A writable volume (or a file the kubelet places: terminationMessagePath, a "
            "volumeDevices path) mounted over the application's code lets the container "
            "change that code, read-only root filesystem or not.",
            "Mount writable volumes only under the policy's writablePaths.roots (or an image "
            "profile's paths), or mount them readOnly: true.",
            "error",
        ),
        RuleInfo(
            RUN_AS_NON_ROOT,
            "Container may run as root",
            "With no non-zero runAsUser, the image's user applies, which is often root.",
            "Set securityContext.runAsNonRoot: true (podlock lint --fix does), or a non-zero "
            "runAsUser.",
            "error",
        ),
        RuleInfo(
            PRIVILEGE_ESCALATION,
            "Privilege escalation allowed",
            "Unless allowPrivilegeEscalation is false, a setuid binary in the image gives the "
            "process more privileges than it started with.",
            "Set securityContext.allowPrivilegeEscalation: false (podlock lint --fix does).",
            "error",
        ),
        RuleInfo(
            CAPABILITIES,
            "Capability outside the allowed set",
            "Capabilities such as SYS_ADMIN, SYS_PTRACE or NET_ADMIN make a container "
            "privileged in all but name (SYS_ADMIN can remount the root filesystem "
            "read-write).",
            "Add only capabilities from the policy's capabilities.allowed (Pod Security "
            "baseline's set by default).",
            "error",
        ),
        RuleInfo(
            SECURITY_PROFILE,
            "Confinement switched off",
            "An Unconfined seccomp or AppArmor profile, an SELinux type outside the baseline "
            "set, or an Unmasked /proc removes the walls that keep a container from changing "
            "itself and the node.",
            "Leave seccompProfile and appArmorProfile at RuntimeDefault (or Localhost), use a "
            "container_t SELinux type, and leave procMount at Default.",
            "error",
        ),
        RuleInfo(
            HOST_ACCESS,
            "Access to the node",
            "hostPID, hostIPC, hostNetwork, hostPath volumes and Windows hostProcess reach the "
            "node and other containers; shareProcessNamespace lets containers that can ptrace "
            "each other change each other's code.",
            "Remove the host namespace or hostPath; mount only hostPaths the policy lists in "
            "hostPaths.readOnly, readOnly: true; give each container of a shared process "
            "namespace its own non-zero runAsUser.",
            "error",
        ),
        RuleInfo(
            MUTABLE_IMAGE,
            "Mutable image reference",
            "An image named by tag can be pushed again under the same name: the same spec then "
            "runs different code (imagePullPolicy: Always pulls it again on every start).",
            "Name the image by digest (image@sha256:...).",
            "warning",
        ),
    )
}


class Violation:
    """One finding. A plain class, not a frozen dataclass: compiled by mypyc it is a native
    object, where a frozen dataclass is built through Python-level setattr calls, and the
    strict profile builds one for every tag-only image of every pod."""

    def __init__(
        self,
        rule: str,
        container: str,  # "" for the pod itself
        path: Path,  # relative to the pod spec: the field to change
        message: str,
    ) -> None:
        self.rule = rule
        self.container = container
        self.path = path
        self.message = message

    def _fields(self) -> tuple[str, str, Path, str]:
        return (self.rule, self.container, self.path, self.message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Violation) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"Violation{self._fields()!r}"

    def describe(self) -> str:
        where = f'container "{self.container}"' if self.container else "pod"
        return f"{where}: {self.rule}: {self.message}"


def evaluate(
    spec: Mapping[str, Any],
    settings: Settings,
    context: Context,
    only: Iterable[str] | None = None,
    annotations: Mapping[str, object] | None = None,
) -> list[Violation]:
    """Judge every container of a pod spec (or only the containers named in `only`).

    Pod-level findings (host namespaces, hostPath volumes) carry the container name "" and
    are judged only for a whole pod (`only` None): an ephemeral-container update cannot change
    them. `annotations` are the pod's, for AppArmor's annotation form (lint reads it; at
    admission the API server has copied it into the field already).
    Runs on every admission: the loop only tests, and a Violation is built only when one is found.
    """
    names = None if only is None else frozenset(only)
    enabled = settings.enabled_rules
    privileged = PRIVILEGED in enabled
    root_user = ROOT_USER in enabled
    windows = mapping(spec.get("os")).get("name") == "windows"
    writable_root = WRITABLE_ROOT in enabled and not windows
    writable_mount = WRITABLE_MOUNT in enabled and not windows
    non_root = RUN_AS_NON_ROOT in enabled and not windows
    escalation = PRIVILEGE_ESCALATION in enabled and not windows
    capabilities = CAPABILITIES in enabled and not windows
    profiles = SECURITY_PROFILE in enabled and not windows
    images = settings.image_action != "off"
    host = HOST_ACCESS in enabled
    pod_context = mapping(spec.get("securityContext"))
    pod_user = pod_context.get("runAsUser")
    pod_root = _is_zero(pod_user)
    pod_non_root = pod_context.get("runAsNonRoot")
    unset_breaks = context != "template"  # see Context
    found: list[Violation] = []
    volumes: dict[str, tuple[str, Mapping[str, Any]]] | None = None  # built when first needed
    if names is None:
        if profiles:
            _pod_profiles(pod_context, annotations, found)
        if host:
            _host_access(spec, settings, found)
    for ref in containers(spec):
        if names is not None and ref.name not in names:
            continue
        container = ref.container
        context_of = mapping(container.get("securityContext"))
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
        if non_root:
            user = context_of.get("runAsUser", pod_user)
            if not _is_non_zero(user):
                value = context_of.get("runAsNonRoot")
                value = pod_non_root if value is None else value
                if value is not True and (value is not None or unset_breaks):
                    shown = "not set" if value is None else f"{value!r}".lower()
                    found.append(
                        _violation(
                            ref,
                            RUN_AS_NON_ROOT,
                            "runAsNonRoot",
                            f"runAsNonRoot is {shown} and no non-zero runAsUser applies",
                        )
                    )
        if escalation:
            value = context_of.get("allowPrivilegeEscalation")
            if value is not False and (value is not None or unset_breaks):
                shown = "not set" if value is None else f"{value!r}".lower()
                found.append(
                    _violation(
                        ref,
                        PRIVILEGE_ESCALATION,
                        "allowPrivilegeEscalation",
                        f"allowPrivilegeEscalation is {shown}",
                    )
                )
        if capabilities:
            added = mapping(context_of.get("capabilities")).get("add")
            if isinstance(added, list) and added:
                _capabilities(ref, added, settings, found)
        if profiles and context_of:
            _container_profiles(ref, context_of, found)
        if host and mapping(context_of.get("windowsOptions")).get("hostProcess") is True:
            found.append(
                _violation(ref, HOST_ACCESS, "windowsOptions", "windowsOptions.hostProcess is true")
            )
        if profiles and annotations:
            apparmor = annotations.get(APPARMOR_ANNOTATION + ref.name)
            if apparmor == "unconfined":
                found.append(
                    Violation(
                        SECURITY_PROFILE,
                        ref.name,
                        (),
                        f"annotation {APPARMOR_ANNOTATION}{ref.name} is unconfined",
                    )
                )
        if writable_mount:
            if volumes is None and container.get("volumeMounts"):
                volumes = _volumes(spec)
            _mounts(ref, volumes or {}, settings, found)
        if images:
            image = container.get("image")
            if isinstance(image, str) and image and "@" not in image:
                always = container.get("imagePullPolicy") == "Always"
                found.append(
                    Violation(
                        MUTABLE_IMAGE,
                        ref.name,
                        (*ref.path, "image"),
                        f"image {image} is not pinned by a digest"
                        + (" (and imagePullPolicy is Always)" if always else ""),
                    )
                )
    return found


def _is_non_zero(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value != 0


def _volumes(spec: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Volume name -> (its type, the volume)."""
    found: dict[str, tuple[str, Mapping[str, Any]]] = {}
    items = spec.get("volumes")
    if isinstance(items, list):
        for volume in items:
            if isinstance(volume, dict) and isinstance(volume.get("name"), str):
                kind = next((k for k in volume if k in VOLUME_TYPES), "")
                found[volume["name"]] = (kind, volume)
    return found


def _allowed(path: str, ref: ContainerRef, settings: Settings) -> bool:
    image = ref.container.get("image")
    image = image if isinstance(image, str) else ""
    return _writable_here(path, image, settings.writable_roots, settings.image_profiles)


@functools.lru_cache(maxsize=4096)
def _writable_here(
    path: str, image: str, roots: tuple[str, ...], profiles: tuple[ImageProfile, ...]
) -> bool:
    """A clean path under the roots or the image's profile paths (cached: pods repeat the
    same few mounts and images)."""
    return under_any(path, roots) or under_any(path, profile_paths(image, profiles))


def _mounts(
    ref: ContainerRef,
    volumes: Mapping[str, tuple[str, Mapping[str, Any]]],
    settings: Settings,
    found: list[Violation],
) -> None:
    """Every place a writable file or directory lands in the container, held to the roots."""
    container = ref.container
    mounts = container.get("volumeMounts")
    if isinstance(mounts, list):
        for index, mount in enumerate(mounts):
            if not isinstance(mount, dict) or mount.get("readOnly") is True:
                continue
            name = mount.get("name")
            kind = volumes.get(name, ("", {}))[0] if isinstance(name, str) else ""
            if kind in READ_ONLY_VOLUMES:
                continue
            raw = mount.get("mountPath")
            path = clean_path(raw) if isinstance(raw, str) and raw else None
            what = f"writable volume {name} ({kind or 'unknown type'})"
            if path is None:
                message = f"{what} has an unusable mountPath {raw!r}"
            elif _allowed(path, ref, settings):
                continue
            else:
                message = f"{what} at {path} is outside the writable roots"
            found.append(
                Violation(WRITABLE_MOUNT, ref.name, (*ref.path, "volumeMounts", index), message)
            )
    termination = container.get("terminationMessagePath")
    if isinstance(termination, str) and termination != TERMINATION_LOG:
        path = clean_path(termination) if termination else None
        if path is None or (path != TERMINATION_LOG and not _allowed(path, ref, settings)):
            found.append(
                Violation(
                    WRITABLE_MOUNT,
                    ref.name,
                    (*ref.path, "terminationMessagePath"),
                    f"terminationMessagePath {termination!r} (a writable file the kubelet "
                    "mounts) is outside the writable roots",
                )
            )
    devices = container.get("volumeDevices")
    if isinstance(devices, list):
        for index, device in enumerate(devices):
            raw = device.get("devicePath") if isinstance(device, dict) else None
            path = clean_path(raw) if isinstance(raw, str) and raw else None
            if path is not None and (under(path, "/dev") or _allowed(path, ref, settings)):
                continue
            found.append(
                Violation(
                    WRITABLE_MOUNT,
                    ref.name,
                    (*ref.path, "volumeDevices", index),
                    f"volumeDevices devicePath {raw!r} is outside /dev and the writable roots",
                )
            )


def _capabilities(
    ref: ContainerRef, added: list[Any], settings: Settings, found: list[Violation]
) -> None:
    bad = [
        name if isinstance(name, str) else repr(name)
        for name in added
        if not isinstance(name, str) or capability_name(name) not in settings.allowed_capabilities
    ]
    if bad:
        found.append(
            Violation(
                CAPABILITIES,
                ref.name,
                (*ref.path, "securityContext", "capabilities", "add"),
                f"capabilities.add has {', '.join(bad)}, outside the allowed set",
            )
        )


def _selinux_problem(options: Mapping[str, Any]) -> str:
    kind = options.get("type")
    if kind is not None and kind not in SELINUX_TYPES:
        return f"seLinuxOptions.type {kind!r} is not a container type"
    if options.get("user") or options.get("role"):
        return "seLinuxOptions sets a user or role"
    return ""


def _unconfined(context: Mapping[str, Any], field: str) -> bool:
    profile = context.get(field)
    return isinstance(profile, dict) and profile.get("type") == "Unconfined"


def _pod_profiles(
    context: Mapping[str, Any], annotations: Mapping[str, object] | None, found: list[Violation]
) -> None:
    path: Path = ("securityContext",)
    for field in ("seccompProfile", "appArmorProfile"):
        if _unconfined(context, field):
            found.append(
                Violation(SECURITY_PROFILE, "", (*path, field), f"pod {field} is Unconfined")
            )
    if problem := _selinux_problem(mapping(context.get("seLinuxOptions"))):
        found.append(Violation(SECURITY_PROFILE, "", (*path, "seLinuxOptions"), f"pod {problem}"))


def _container_profiles(
    ref: ContainerRef, context: Mapping[str, Any], found: list[Violation]
) -> None:
    for field in ("seccompProfile", "appArmorProfile"):
        if _unconfined(context, field):
            found.append(_violation(ref, SECURITY_PROFILE, field, f"{field} is Unconfined"))
    options = context.get("seLinuxOptions")
    if isinstance(options, dict) and (problem := _selinux_problem(options)):
        found.append(_violation(ref, SECURITY_PROFILE, "seLinuxOptions", problem))
    proc = context.get("procMount")
    if proc is not None and proc != "Default":
        found.append(_violation(ref, SECURITY_PROFILE, "procMount", f"procMount is {proc!r}"))


def _host_access(spec: Mapping[str, Any], settings: Settings, found: list[Violation]) -> None:
    for field in ("hostPID", "hostIPC", "hostNetwork"):
        if spec.get(field) is True:
            found.append(Violation(HOST_ACCESS, "", (field,), f"{field} is true"))
    pod_context = mapping(spec.get("securityContext"))
    if mapping(pod_context.get("windowsOptions")).get("hostProcess") is True:
        found.append(
            Violation(
                HOST_ACCESS,
                "",
                ("securityContext", "windowsOptions", "hostProcess"),
                "windowsOptions.hostProcess is true",
            )
        )
    volumes = spec.get("volumes")
    if isinstance(volumes, list):
        for index, volume in enumerate(volumes):
            if isinstance(volume, dict) and "hostPath" in volume:
                problem = _host_path_problem(volume, list(containers(spec)), settings)
                if problem:
                    found.append(Violation(HOST_ACCESS, "", ("volumes", index), problem))
    if spec.get("shareProcessNamespace") is True and _may_ptrace(
        list(containers(spec)), pod_context
    ):
        found.append(
            Violation(
                HOST_ACCESS,
                "",
                ("shareProcessNamespace",),
                "shareProcessNamespace is true and containers may ptrace each other (give each "
                "its own non-zero runAsUser, without SYS_PTRACE)",
            )
        )


def _host_path_problem(
    volume: Mapping[str, Any], refs: list[ContainerRef], settings: Settings
) -> str:
    name = volume.get("name")
    raw = mapping(volume.get("hostPath")).get("path")
    path = clean_path(raw) if isinstance(raw, str) and raw else None
    if path is None:
        return f"hostPath volume {name} has an unusable path {raw!r}"
    if any(under(path, state) or under(state, path) for state in RUNTIME_STATE):
        return f"hostPath volume {name} at {path} reaches the container runtime's state"
    if not under_any(path, settings.host_paths_read_only):
        return f"hostPath volume {name} ({path}) is not in hostPaths.readOnly"
    for ref in refs:
        mounts = ref.container.get("volumeMounts")
        for mount in mounts if isinstance(mounts, list) else ():
            if (
                isinstance(mount, dict)
                and mount.get("name") == name
                and mount.get("readOnly") is not True
            ):
                return f"hostPath volume {name} is mounted writable in container {ref.name}"
    return ""


def _may_ptrace(refs: list[ContainerRef], pod_context: Mapping[str, Any]) -> bool:
    """Whether containers sharing a process namespace can ptrace one another: one is
    privileged or adds SYS_PTRACE (or ALL), or two may run as the same user (an unset user
    is the image's, which may be anyone's)."""
    users: list[object] = []
    for ref in refs:
        context = mapping(ref.container.get("securityContext"))
        if context.get("privileged") is True:
            return True
        added = mapping(context.get("capabilities")).get("add")
        if isinstance(added, list) and any(
            isinstance(a, str) and capability_name(a) in ("SYS_PTRACE", "ALL") for a in added
        ):
            return True
        users.append(context.get("runAsUser", pod_context.get("runAsUser")))
    if len(users) < 2:
        return False
    return not all(_is_non_zero(u) for u in users) or len(set(users)) < len(users)


@functools.lru_cache(maxsize=1024)
def profile_paths(image: str, profiles: tuple[ImageProfile, ...]) -> tuple[str, ...]:
    """The writable paths image profiles give this image (cached: a cluster runs few images)."""
    if not image or not profiles:
        return ()
    repo = image_repository(image)
    return tuple(
        path
        for profile in profiles
        if any(fnmatch.fnmatchcase(repo, pattern) for pattern in profile.images)
        for path in profile.paths
    )


@functools.lru_cache(maxsize=4096)
def image_repository(image: str) -> str:
    """`docker.io/library/nginx:1.27@sha256:…` -> `nginx`; `quay.io/org/app:v1` -> `org/app`."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag, not a registry port
        name = name[:colon]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


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


def exemption(
    ref: PodSpecRef, namespace: str, settings: Settings, old: PodSpecRef | None = None
) -> str | None:
    """Why this pod is not judged at all, or None. `namespace` is where it is being created.

    `old` is the object before an UPDATE: with late-exemption on, the opt-out counts only if
    it was there already, so it cannot be granted after admission.
    """
    if namespace in settings.exempt_namespaces:
        return f"namespace {namespace} is exempt"
    if namespace in settings.pod_opt_out_namespaces and _opts_out(ref):
        if old is not None and LATE_EXEMPTION in settings.enabled_rules and not _opts_out(old):
            return None
        return f"{OPT_OUT_KEY} is allowed in namespace {namespace}"
    return None


def late_exemption(
    ref: PodSpecRef, old: PodSpecRef, namespace: str, settings: Settings
) -> list[Violation]:
    """A pod UPDATE that adds the opt-out where it would count: refused by late-exemption,
    since an exemption granted after admission skips what admission judged. Removing the
    opt-out, or keeping one the pod was created with, is no finding; nor is any other change
    (labels, finalizers, owner references: the spec of a running pod is not judged again)."""
    if (
        LATE_EXEMPTION not in settings.enabled_rules
        or namespace in settings.exempt_namespaces
        or namespace not in settings.pod_opt_out_namespaces
        or not _opts_out(ref)
        or _opts_out(old)
    ):
        return []
    where = "label" if ref.labels.get(OPT_OUT_KEY) == "true" else "annotation"
    message = f"the {where} {OPT_OUT_KEY} can only be set when the pod is created"
    return [Violation(LATE_EXEMPTION, "", (), message)]


def _opts_out(ref: PodSpecRef) -> bool:
    return ref.annotations.get(OPT_OUT_KEY) == "true" or ref.labels.get(OPT_OUT_KEY) == "true"
