"""The hardening plan: which RFC 6902 "add" operations make a pod spec immutable.

One plan feeds both the webhook's JSON Patch and `podlock lint --fix`, so the two can never
disagree. The plan is built directly from the spec (no deep copy, no generic diff): measured,
a generic `jsonpatch.make_patch` over a whole pod costs ~25x more per admission.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from webhook.config import ImageProfile, Settings, capability_name, clean_path, under_any
from webhook.podspecs import ContainerRef, Path, PodSpecRef, containers
from webhook.policy import (
    PRIVILEGE_ESCALATION,
    RUN_AS_NON_ROOT,
    WRITABLE_MOUNT,
    WRITABLE_ROOT,
    image_repository,
    profile_paths,
)

__all__ = ["Add", "Hardening", "apply", "image_repository", "plan", "plan_hardening"]

WRITABLE_PATHS_KEY = "podlock.io/writable-paths"
MAX_NAME = 63  # volume names are DNS labels


class Add:
    """One RFC 6902 "add": a new key in a mapping, or (last segment "-") a list append.

    Adding a key that exists with a null value replaces the null, as RFC 6902 says.
    """

    def __init__(self, path: Path, value: Any) -> None:
        self.path = path  # relative to the pod spec
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Add) and (self.path, self.value) == (other.path, other.value)

    def __repr__(self) -> str:
        return f"Add({self.path!r}, {self.value!r})"


class Hardening:
    def __init__(
        self,
        ops: tuple[Add, ...],
        changes: tuple[str, ...],  # per changed container, "set …": admission warnings say what
        notes: tuple[str, ...],  # what was asked for but not done, and why
        keys: frozenset[str] = frozenset(),  # the securityContext keys set, in any container
    ) -> None:
        self.ops = ops
        self.changes = changes
        self.notes = notes
        self.keys = keys


NOTHING = Hardening((), (), ())
_NO_CONTEXT: Mapping[str, Any] = {}  # read, never written


def plan(ref: PodSpecRef, settings: Settings) -> list[Add]:
    return list(plan_hardening(ref, settings).ops)


def plan_hardening(
    ref: PodSpecRef, settings: Settings, only_ephemeral: Iterable[str] | None = None
) -> Hardening:
    """Set, where unset, what the enabled rules want of every container's securityContext:
    readOnlyRootFilesystem (with an emptyDir at each writable path), runAsNonRoot,
    allowPrivilegeEscalation false, and optionally capabilities.drop [ALL] and a
    RuntimeDefault seccomp profile. Explicit values are left for validation to judge.

    With `only_ephemeral`, only the named ephemeral containers are considered and no volumes
    are added: a running pod's volumes cannot change (a pods/ephemeralcontainers UPDATE).
    (Runs on every admission: written for speed, without a helper per step.)
    """
    spec = ref.spec
    if ref.is_windows:  # the API server rejects these fields on Windows pods
        return NOTHING
    enabled = settings.enabled_rules
    read_only = WRITABLE_ROOT in enabled
    non_root = RUN_AS_NON_ROOT in enabled
    no_escalation = PRIVILEGE_ESCALATION in enabled
    drop_all = settings.drop_all_capabilities
    pod_context = spec.get("securityContext")
    pod_context = pod_context if isinstance(pod_context, dict) else {}
    seccomp = settings.seccomp_runtime_default and pod_context.get("seccompProfile") is None
    if not (read_only or non_root or no_escalation or drop_all or seccomp):
        return NOTHING
    pod_user = pod_context.get("runAsUser")
    pod_non_root = pod_context.get("runAsNonRoot")
    ephemeral = None if only_ephemeral is None else frozenset(only_ephemeral)
    annotation = ref.annotations.get(WRITABLE_PATHS_KEY) if read_only else None
    if annotation and isinstance(annotation, str):
        requested, notes = parse_writable_paths(annotation, settings)
    else:
        requested, notes = {}, []

    volumes = spec.get("volumes")
    can_add_volumes = ephemeral is None and (volumes is None or isinstance(volumes, list))
    if read_only and ephemeral is None and not can_add_volumes:
        notes.append("spec.volumes is not a list: no emptyDir volumes added")
    taken = _volume_names(volumes)
    empty_dir = _empty_dir(settings)
    new_volumes: list[dict[str, Any]] = []
    ops: list[Add] = []
    changes: list[str] = []
    keys: set[str] = set()

    for ref_c in containers(spec):
        group, at, name, container = ref_c.group, ref_c.path, ref_c.name, ref_c.container
        if ephemeral is not None and (group != "ephemeralContainers" or name not in ephemeral):
            continue
        context = container.get("securityContext")
        if context is not None and not isinstance(context, dict):
            notes.append(f'container "{name}": securityContext is not a mapping: left alone')
            continue
        own = context if context is not None else _NO_CONTEXT
        wanted: dict[str, Any] = {}
        made_read_only = read_only and own.get("readOnlyRootFilesystem") is None
        if made_read_only:
            wanted["readOnlyRootFilesystem"] = True
        if non_root:
            user = own.get("runAsUser", pod_user)
            if not (isinstance(user, int) and not isinstance(user, bool) and user != 0):
                value = own.get("runAsNonRoot")
                if (pod_non_root if value is None else value) is None:
                    wanted["runAsNonRoot"] = True
        capabilities = own.get("capabilities")
        if no_escalation and own.get("allowPrivilegeEscalation") is None:
            # The API server refuses false next to privileged or an added SYS_ADMIN: leave
            # those for validation to refuse by name.
            added = capabilities.get("add") if isinstance(capabilities, dict) else None
            if own.get("privileged") is not True and not (
                isinstance(added, list)
                and any(isinstance(a, str) and capability_name(a) == "SYS_ADMIN" for a in added)
            ):
                wanted["allowPrivilegeEscalation"] = False
        if drop_all and capabilities is None:
            wanted["capabilities"] = {"drop": ["ALL"]}
        if seccomp and own.get("seccompProfile") is None:
            wanted["seccompProfile"] = {"type": "RuntimeDefault"}
        drop = drop_all and isinstance(capabilities, dict) and capabilities.get("drop") is None
        if not wanted and not drop:
            continue
        if context is None:
            ops.append(Add((*at, "securityContext"), wanted))
        else:
            ops += [Add((*at, "securityContext", key), value) for key, value in wanted.items()]
        if drop:
            ops.append(Add((*at, "securityContext", "capabilities", "drop"), ["ALL"]))
            wanted["capabilities"] = {"drop": ["ALL"]}
        keys.update(wanted)
        change = f'set {_describe(wanted)} on container "{name}"'
        if made_read_only and can_add_volumes and group != "ephemeralContainers":
            existing = container.get("volumeMounts")
            if existing is not None and not isinstance(existing, list):
                notes.append(f'container "{name}": volumeMounts is not a list: no emptyDir added')
            elif paths := _unmounted(writable_paths_for(ref_c, settings, requested), existing):
                mounts = []
                for path in paths:
                    volume = _volume_name(name, path)
                    if volume in taken:
                        volume = _unique_name(volume, taken)
                    taken.add(volume)
                    new_volumes.append({"name": volume, "emptyDir": empty_dir.copy()})
                    mounts.append({"name": volume, "mountPath": path})
                if existing is None:  # absent or null: the list is created with the mounts
                    ops.append(Add((*at, "volumeMounts"), mounts))
                else:
                    ops += [Add((*at, "volumeMounts", "-"), mount) for mount in mounts]
                change += f", emptyDir at {', '.join(paths)}"
        changes.append(change)  # warnings are cut to the API server's limit, audit is not

    if new_volumes:
        if volumes is None:
            ops.append(Add(("volumes",), new_volumes))
        else:
            ops += [Add(("volumes", "-"), volume) for volume in new_volumes]
    return Hardening(tuple(ops), tuple(changes), tuple(notes), frozenset(keys))


_SHOWN = {
    "readOnlyRootFilesystem": "readOnlyRootFilesystem: true",
    "runAsNonRoot": "runAsNonRoot: true",
    "allowPrivilegeEscalation": "allowPrivilegeEscalation: false",
    "capabilities": "capabilities.drop: [ALL]",
    "seccompProfile": "seccompProfile: RuntimeDefault",
}
# "readOnlyRootFilesystem: true, runAsNonRoot: true" per tuple of keys set; bounded by the
# orderings of the five keys above (a plain dict: a lookup here is cheaper than lru_cache's).
_DESCRIBED: dict[tuple[str, ...], str] = {}


def _describe(wanted: Mapping[str, Any]) -> str:
    keys = tuple(wanted)
    text = _DESCRIBED.get(keys)
    if text is None:
        text = _DESCRIBED[keys] = ", ".join(_SHOWN[key] for key in keys)
    return text


def writable_paths_for(
    ref: ContainerRef, settings: Settings, requested: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    """Defaults, image profiles and the annotation, keeping only the outermost of nested paths."""
    image = ref.container.get("image")
    image = image if isinstance(image, str) else ""
    base = _image_paths(image, settings.default_writable_paths, settings.image_profiles)
    extra = requested.get("*", ()) + requested.get(ref.name, ()) if requested else ()
    if extra and WRITABLE_MOUNT in settings.enabled_rules:
        # An entry under another image's profile is not this container's to have.
        own = (*settings.writable_roots, *profile_paths(image, settings.image_profiles))
        extra = tuple(path for path in extra if under_any(path, own))
    return _outermost((*base, *extra)) if extra else base


@functools.lru_cache(maxsize=1024)
def _image_paths(
    image: str, defaults: tuple[str, ...], profiles: tuple[ImageProfile, ...]
) -> tuple[str, ...]:
    """The defaults and the image's profile paths (cached: a cluster runs few images)."""
    return _outermost((*defaults, *profile_paths(image, profiles)))


