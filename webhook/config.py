"""The policy file: read once at the edge into frozen values, then passed down explicitly.

A bad file is refused with one sentence naming the file, the key and what is wrong.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, NamedTuple, cast, get_args

import yaml

Mode = Literal["enforce", "warn", "audit"]
ExecAction = Literal["deny", "warn", "audit", "off"]
MODES: tuple[Mode, ...] = get_args(Mode)
EXEC_ACTIONS: tuple[ExecAction, ...] = get_args(ExecAction)

Profile = Literal["core", "strict"]
PROFILES: tuple[Profile, ...] = get_args(Profile)
ImageAction = Literal["deny", "warn", "off"]
IMAGE_ACTIONS: tuple[ImageAction, ...] = get_args(ImageAction)

# The three rules of the design: on in every profile.
CORE_RULES = ("privileged-container", "root-user", "writable-root-filesystem")
# On/off rules that `profile: strict` switches on and `profile: core` leaves off.
STRICT_RULES = (
    "writable-mount",  # writable mounts and kubelet-placed files only under the allowlist
    "run-as-non-root",  # runAsNonRoot: true where no non-zero runAsUser applies
    "privilege-escalation",  # allowPrivilegeEscalation: false
    "capabilities",  # added capabilities only from the allowed set
    "security-profile",  # no Unconfined seccomp/AppArmor, baseline SELinux, no Unmasked /proc
    "host-access",  # no host namespaces, hostPath, hostProcess, ptrace across containers
    "ephemeral-container-as-exec",  # exec-into-hardened-pod also judges `kubectl debug`
    "late-exemption",  # the opt-out counts on UPDATE only if the old object had it
)
POD_RULES = CORE_RULES + STRICT_RULES
EXEC_RULE = "exec-into-hardened-pod"
IMAGE_RULE = "mutable-image-reference"  # deny | warn | off: an action, like the exec rule

# Writable roots: where a writable volume (or a kubelet-placed file) may be mounted.
DEFAULT_WRITABLE_ROOTS = (
    "/tmp",
    "/var/tmp",
    "/run",
    "/var/run",
    "/var/cache",
    "/var/log",
    "/var/lib",
    "/data",
    "/home",
)
# Pod Security baseline's allowed added capabilities.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
# hostPath directories a pod may mount read-only (the node's clock and zone data).
DEFAULT_HOST_PATHS_READ_ONLY = ("/etc/localtime", "/usr/share/zoneinfo")

SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEFAULT_POLICY_NAME = "default_policy.yaml"


class ConfigError(Exception):
    """The policy file is unusable; str() is one sentence for the user."""


class ImageProfile(NamedTuple):
    # A NamedTuple: the planner's cache hashes the profiles on every admission, and a tuple's
    # hash is computed in C where a frozen dataclass's is a Python-level method.
    name: str
    images: tuple[str, ...]  # repository names or shell-style patterns
    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Settings:
    default_mode: Mode = "enforce"
    """Mode used when a request or command names none."""
    profile: Profile = "strict"
    """Which rules are on when the file does not say: core = the three rules of the design."""
    enabled_rules: frozenset[str] = frozenset(POD_RULES)
    """Pod rules switched on."""
    exec_action: ExecAction = "audit"
    """What exec-into-hardened-pod does with a kubectl exec/attach in an enforce namespace."""
    image_action: ImageAction = "warn"
    """What mutable-image-reference does with a tag-only image: deny | warn | off."""
    drop_all_capabilities: bool = False
    """Harden: capabilities.drop: [ALL] where a container sets no drop list."""
    seccomp_runtime_default: bool = False
    """Harden: seccompProfile RuntimeDefault where neither the container nor the pod sets one."""
    writable_roots: tuple[str, ...] = DEFAULT_WRITABLE_ROOTS
    """Writable mounts are allowed at or under these (and the container's image profile)."""
    allowed_capabilities: frozenset[str] = BASELINE_CAPABILITIES
    """Capabilities a container may add (names without CAP_, upper case)."""
    host_paths_read_only: tuple[str, ...] = DEFAULT_HOST_PATHS_READ_ONLY
    """hostPath directories a pod may mount read-only (host-access)."""
    exempt_namespaces: tuple[str, ...] = ("kube-system", "podlock-system")
    """Never judged or changed; deploy/'s namespaceSelectors are rendered from this list."""
    pod_opt_out_namespaces: frozenset[str] = frozenset()
    """Namespaces whose pods may exempt themselves with `podlock.io/exempt: "true"`."""
    default_writable_paths: tuple[str, ...] = ("/tmp",)
    forbidden_writable_paths: tuple[str, ...] = ("/",)
    image_profiles: tuple[ImageProfile, ...] = ()
    empty_dir_medium: str = ""
    empty_dir_size_limit: str = ""


def load_settings(path: str | None) -> Settings:
    """Read a policy file over the embedded default; None gives the embedded default."""
    default_text = resources.files("webhook").joinpath(DEFAULT_POLICY_NAME).read_text("utf-8")
    base = _parse_yaml(default_text, f"<embedded {DEFAULT_POLICY_NAME}>")
    if path is None:
        return settings_from_mapping(base, f"<embedded {DEFAULT_POLICY_NAME}>")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the policy file: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the policy file is not UTF-8 text") from None
    overlay = _parse_yaml(text, path)
    return settings_from_mapping(_over(base, overlay), path)


def _over(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """The overlay's keys over the base's, section by section: a key left out inside a
    section (say writablePaths.forbidden) keeps its default. Lists are replaced whole."""
    merged = dict(base)
    for key, value in overlay.items():
        below = base.get(key)
        merged[key] = (
            {**below, **value} if isinstance(below, dict) and isinstance(value, dict) else value
        )
    return merged


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}" if mark is not None else "somewhere"
        raise ConfigError(f"{source}: {where}: not valid YAML: {err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the policy must be a mapping of keys, not a {_kind(data)}")
    return data


def settings_from_mapping(data: Mapping[str, Any], source: str) -> Settings:
    """Validate a parsed policy document (every key present) and build Settings."""
    reader = _Reader(source)
    known = {
        "apiVersion",
        "kind",
        "defaultMode",
        "profile",
        "rules",
        "hardening",
        "capabilities",
        "hostPaths",
        "exemptNamespaces",
        "podOptOutNamespaces",
        "writablePaths",
        "imageProfiles",
        "emptyDir",
    }
    reader.no_unknown_keys(data, known, "")
    if data.get("kind", "Policy") != "Policy":
        raise ConfigError(f"{source}: kind: must be Policy, not {data.get('kind')!r}")

    mode = reader.choice(data.get("defaultMode"), MODES, "defaultMode")

    profile = reader.choice(data.get("profile", "strict"), PROFILES, "profile")
    strict = profile == "strict"
    rules = reader.mapping(data.get("rules"), "rules")
    reader.no_unknown_keys(rules, {*POD_RULES, EXEC_RULE, IMAGE_RULE}, "rules")
    # A rule the file names explicitly wins over its profile's default.
    enabled = frozenset(
        rule
        for rule in POD_RULES
        if reader.switch(rules.get(rule, strict or rule in CORE_RULES), f"rules.{rule}")
    )
    exec_value = rules.get(EXEC_RULE, "audit")
    if exec_value is False:  # YAML 1.1 reads a bare `off` as false
        exec_value = "off"
    exec_action = reader.choice(exec_value, EXEC_ACTIONS, f"rules.{EXEC_RULE}")
    image_value = rules.get(IMAGE_RULE, "warn" if strict else "off")
    if image_value is False:
        image_value = "off"
    image_action = reader.choice(image_value, IMAGE_ACTIONS, f"rules.{IMAGE_RULE}")

    hardening = reader.mapping(data.get("hardening"), "hardening")
    reader.no_unknown_keys(hardening, {"dropAllCapabilities", "seccompRuntimeDefault"}, "hardening")
    drop_all = reader.switch(
        hardening.get("dropAllCapabilities", False), "hardening.dropAllCapabilities"
    )
    seccomp = reader.switch(
        hardening.get("seccompRuntimeDefault", False), "hardening.seccompRuntimeDefault"
    )

    capabilities = reader.mapping(data.get("capabilities"), "capabilities")
    reader.no_unknown_keys(capabilities, {"allowed"}, "capabilities")
    allowed_caps = frozenset(
        capability_name(name)
        for name in reader.names(
            capabilities.get("allowed", sorted(BASELINE_CAPABILITIES)), "capabilities.allowed"
        )
    )
    host_paths = reader.mapping(data.get("hostPaths"), "hostPaths")
    reader.no_unknown_keys(host_paths, {"readOnly"}, "hostPaths")
    host_read_only = reader.paths(
        host_paths.get("readOnly", list(DEFAULT_HOST_PATHS_READ_ONLY)), "hostPaths.readOnly"
    )

    exempt = reader.names(data.get("exemptNamespaces"), "exemptNamespaces")
    opt_out = reader.names(data.get("podOptOutNamespaces"), "podOptOutNamespaces")

    writable = reader.mapping(data.get("writablePaths"), "writablePaths")
    reader.no_unknown_keys(writable, {"defaults", "roots", "forbidden"}, "writablePaths")
    defaults = reader.paths(writable.get("defaults", ["/tmp"]), "writablePaths.defaults")
    roots = reader.paths(writable.get("roots", list(DEFAULT_WRITABLE_ROOTS)), "writablePaths.roots")
    forbidden = reader.paths(writable.get("forbidden", ["/"]), "writablePaths.forbidden")

    profiles: list[ImageProfile] = []
    raw_profiles = data.get("imageProfiles")
    raw_profiles = [] if raw_profiles is None else raw_profiles
    if not isinstance(raw_profiles, list):
        raise ConfigError(f"{source}: imageProfiles: must be a list, not a {_kind(raw_profiles)}")
    for index, raw in enumerate(raw_profiles):
        where = f"imageProfiles[{index}]"
        entry = reader.mapping(raw, where)
        reader.no_unknown_keys(entry, {"name", "images", "paths"}, where)
        profiles.append(
            ImageProfile(
                name=reader.text(entry.get("name", f"profile-{index}"), f"{where}.name"),
                images=reader.names(entry.get("images"), f"{where}.images"),
                paths=reader.paths(entry.get("paths"), f"{where}.paths"),
            )
        )

    empty_dir = reader.mapping(data.get("emptyDir"), "emptyDir")
    reader.no_unknown_keys(empty_dir, {"medium", "sizeLimit"}, "emptyDir")
    medium = reader.choice(empty_dir.get("medium") or "", ("", "Memory"), "emptyDir.medium")
    size_limit = reader.text(empty_dir.get("sizeLimit") or "", "emptyDir.sizeLimit")

    if "writable-mount" in enabled:
        # podlock's own emptyDirs obey the allowlist it holds pods to.
        for index, path in enumerate(defaults):
            if not under_any(path, roots):
                raise reader.fail(
                    f"writablePaths.defaults[{index}]",
                    f"{path} is not under writablePaths.roots ({', '.join(roots)})",
                )

    return Settings(
        default_mode=mode,
        profile=profile,
        enabled_rules=enabled,
        exec_action=exec_action,
        image_action=image_action,
        drop_all_capabilities=drop_all,
        seccomp_runtime_default=seccomp,
        writable_roots=roots,
        allowed_capabilities=allowed_caps,
        host_paths_read_only=host_read_only,
        exempt_namespaces=exempt,
        pod_opt_out_namespaces=frozenset(opt_out),
        default_writable_paths=defaults,
        forbidden_writable_paths=forbidden,
        image_profiles=tuple(profiles),
        empty_dir_medium=medium,
        empty_dir_size_limit=size_limit,
    )


def _kind(value: object) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


class _Reader:
    """Typed accessors that raise ConfigError naming the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def no_unknown_keys(self, data: Mapping[str, Any], known: set[str], where: str) -> None:
        for key in data:
            if key not in known:
                path = f"{where}.{key}" if where else str(key)
                raise self.fail(path, f"unknown key (expected one of {', '.join(sorted(known))})")

    def mapping(self, value: object, key: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, not a {_kind(value)}")
        return cast(Mapping[str, Any], value)

    def choice(self, value: object, allowed: tuple[str, ...], key: str) -> Any:
        if value not in allowed:
            shown = ", ".join(repr(a) if a == "" else a for a in allowed)
            raise self.fail(key, f"must be one of {shown}, not {value!r}")
        return value

    def switch(self, value: object, key: str) -> bool:
        # YAML 1.1 reads on/off as booleans; accept the quoted words too.
        if isinstance(value, bool):
            return value
        if value in ("on", "off"):
            return value == "on"
        raise self.fail(key, f"must be on or off, not {value!r}")

    def text(self, value: object, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not a {_kind(value)}")
        return value

    def names(self, value: object, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, not a {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.fail(f"{key}[{index}]", f"must be a non-empty string, not {item!r}")
        return tuple(value)

    def paths(self, value: object, key: str) -> tuple[str, ...]:
        items = self.names(value, key)
        cleaned = []
        for index, item in enumerate(items):
            if not item.startswith("/"):
                raise self.fail(f"{key}[{index}]", f"must be an absolute path, not {item!r}")
            path = clean_path(item)
            if path is None:
                raise self.fail(f"{key}[{index}]", f"must not contain '..', not {item!r}")
            cleaned.append(path)
        return tuple(cleaned)


@functools.lru_cache(maxsize=4096)
def clean_path(path: str) -> str | None:
    """A container path as the runtime will use it, or None when that is ambiguous.

    The kubelet makes a relative mountPath or terminationMessagePath absolute with Go's
    `filepath.Clean("/" + path)`; runc then resolves the destination inside the root with
    securejoin, which follows the image's symlinks before it applies a `..`. So `/var/run/..`
    is `/` after Clean but `/run/..` = `/` or `/var` depending on the image: any `..`
    component (and a NUL byte, which no syscall takes) is refused instead of guessed.
    `usr//bin/./` is `/usr/bin`; `` and `/` are `/`.
    """
    parts = []
    for part in path.split("/"):
        if part == "..":
            return None
        if part and part != ".":
            parts.append(part)
    if "\0" in path:
        return None
    return "/" + "/".join(parts)


def normalize_path(path: str) -> str:
    """A clean path for a value already known to be absolute and free of `..`."""
    return clean_path(path) or posixpath.normpath(path)


def under(path: str, root: str) -> bool:
    """`path` is `root` or below it (both clean)."""
    return path == root or root == "/" or path.startswith(root + "/")


def under_any(path: str, roots: tuple[str, ...]) -> bool:
    return any(under(path, root) for root in roots)


def capability_name(name: str) -> str:
    """`cap_sys_admin`, `CAP_SYS_ADMIN` and `SYS_ADMIN` are the same capability to compare."""
    upper = name.strip().upper()
    return upper[4:] if upper.startswith("CAP_") else upper
