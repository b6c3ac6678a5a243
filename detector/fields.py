"""The fields a condition or output can name, Falco's names where Falco has one.

Each field binds, per event type, to either an extractor (a function of the event)
or a `Fixed` value the event type alone decides (`fd.name` on `execve` is missing,
`evt.type` is known). Binding per type lets the compiler fold conditions to
constants, which is also how rules get indexed by event type.

Fields that depend on state outside the event (Kubernetes metadata, the exec
session's leader, a parent's name) reach it through a `FieldEnv` the engine provides.
Output-only fields (`podlock.drops`, `podlock.agg.*`) are filled when the alert is made.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from detector.alerts import FieldValue, clock_time
from detector.events import ExecOrigin, FileOp, Process, Session

if TYPE_CHECKING:
    from detector.k8s import ContainerMeta


class FieldType(enum.Enum):
    STRING = "string"
    INT = "number"
    BOOL = "boolean"


class ArgMode(enum.Enum):
    NONE = "none"
    REQUIRED = "required"


FILE_EVT_TYPES: tuple[str, ...] = tuple(op.value for op in FileOp)
EXEC_EVT = "execve"
EXIT_EVT = "procexit"
EVT_TYPES: tuple[str, ...] = (*FILE_EVT_TYPES, EXEC_EVT, EXIT_EVT)


# Falco's rules name the syscalls; podlock reports one event type per operation.
EVT_TYPE_ALIASES: Mapping[str, str] = {
    "openat": "open", "openat2": "open", "creat": "open",
    "renameat": "rename", "renameat2": "rename",
    "unlinkat": "unlink",
    "mkdirat": "mkdir",
    "linkat": "link",
    "symlinkat": "symlink",
    "fchmod": "chmod", "fchmodat": "chmod", "fchmodat2": "chmod",
    "execveat": "execve",
}  # fmt: skip


class FieldEnv(Protocol):
    """State outside the event that some fields read; the engine implements it."""

    def meta(self, container_id: str) -> ContainerMeta | None: ...
    def is_probe(self, proc: Process) -> bool: ...
    def parent(self, ppid: int) -> Process | None: ...
    def session_cmdline(self, proc: Process) -> tuple[str, ...] | None: ...
    def event_number(self) -> int: ...


Extract = Callable[[Any], FieldValue]  # takes one decoded event


@dataclass(frozen=True, slots=True)
class Fixed:
    """A field value that does not depend on the event, only on its type."""

    value: FieldValue


Binder = Callable[[str, "str | None", FieldEnv], "Extract | Fixed"]


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: FieldType
    desc: str
    bind: Binder | None  # None: output-only, filled by the engine
    arg: ArgMode = ArgMode.NONE
    aliases: Mapping[str, str] | None = None  # values rewritten at load (Falco's names)

    @property
    def output_only(self) -> bool:
        return self.bind is None


# Enum members' values are read through `_value_`, a plain attribute, because `.value`
# is a Python-level descriptor and these fields sit on the per-event hot path.

# --- binder helpers ----------------------------------------------------------------------


def _always(extract: Extract) -> Binder:
    return lambda _t, _a, _e: extract


def _on(types: tuple[str, ...], extract: Extract, otherwise: FieldValue = None) -> Binder:
    wanted = frozenset(types)
    return lambda t, _a, _e: extract if t in wanted else Fixed(otherwise)


def _per_type(table: Mapping[str, Extract | Fixed], otherwise: FieldValue = None) -> Binder:
    return lambda t, _a, _e: table.get(t, Fixed(otherwise))


def _with_env(make: Callable[[FieldEnv], Extract]) -> Binder:
    return lambda _t, _a, env: make(env)


def _meta_field(attr: str) -> Binder:
    def make(env: FieldEnv) -> Extract:
        lookup = env.meta

        def extract(ev: Any) -> FieldValue:
            meta = lookup(ev.proc.container_id)
            return None if meta is None else getattr(meta, attr)

        return extract

    return _with_env(make)


def _parent_field(attr: str, transform: Callable[[Any], FieldValue] | None = None) -> Binder:
    def make(env: FieldEnv) -> Extract:
        parent_of = env.parent

        def extract(ev: Any) -> FieldValue:
            parent = parent_of(ev.proc.ppid)
            if parent is None:
                return None
            value = getattr(parent, attr)
            return transform(value) if transform else value

        return extract

    return _with_env(make)


def result_name(result: int) -> str:
    """Falco's `evt.res`: `SUCCESS`, or the errno's name (`EROFS`, `EACCES`)."""
    if result >= 0:
        return "SUCCESS"
    return errno.errorcode.get(-result, str(result))


def falco_cmdline(proc: Process) -> str:
    """Falco's `proc.cmdline`: the process name followed by its arguments."""
    args = proc.cmdline[1:]
    return f"{proc.comm} {' '.join(args)}" if args else proc.comm


def _label(_t: str, arg: str | None, env: FieldEnv) -> Extract:
    lookup, key = env.meta, arg or ""

    def extract(ev: Any) -> FieldValue:
        meta = lookup(ev.proc.container_id)
        return None if meta is None else meta.labels.get(key)

    return extract


