"""Ring-buffer records -> typed raw records. Pure: bytes in, frozen values out.

The ctypes structures mirror `detector/bpf/events.h` field by field;
tests/detector/test_decode.py compiles that header and checks every offset.
The raw records still carry kernel ids (cgroup id, pid); `detector.tracker`
turns them into `detector.events` values with container ids and command lines.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from detector.events import ExecOrigin, FileOp, FsKind, Session

COMM_LEN = 16
PATH_LEN = 256
ARGS_LEN = 512

KIND_FILE = 1
KIND_EXEC = 2
KIND_EXIT = 3
KIND_CGROUP = 4

_SESSIONS = {1: Session.CONTAINER, 2: Session.EXEC}
_FS = {0: FsKind.UNKNOWN, 1: FsKind.ROOTFS, 2: FsKind.VOLUME}
_OPS = {
    1: FileOp.OPEN_WRITE,
    2: FileOp.RENAME,
    3: FileOp.UNLINK,
    4: FileOp.MKDIR,
    5: FileOp.LINK,
    6: FileOp.SYMLINK,
    7: FileOp.CHMOD_EXEC,
}
_ORIGINS = {
    0: ExecOrigin.UNKNOWN,
    1: ExecOrigin.IMAGE,
    2: ExecOrigin.UPPER,
    3: ExecOrigin.VOLUME,
    4: ExecOrigin.MEMFD,
}


class HdrC(ctypes.Structure):
    _fields_ = [
        ("time_ns", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("vpid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("tty", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("session_id", ctypes.c_uint32),
        ("session", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


class FileEventC(ctypes.Structure):
    _fields_ = [
        ("hdr", HdrC),
        ("result", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("op", ctypes.c_uint8),
        ("fs", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 6),
        ("path", ctypes.c_char * PATH_LEN),
        ("target", ctypes.c_char * PATH_LEN),
    ]


class ExecEventC(ctypes.Structure):
    _fields_ = [
        ("hdr", HdrC),
        ("origin", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
        ("args_len", ctypes.c_uint32),
        ("exepath", ctypes.c_char * PATH_LEN),
        ("args", ctypes.c_char * ARGS_LEN),
    ]


class ExitEventC(ctypes.Structure):
    _fields_ = [("hdr", HdrC), ("exit_code", ctypes.c_int32), ("_pad", ctypes.c_uint32)]


class CgroupEventC(ctypes.Structure):
    _fields_ = [("hdr", HdrC), ("path", ctypes.c_char * PATH_LEN)]


class LabelC(ctypes.Structure):
    """struct podlock_label: value of the `procs` map."""

    _fields_ = [
        ("cgroup_id", ctypes.c_uint64),
        ("session_id", ctypes.c_uint32),
        ("session", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
    ]


class CgroupC(ctypes.Structure):
    """struct podlock_cgroup: value of the `containers` map."""

    _fields_ = [("init_claimed", ctypes.c_uint64)]


class DecodeError(ValueError):
    """A record that does not match the header's layout."""


@dataclass(frozen=True, slots=True)
class RawHeader:
    time_ns: int  # CLOCK_BOOTTIME
    pid: int
    vpid: int
    ppid: int
    uid: int
    tty: int
    cgroup_id: int
    session: Session | None  # None only for cgroup records
    session_id: int
    comm: str


@dataclass(frozen=True, slots=True)
class RawFile:
    hdr: RawHeader
    op: FileOp
    fs: FsKind
    result: int
    flags: int
    path: str
    target: str


@dataclass(frozen=True, slots=True)
class RawExec:
    hdr: RawHeader
    origin: ExecOrigin
    exepath: str
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RawExit:
    hdr: RawHeader
    exit_code: int


@dataclass(frozen=True, slots=True)
class RawCgroup:
    hdr: RawHeader
    path: str


Raw = RawFile | RawExec | RawExit | RawCgroup

_SIZES = {
    KIND_FILE: ctypes.sizeof(FileEventC),
    KIND_EXEC: ctypes.sizeof(ExecEventC),
    KIND_EXIT: ctypes.sizeof(ExitEventC),
    KIND_CGROUP: ctypes.sizeof(CgroupEventC),
}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _header(h: HdrC) -> RawHeader:
    return RawHeader(
        time_ns=h.time_ns,
        pid=h.pid,
        vpid=h.vpid,
        ppid=h.ppid,
        uid=h.uid,
        tty=h.tty,
        cgroup_id=h.cgroup_id,
        session=_SESSIONS.get(h.session),
        session_id=h.session_id,
        comm=_text(h.comm),
    )


def split_args(blob: bytes) -> tuple[str, ...]:
    """NUL-separated argv as the kernel keeps it; a truncated last word is kept."""
    parts = blob.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return tuple(_text(p) for p in parts)


def decode(data: bytes) -> Raw:
    """One ring-buffer record; raises DecodeError if it is not one of ours."""
    if len(data) < ctypes.sizeof(HdrC):
        raise DecodeError(f"record of {len(data)} bytes is shorter than the header")
    kind = int.from_bytes(data[8:12], "little")
    size = _SIZES.get(kind)
    if size is None:
        raise DecodeError(f"unknown record kind {kind}")
    if len(data) < size:
        raise DecodeError(f"record kind {kind} has {len(data)} bytes, expected {size}")
    if kind == KIND_FILE:
        f = FileEventC.from_buffer_copy(data, 0)
        op = _OPS.get(f.op)
        if op is None:
            raise DecodeError(f"unknown file operation {f.op}")
        return RawFile(
            hdr=_header(f.hdr),
            op=op,
            fs=_FS.get(f.fs, FsKind.UNKNOWN),
            result=f.result,
            flags=f.flags,
            path=_text(f.path),
            target=_text(f.target),
        )
    if kind == KIND_EXEC:
        e = ExecEventC.from_buffer_copy(data, 0)
        args_len = min(e.args_len, ARGS_LEN)
        args_off = ExecEventC.args.offset
        return RawExec(
            hdr=_header(e.hdr),
            origin=_ORIGINS.get(e.origin, ExecOrigin.UNKNOWN),
            exepath=_text(e.exepath),
            argv=split_args(data[args_off : args_off + args_len]),
        )
    if kind == KIND_EXIT:
        x = ExitEventC.from_buffer_copy(data, 0)
        return RawExit(hdr=_header(x.hdr), exit_code=x.exit_code)
    c = CgroupEventC.from_buffer_copy(data, 0)
    return RawCgroup(hdr=_header(c.hdr), path=_text(c.path))
