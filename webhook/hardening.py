"""The hardening plan: which RFC 6902 "add" operations make a pod spec immutable.

One plan feeds both the webhook's JSON Patch and `podlock lint --fix`, so the two can never
disagree. The plan is built directly from the spec (no deep copy, no generic diff): measured,
a generic `jsonpatch.make_patch` over a whole pod costs ~25x more per admission.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from webhook.config import ImageProfile, Settings, normalize_path
from webhook.podspecs import ContainerRef, Path, PodSpecRef, containers
from webhook.policy import WRITABLE_ROOT

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
    ) -> None:
        self.ops = ops
        self.changes = changes
        self.notes = notes


NOTHING = Hardening((), (), ())


def plan(ref: PodSpecRef, settings: Settings) -> list[Add]:
    return list(plan_hardening(ref, settings).ops)


def plan_hardening(
    ref: PodSpecRef, settings: Settings, only_ephemeral: Iterable[str] | None = None
) -> Hardening:
    """Harden every container whose readOnlyRootFilesystem is unset.

    With `only_ephemeral`, only the named ephemeral containers are considered and no volumes
    are added: a running pod's volumes cannot change (a pods/ephemeralcontainers UPDATE).
    (Runs on every admission: written for speed, without a helper per step.)
    """
    spec = ref.spec
    if ref.is_windows:  # the API server rejects readOnlyRootFilesystem on Windows pods
        return NOTHING
    if WRITABLE_ROOT not in settings.enabled_rules:  # the rule this plan satisfies is off
        return NOTHING
    ephemeral = None if only_ephemeral is None else frozenset(only_ephemeral)
    annotation = ref.annotations.get(WRITABLE_PATHS_KEY)
    if annotation and isinstance(annotation, str):
        requested, notes = parse_writable_paths(annotation, settings)
    else:
        requested, notes = {}, []

    volumes = spec.get("volumes")
    can_add_volumes = ephemeral is None and (volumes is None or isinstance(volumes, list))
    if ephemeral is None and not can_add_volumes:
        notes.append("spec.volumes is not a list: no emptyDir volumes added")
    taken = _volume_names(volumes)
    empty_dir = _empty_dir(settings)
    new_volumes: list[dict[str, Any]] = []
    ops: list[Add] = []
    changes: list[str] = []

    for ref_c in containers(spec):
        group, at, name, container = ref_c.group, ref_c.path, ref_c.name, ref_c.container
        if ephemeral is not None and (group != "ephemeralContainers" or name not in ephemeral):
            continue
        context = container.get("securityContext")
        if context is None:
            ops.append(Add((*at, "securityContext"), {"readOnlyRootFilesystem": True}))
        elif not isinstance(context, dict):
            notes.append(f'container "{name}": securityContext is not a mapping: left alone')
            continue
        elif context.get("readOnlyRootFilesystem") is not None:
            continue  # true stays as written; anything else is validation's to refuse
        else:
            ops.append(Add((*at, "securityContext", "readOnlyRootFilesystem"), True))
        change = f'set readOnlyRootFilesystem: true on container "{name}"'
        if can_add_volumes and group != "ephemeralContainers":
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
    return Hardening(tuple(ops), tuple(changes), tuple(notes))


def writable_paths_for(
    ref: ContainerRef, settings: Settings, requested: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    """Defaults, image profiles and the annotation, keeping only the outermost of nested paths."""
    image = ref.container.get("image")
    base = _image_paths(
        image if isinstance(image, str) else None,
        settings.default_writable_paths,
        settings.image_profiles,
    )
    extra = requested.get("*", ()) + requested.get(ref.name, ()) if requested else ()
    return _outermost((*base, *extra)) if extra else base


@functools.lru_cache(maxsize=1024)
def _image_paths(
    image: str | None, defaults: tuple[str, ...], profiles: tuple[ImageProfile, ...]
) -> tuple[str, ...]:
    """The defaults and the image's profile paths (cached: a cluster runs few images)."""
    if image is None:
        return _outermost(defaults)
    repo = image_repository(image)
    profiled = (
        path
        for profile in profiles
        if any(fnmatch.fnmatchcase(repo, pattern) for pattern in profile.images)
        for path in profile.paths
    )
    return _outermost((*defaults, *profiled))


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
            path = normalize_path(path)
            left = [p for p in left if not _covers(path, p)]
    return left


@functools.lru_cache(maxsize=4096)
def _volume_name(container: str, path: str) -> str:
    """A DNS label: names too long keep a digest of the whole."""
    name = f"podlock-{_slug(container)}-{_slug(path)}"
    if len(name) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
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
            if not path.startswith("/") or ".." in path.split("/"):
                notes.append(
                    f"{WRITABLE_PATHS_KEY}: {path!r} is not a clean absolute path: ignored"
                )
                continue
            path = normalize_path(path)
            if _forbidden(path, settings.forbidden_writable_paths):
                notes.append(f"{WRITABLE_PATHS_KEY}: {path} is not allowed by the policy: ignored")
                continue
            result.setdefault(target, []).append(path)
    return {k: tuple(v) for k, v in result.items()}, notes


def _forbidden(path: str, forbidden: Iterable[str]) -> bool:
    # A forbidden path, anything below it (but for /), or a parent that would hide it.
    return any(path == f or (f != "/" and _covers(f, path)) or _covers(path, f) for f in forbidden)


@functools.lru_cache(maxsize=4096)
def pointer(path: Path) -> str:
    """RFC 6901 JSON Pointer for a path (cached: plans repeat the same few shapes)."""
    return "".join("/" + str(step).replace("~", "~0").replace("/", "~1") for step in path)


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