def _dirname(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _origin_is(origin: ExecOrigin) -> Binder:
    return _on((EXEC_EVT,), lambda ev: ev.origin is origin)


def _leader(ev: Any) -> bool:
    proc = ev.proc
    return proc.session is Session.EXEC and proc.pid == proc.session_id


def _probe(env: FieldEnv) -> Extract:
    is_probe = env.is_probe
    return lambda ev: is_probe(ev.proc)


def _session_cmdline(env: FieldEnv) -> Extract:
    leader_argv = env.session_cmdline

    def extract(ev: Any) -> FieldValue:
        argv = leader_argv(ev.proc)
        return None if argv is None else " ".join(argv)

    return extract


_S, _I, _B = FieldType.STRING, FieldType.INT, FieldType.BOOL
_FILES = FILE_EVT_TYPES

_DEFS: tuple[FieldDef, ...] = (
    # evt.*
    FieldDef("evt.type", _S, "event type: open rename unlink mkdir link symlink chmod execve "
             "procexit (Falco's syscall names such as openat are accepted as aliases)",
             lambda t, _a, _e: Fixed(t), aliases=EVT_TYPE_ALIASES),
    FieldDef("evt.dir", _S, "`<`: every event is reported at syscall exit",
             lambda _t, _a, _e: Fixed("<")),
    FieldDef("evt.num", _I, "event number, from 1 (so `evt.num = 0` is never true)",
             _with_env(lambda env: _event_number(env))),
    FieldDef("evt.time", _S, "event time, HH:MM:SS.nnnnnnnnn UTC",
             _always(lambda ev: clock_time(ev.time_ns))),
    FieldDef("evt.rawtime", _I, "event time, nanoseconds since the epoch",
             _always(attrgetter("time_ns"))),
    FieldDef("evt.res", _S, "SUCCESS or the errno name (EROFS, EACCES)", _per_type(
        {**{t: (lambda ev: result_name(ev.result)) for t in _FILES}, EXEC_EVT: Fixed("SUCCESS")})),
    FieldDef("evt.rawres", _I, "0 or -errno", _per_type(
        {**{t: attrgetter("result") for t in _FILES}, EXEC_EVT: Fixed(0)})),
    FieldDef("evt.failed", _B, "true when the operation failed", _per_type(
        {**{t: (lambda ev: ev.result < 0) for t in _FILES}, EXEC_EVT: Fixed(False)}, False)),
    FieldDef("evt.is_open_write", _B, "true for an open for writing",
             lambda t, _a, _e: Fixed(t == FileOp.OPEN_WRITE.value)),
    # proc.*
    FieldDef("proc.name", _S, "process name (comm)", _always(attrgetter("proc.comm"))),
    FieldDef("proc.exe", _S, "argv[0]",
             _always(lambda ev: ev.proc.cmdline[0] if ev.proc.cmdline else None)),
    FieldDef("proc.exepath", _S, "absolute path of the executable",
             _always(lambda ev: ev.proc.exepath or None)),
    FieldDef("proc.cmdline", _S, "name and arguments", _always(lambda ev: falco_cmdline(ev.proc))),
    FieldDef("proc.args", _S, "arguments after argv[0]",
             _always(lambda ev: " ".join(ev.proc.cmdline[1:]))),
    FieldDef("proc.pid", _I, "host process id", _always(attrgetter("proc.pid"))),
    FieldDef("proc.vpid", _I, "process id in the container", _always(attrgetter("proc.vpid"))),
    FieldDef("proc.ppid", _I, "host parent process id", _always(attrgetter("proc.ppid"))),
    FieldDef("proc.tty", _I, "controlling tty device number, 0 for none",
             _always(attrgetter("proc.tty"))),
    FieldDef("proc.pname", _S, "parent's name, when the parent's exec was seen",
             _parent_field("comm")),
    FieldDef("proc.pexepath", _S, "parent's executable path", _parent_field("exepath")),
    FieldDef("proc.pcmdline", _S, "parent's name and arguments",
             _with_env(lambda env: _parent_cmdline(env))),
    FieldDef("proc.is_exe_upper_layer", _B, "executable from the overlay upper layer",
             _origin_is(ExecOrigin.UPPER)),
    FieldDef("proc.is_exe_from_memfd", _B, "executable from a memfd",
             _origin_is(ExecOrigin.MEMFD)),
    # user.*
    FieldDef("user.uid", _I, "user id", _always(attrgetter("proc.uid"))),
    FieldDef("user.name", _S, "root for uid 0, else missing (names are not resolved)",
             _always(lambda ev: "root" if ev.proc.uid == 0 else None)),
    # container.* and k8s.*
    FieldDef("container.id", _S, "12-character container id, `host` outside containers",
             _always(lambda ev: ev.proc.container_id[:12] or "host")),
    FieldDef("container.full_id", _S, "64-character container id, `host` outside containers",
             _always(lambda ev: ev.proc.container_id or "host")),
    FieldDef("container.name", _S, "Kubernetes container name", _meta_field("container_name")),
    FieldDef("container.image", _S, "image reference", _meta_field("image")),
    FieldDef("container.image.repository", _S, "image repository", _meta_field("repository")),
    FieldDef("container.image.tag", _S, "image tag", _meta_field("tag")),
    FieldDef("k8s.ns.name", _S, "pod namespace", _meta_field("namespace")),
    FieldDef("k8s.pod.name", _S, "pod name", _meta_field("pod_name")),
    FieldDef("k8s.pod.uid", _S, "pod uid", _meta_field("pod_uid")),
    FieldDef("k8s.pod.label", _S, "pod label, e.g. k8s.pod.label[app]", _label, ArgMode.REQUIRED),
    # fd.* and fs.*
    FieldDef("fd.name", _S, "absolute path of the file", _on(_FILES, attrgetter("path"))),
    FieldDef("fd.directory", _S, "directory of fd.name",
             _on(_FILES, lambda ev: _dirname(ev.path))),
    FieldDef("fd.filename", _S, "last component of fd.name",
             _on(_FILES, lambda ev: ev.path.rsplit("/", 1)[-1])),
    FieldDef("fd.typechar", _S, "`f`: only regular files are reported",
             lambda t, _a, _e: Fixed("f" if t in _FILES else None)),
    FieldDef("fs.path.name", _S, "path operated on (same as fd.name)",
             _on(_FILES, attrgetter("path"))),
    FieldDef("fs.path.target", _S, "rename/link destination or symlink target",
             _on(_FILES, lambda ev: ev.target or None)),
    # podlock.*
    FieldDef("podlock.session", _S, "`exec` (entered later: kubectl exec/cp, probes) or "
             "`container` (the container's own processes)",
             _always(attrgetter("proc.session._value_"))),
    FieldDef("podlock.session_id", _I, "host pid of the exec session's first process, 0 for "
             "container", _always(attrgetter("proc.session_id"))),
    FieldDef("podlock.session_leader", _B, "this process is the exec session's first process",
             _always(_leader)),
    FieldDef("podlock.session_cmdline", _S, "the exec session's command (its leader's argv)",
             _with_env(_session_cmdline)),
    FieldDef("podlock.probe", _B, "the exec session runs one of the pod's exec probe commands",
             _with_env(_probe)),
    FieldDef("podlock.fs", _S, "`rootfs`, `volume` or `unknown`",
             _on(_FILES, attrgetter("fs._value_"))),
    FieldDef("podlock.origin", _S, "where an executed binary came from: image, upper, volume, "
             "memfd, unknown", _on((EXEC_EVT,), attrgetter("origin._value_"))),
    FieldDef("podlock.flags", _I, "raw open flags or new mode bits", _on(_FILES,
             attrgetter("flags"))),
    FieldDef("podlock.cgroup_id", _I, "cgroup id", _always(attrgetter("proc.cgroup_id"))),
    FieldDef("podlock.drops", _I, "events lost since the previous alert (output only)", None),
    FieldDef("podlock.suppressed", _I, "alerts of this rule and container the rate limit held "
             "back since the previous one (output only)", None),
    FieldDef("podlock.agg.count", _I, "aggregated alerts: number of distinct items (output "
             "only)", None),
    FieldDef("podlock.agg.items", _S, "aggregated alerts: the first items, comma-separated, "
             "a comma or backslash in an item escaped by a backslash (output only)", None),
)  # fmt: skip


def _event_number(env: FieldEnv) -> Extract:
    number = env.event_number
    return lambda _ev: number()


def _parent_cmdline(env: FieldEnv) -> Extract:
    parent_of = env.parent

    def extract(ev: Any) -> FieldValue:
        parent = parent_of(ev.proc.ppid)
        return None if parent is None else falco_cmdline(parent)

    return extract


FIELDS: Mapping[str, FieldDef] = {f.name: f for f in _DEFS}

# Fields whose value depends only on the event's process (`ev.proc`) and on state the
# engine changes at exec/exit (sessions, parents) or the container's metadata: the engine
# computes them once per process for an alert storm, not once per event.
PER_PROCESS_FIELDS: frozenset[str] = frozenset(
    name
    for name in FIELDS
    if name.startswith(("proc.", "user.", "container.", "k8s.", "podlock.session"))
    and not name.startswith("proc.is_exe_")  # from the exec event's origin
) | {"podlock.probe", "podlock.cgroup_id"}

# Always in an alert's output_fields (Falco names where one exists), beside the
# fields its output template names.
BASELINE_OUTPUT_FIELDS: tuple[str, ...] = (
    "evt.type",
    "evt.res",
    "proc.name",
    "proc.cmdline",
    "proc.exepath",
    "proc.pid",
    "proc.vpid",
    "proc.tty",
    "user.uid",
    "container.id",
    "container.full_id",
    "container.name",
    "container.image.repository",
    "k8s.ns.name",
    "k8s.pod.name",
    "fd.name",
    "podlock.session",
    "podlock.session_id",
    "podlock.fs",
    "podlock.drops",
    "podlock.suppressed",
)


def field_key(name: str, arg: str | None) -> str:
    """The name a field goes by in output_fields: `k8s.pod.label[app]`."""
    return name if arg is None else f"{name}[{arg}]"