@functools.lru_cache(maxsize=1024)
def _outermost(paths: tuple[str, ...]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(paths))
    return tuple(p for p in unique if not any(_covers(o, p) for o in unique if o != p))


def _unmounted(wanted: Sequence[str], existing: list[Any] | None) -> list[str]:
    """The wanted paths that no existing mount covers (a mount covers everything below it)."""
    left = list(wanted)
    for mount in existing or ():
        path = mount.get("mountPath") if isinstance(mount, dict) else None
        if isinstance(path, str) and path:
            clean = clean_path(path)
            if clean is not None:
                left = [p for p in left if not _covers(clean, p)]
    return left


# (container, path) -> volume name; emptied when it reaches 4096 entries (see _POINTERS).
_VOLUME_NAMES: dict[tuple[str, str], str] = {}


def _volume_name(container: str, path: str) -> str:
    """A DNS label: names too long keep a digest of the whole."""
    name = _VOLUME_NAMES.get((container, path))
    if name is None:
        name = f"podlock-{_slug(container)}-{_slug(path)}"
        if len(name) > MAX_NAME:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            name = f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
        if len(_VOLUME_NAMES) >= 4096:
            _VOLUME_NAMES.clear()
        _VOLUME_NAMES[(container, path)] = name
    return name


def _empty_dir(settings: Settings) -> dict[str, str]:
    spec: dict[str, str] = {}
    if settings.empty_dir_medium:
        spec["medium"] = settings.empty_dir_medium
    if settings.empty_dir_size_limit:
        spec["sizeLimit"] = settings.empty_dir_size_limit
    return spec


