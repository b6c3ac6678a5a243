"""Typed events the kernel side reports, after decoding.

This module is the contract between the record decoding (detector/decode.py and the
tracker turn ring-buffer records into these values) and the rule engine (which only
ever sees these values, never bytes). It holds no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class Session(enum.Enum):
    """Who a container process belongs to, decided once at fork/exec time."""

    CONTAINER = "container"  # the container's own process tree (descends from its init)
    EXEC = "exec"  # entered the container later from outside: runc exec / kubectl exec / cp


class FsKind(enum.Enum):
    """Where a file operation landed."""

    ROOTFS = "rootfs"  # the container's root filesystem (overlay)
    VOLUME = "volume"  # any other mount inside the container (emptyDir, hostPath, …)
    UNKNOWN = "unknown"


class FileOp(enum.Enum):
    OPEN_WRITE = "open"  # open/openat/openat2/creat for write, create or truncate
    RENAME = "rename"
    UNLINK = "unlink"
    MKDIR = "mkdir"
    LINK = "link"
    SYMLINK = "symlink"
    CHMOD_EXEC = "chmod"  # chmod/fchmod/fchmodat whose new mode has an execute bit


class ExecOrigin(enum.Enum):
    """Where an executed binary came from."""

    IMAGE = "image"  # overlay lower layer: shipped in the image
    UPPER = "upper"  # overlay upper layer: written after the container started
    VOLUME = "volume"  # a writable volume (emptyDir, hostPath, …)
    MEMFD = "memfd"  # an anonymous memory file
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Process:
    """The process that caused an event, as the kernel saw it at that moment."""

    pid: int  # host tgid
    vpid: int  # tgid inside the container's PID namespace
    ppid: int  # host tgid of the parent
    uid: int
    comm: str
    exepath: str  # absolute path of the executable (may be "" when unknown)
    cmdline: tuple[str, ...]  # argv; empty when not captured
    tty: int  # controlling tty device number, 0 = none
    cgroup_id: int
    container_id: str  # full 64-hex id parsed from the cgroup path; "" for the host
    session: Session
    session_id: int  # host pid of the exec session's entry process (0 for CONTAINER)


class SessionRef(NamedTuple):
    """The exec session an alert came from, as the engine knew it when it made the alert
    (what detector/audit.py needs to find who ran it)."""

    container_id: str  # full 64-hex id
    session_id: int  # host pid of the session's first process
    argv: tuple[str, ...]  # that process's command; () when its exec was not seen
    start_ns: int  # when that exec happened (wall clock); 0 when it was not seen


# The events are NamedTuples (immutable, typed): one is built per kernel record, and a
# NamedTuple is built in about a third of a frozen dataclass's time. A Process is built
# once per process (the tracker reuses it), so it stays a frozen dataclass.


class FileEvent(NamedTuple):
    time_ns: int  # CLOCK_REALTIME nanoseconds
    proc: Process
    op: FileOp
    path: str  # absolute, as seen inside the container
    target: str  # second path: rename/link destination, symlink target; "" otherwise
    fs: FsKind
    result: int  # 0 on success, else -errno (EROFS = -30, EACCES = -13 are kept)
    flags: int  # open flags or new mode bits, raw


class ExecEvent(NamedTuple):
    time_ns: int
    proc: Process  # the process after exec (new comm/exepath/cmdline)
    origin: ExecOrigin


class ExitEvent(NamedTuple):
    time_ns: int
    proc: Process


@dataclass(frozen=True, slots=True)
class LostEvents:
    """Records the ring buffer could not take: counted in the kernel, never silent.
    (A dataclass: rare, and a NamedTuple's `count` would shadow tuple.count.)"""

    time_ns: int
    count: int


Event = FileEvent | ExecEvent | ExitEvent | LostEvents
