"""Ring-buffer records -> typed raw records. Pure: bytes in, frozen values out.

The ctypes structures mirror `detector/bpf/events.h` field by field;
tests/detector/test_decode.py compiles that header and checks every offset;
the struct formats used to decode are checked against the mirrors at import.
The raw records still carry kernel ids (cgroup id, pid); `detector.tracker`
turns them into `detector.events` values with container ids and command lines.
"""

from __future__ import annotations

import ctypes
import struct
from typing import NamedTuple

from detector.events import ExecOrigin, FileOp, FsKind, Session

COMM_LEN = 16
PATH_LEN = 256
ARGS_LEN = 512

KIND_FILE = 1
KIND_EXEC = 2
KIND_EXIT = 3
KIND_CGROUP = 4

_SESSIONS = {1: Session.CONTAINER, 2: Session.EXEC}
FILE_FS = {0: FsKind.UNKNOWN, 1: FsKind.ROOTFS, 2: FsKind.VOLUME}
FILE_OPS = {
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


# The raw records are NamedTuples, not frozen dataclasses: they are built once per
# record on the hot path, and a NamedTuple is built about three times faster.


class RawHeader(NamedTuple):
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


class RawFile(NamedTuple):
    hdr: RawHeader
    op: FileOp
    fs: FsKind
    result: int
    flags: int
    path: str
    target: str


class RawExec(NamedTuple):
    hdr: RawHeader
    origin: ExecOrigin
    exepath: str
    argv: tuple[str, ...]


class RawExit(NamedTuple):
    hdr: RawHeader
    exit_code: int


class RawCgroup(NamedTuple):
    hdr: RawHeader
    path: str


Raw = RawFile | RawExec | RawExit | RawCgroup

# Precompiled unpackers over the same layout as the ctypes mirrors (checked below):
# struct.unpack_from reads straight from the record without a ctypes copy.
_HDR = struct.Struct("<QIIIIIIQIB3x16s")
_FILE = struct.Struct("<iIBB6x")  # after the header
_EXEC = struct.Struct("<B3xI")
_EXIT = struct.Struct("<i4x")
_HDR_SIZE = _HDR.size
FILE_PATH = _HDR_SIZE + _FILE.size
FILE_TARGET = FILE_PATH + PATH_LEN
_EXEC_PATH = _HDR_SIZE + _EXEC.size
_EXEC_ARGS = _EXEC_PATH + PATH_LEN
assert ctypes.sizeof(HdrC) == _HDR_SIZE
assert FileEventC.target.offset == FILE_TARGET
assert ExecEventC.args.offset == _EXEC_ARGS

# A file record's fixed part in one unpack, for the tracker's fast path (see
# Tracker.file_record): time, kind, the header's process fields pid … comm as one bytes
# key, result, flags, op, fs.
FILE_HEAD = struct.Struct("<QI52siIBB")
FILE_SIZE = ctypes.sizeof(FileEventC)
assert HdrC.pid.offset == 12 and FileEventC.fs.offset == FILE_HEAD.size - 1

_SIZES = {
    KIND_FILE: ctypes.sizeof(FileEventC),
    KIND_EXEC: ctypes.sizeof(ExecEventC),
    KIND_EXIT: ctypes.sizeof(ExitEventC),
    KIND_CGROUP: ctypes.sizeof(CgroupEventC),
}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def cstr(data: bytes, start: int, size: int) -> str:
    """The NUL-terminated string in data[start:start+size]."""
    end = data.find(b"\0", start, start + size)
    return data[start : end if end >= 0 else start + size].decode("utf-8", "surrogateescape")


def _header(data: bytes) -> RawHeader:
    t, _kind, pid, vpid, ppid, uid, tty, cgroup_id, session_id, session, comm = _HDR.unpack_from(
        data
    )
    end = comm.find(b"\0")
    return RawHeader(
        t,
        pid,
        vpid,
        ppid,
        uid,
        tty,
        cgroup_id,
        _SESSIONS.get(session),
        session_id,
        (comm if end < 0 else comm[:end]).decode("utf-8", "surrogateescape"),
    )


def split_args(blob: bytes) -> tuple[str, ...]:
    """NUL-separated argv as the kernel keeps it; a truncated last word is kept."""
    parts = blob.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return tuple(_text(p) for p in parts)


def decode(data: bytes) -> Raw:
    """One ring-buffer record; raises DecodeError if it is not one of ours."""
    if len(data) < _HDR_SIZE:
        raise DecodeError(f"record of {len(data)} bytes is shorter than the header")
    kind = int.from_bytes(data[8:12], "little")
    size = _SIZES.get(kind)
    if size is None:
        raise DecodeError(f"unknown record kind {kind}")
    if len(data) < size:
        raise DecodeError(f"record kind {kind} has {len(data)} bytes, expected {size}")
    if kind == KIND_FILE:
        result, flags, op_code, fs_code = _FILE.unpack_from(data, _HDR_SIZE)
        op = FILE_OPS.get(op_code)
        if op is None:
            raise DecodeError(f"unknown file operation {op_code}")
        return RawFile(
            _header(data),
            op,
            FILE_FS.get(fs_code, FsKind.UNKNOWN),
            result,
            flags,
            cstr(data, FILE_PATH, PATH_LEN),
            # most operations have no second path: skip the search when it is empty
            cstr(data, FILE_TARGET, PATH_LEN) if data[FILE_TARGET] else "",
        )
    if kind == KIND_EXEC:
        origin, args_len = _EXEC.unpack_from(data, _HDR_SIZE)
        args_len = min(args_len, ARGS_LEN)
        return RawExec(
            _header(data),
            _ORIGINS.get(origin, ExecOrigin.UNKNOWN),
            cstr(data, _EXEC_PATH, PATH_LEN),
            split_args(data[_EXEC_ARGS : _EXEC_ARGS + args_len]),
        )
    if kind == KIND_EXIT:
        return RawExit(_header(data), _EXIT.unpack_from(data, _HDR_SIZE)[0])
    return RawCgroup(_header(data), cstr(data, _HDR_SIZE, PATH_LEN))