def _volume_names(volumes: object) -> set[str]:
    if not isinstance(volumes, list):
        return set()
    return {v["name"] for v in volumes if isinstance(v, dict) and isinstance(v.get("name"), str)}


@functools.lru_cache(maxsize=4096)
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "root"


def _unique_name(base: str, taken: set[str]) -> str:
    name, counter = base, 2
    while name in taken:
        suffix = f"-{counter}"
        name = f"{base[: MAX_NAME - len(suffix)].rstrip('-')}{suffix}"
        counter += 1
    return name


def _covers(mount: str, path: str) -> bool:
    return mount == path or path.startswith(mount.rstrip("/") + "/")


def parse_writable_paths(
    value: str, settings: Settings
) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Parse `podlock.io/writable-paths`.

    Syntax: entries separated by `;` or newlines; each is `container=path,path` or just
    `path,path` (every container). Example: `web=/var/lib/web,/cache; /scratch`.
    Returns {container or "*": paths} and notes for entries that were ignored.
    """
    result: dict[str, list[str]] = {}
    notes: list[str] = []
    if not value:
        return {}, notes
    for entry in re.split(r"[;\n]", value):
        entry = entry.strip()
        if not entry:
            continue
        target, _, paths = entry.rpartition("=")
        target = target.strip() or "*"
        for raw in paths.split(","):
            path = raw.strip()
            if not path:
                continue
            clean = clean_path(path) if path.startswith("/") else None
            if clean is None:
                notes.append(
                    f"{WRITABLE_PATHS_KEY}: {path!r} is not a clean absolute path: ignored"
                )
                continue
            if _forbidden(clean, settings.forbidden_writable_paths) or (
                WRITABLE_MOUNT in settings.enabled_rules and not _allowlisted(clean, settings)
            ):
                notes.append(f"{WRITABLE_PATHS_KEY}: {clean} is not allowed by the policy: ignored")
                continue
            path = clean
            result.setdefault(target, []).append(path)
    return {k: tuple(v) for k, v in result.items()}, notes


def _allowlisted(path: str, settings: Settings) -> bool:
    """Under a writable root or some image profile's path (which container may have it is
    decided per container, by its image)."""
    if under_any(path, settings.writable_roots):
        return True
    return any(under_any(path, profile.paths) for profile in settings.image_profiles)


def _forbidden(path: str, forbidden: Iterable[str]) -> bool:
    # A forbidden path, anything below it (but for /), or a parent that would hide it.
    return any(path == f or (f != "/" and _covers(f, path)) or _covers(path, f) for f in forbidden)


# path -> JSON Pointer. Plans repeat the same few shapes; emptied when it reaches 4096
# entries. A plain dict: from compiled code its lookup costs a fraction of lru_cache's call.
_POINTERS: dict[Path, str] = {}


def pointer(path: Path) -> str:
    """RFC 6901 JSON Pointer for a path."""
    text = _POINTERS.get(path)
    if text is None:
        if len(_POINTERS) >= 4096:
            _POINTERS.clear()
        text = "".join("/" + str(step).replace("~", "~0").replace("/", "~1") for step in path)
        _POINTERS[path] = text
    return text


def to_json_patch(ops: Iterable[Add], prefix: Path) -> list[dict[str, Any]]:
    base = pointer(prefix)
    return [{"op": "add", "path": base + pointer(op.path), "value": op.value} for op in ops]


def apply(doc: Any, ops: Sequence[Add], prefix: Path = ()) -> Any:
    """A new document with the ops applied (pure; used by tests and by --fix's self-check)."""
    result = copy.deepcopy(doc)
    for op in ops:
        *parents, last = (*prefix, *op.path)
        target = result
        for step in parents:
            target = target[step]
        if last == "-":
            target.append(copy.deepcopy(op.value))
        else:
            target[last] = copy.deepcopy(op.value)
    return result
