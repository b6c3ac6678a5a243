"""User-space state that turns raw kernel records into `detector.events` values.

It knows which cgroup is which container, each labelled process's executable
and command line (from its exec record, or from /proc at start-up), and each
container's mount table (to classify path-only events as rootfs or volume).
Per-process entries go at the process's exit record, per-cgroup ones when `prune`
(called every few seconds) finds the cgroup gone; `prune` also drops processes
whose exit record never came (lost, or exited while being seeded).
All /proc and /sys reads come in through the `Host` protocol, so this module
is testable with plain values.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from detector.cgroups import ContainerRef, parse_cgroup_path
from detector.decode import (
    FILE_FS,
    FILE_HEAD,
    FILE_OPS,
    FILE_PATH,
    FILE_SIZE,
    FILE_TARGET,
    KIND_FILE,
    PATH_LEN,
    Raw,
    RawCgroup,
    RawExec,
    RawExit,
    RawFile,
    RawHeader,
    cstr,
    decode,
)
from detector.events import (
    Event,
    ExecEvent,
    ExitEvent,
    FileEvent,
    FileOp,
    FsKind,
    Process,
    Session,
)
from detector.sessions import prune_gone


class Host(Protocol):
    """The few reads of the host the tracker needs (see procscan.ProcHost)."""

    def cgroup_path(self, cgroup_id: int) -> str | None:
        """The v2 path of a cgroup id, or None if it is gone."""

    def mount_points(self, pid: int) -> list[str] | None:
        """Mount points as seen by the process (its /proc/PID/mountinfo), None if gone."""


@dataclass(slots=True)
class ProcInfo:
    exepath: str
    cmdline: tuple[str, ...]


@dataclass(slots=True)
class Tracker:
    host: Host
    boot_to_wall_ns: int  # add to CLOCK_BOOTTIME to get CLOCK_REALTIME
    # per cgroup id, until prune() finds the cgroup gone: its container (None: the host)
    containers: dict[int, ContainerRef | None] = field(default_factory=dict)
    # per pid, until its exit record (or prune() finds it gone)
    procs: dict[int, ProcInfo] = field(default_factory=dict)
    # per cgroup, until it is gone: pids whose mount table stands for the container's
    mount_pids: dict[int, list[int]] = field(default_factory=dict)
    # per cgroup, until it is gone: the container's mount points
    mounts: dict[int, list[str]] = field(default_factory=dict)
    # pid -> (the header fields it was built from, the Process): a storm of file events
    # from one process builds its Process once. Dropped when what it reads changes
    # (the process's exec/exit, container records).
    _proc_cache: dict[int, tuple[tuple[object, ...], Process]] = field(default_factory=dict)
    # the same, keyed by the record's raw header bytes (see file_record); emptied whenever
    # _proc_cache loses anything, and at 4096 entries
    _by_record: dict[bytes, Process] = field(default_factory=dict)
    # what the last prune() found gone (and keeps for one more), with the entries it saw
    _dead_cgroups: set[int] = field(default_factory=set)
    _dead_procs: dict[int, ProcInfo] = field(default_factory=dict)
    _dead_cached: dict[int, tuple[tuple[object, ...], Process]] = field(default_factory=dict)

    # ---- seeding ---------------------------------------------------------
    def add_container(self, cgroup_id: int, ref: ContainerRef | None) -> None:
        self.containers[cgroup_id] = ref
        self._forget()

    def add_process(self, pid: int, cgroup_id: int, info: ProcInfo) -> None:
        self.procs[pid] = info
        self._forget(pid)
        self._remember_pid(cgroup_id, pid)

    # ---- pruning -------------------------------------------------------------
    def prune(self, live_cgroups: Collection[int], alive: Callable[[int], bool]) -> None:
        """Forget cgroups not in `live_cgroups` and processes for which alive(pid) is
        false, once they were found so by the previous call too, with the same entry:
        records still in the ring buffer from before the end (and a pid reused meanwhile)
        find their state. Tables that shrank by half are rebuilt: a dict keeps its peak."""
        before = len(self.containers) + len(self.procs) + len(self._proc_cache)
        dead_cgroups = {c for c in (*self.containers, *self.mount_pids) if c not in live_cgroups}
        for cgroup_id in dead_cgroups & self._dead_cgroups:
            self.containers.pop(cgroup_id, None)
            self.mount_pids.pop(cgroup_id, None)
            self.mounts.pop(cgroup_id, None)
        self._dead_cgroups = dead_cgroups
        procs_before = len(self.procs) + len(self._proc_cache)
        self._dead_procs = prune_gone(self.procs, alive, self._dead_procs)
        self._dead_cached = prune_gone(self._proc_cache, alive, self._dead_cached)
        if len(self.procs) + len(self._proc_cache) < procs_before:
            self._by_record.clear()
        after = len(self.containers) + len(self.procs) + len(self._proc_cache)
        if after * 2 < before:
            self.containers, self.procs = dict(self.containers), dict(self.procs)
            self.mount_pids, self.mounts = dict(self.mount_pids), dict(self.mounts)
            self._proc_cache = dict(self._proc_cache)

    def table_sizes(self) -> dict[str, int]:
        """Entries in each long-lived table (for metrics and the soak benchmark)."""
        return {
            "tracker.containers": len(self.containers),
            "tracker.processes": len(self.procs),
            "tracker.mount_tables": len(self.mounts),
            "tracker.process_cache": len(self._proc_cache),
        }

    # ---- records -----------------------------------------------------------
    def container_of(self, cgroup_id: int) -> ContainerRef | None:
        if cgroup_id not in self.containers:
            path = self.host.cgroup_path(cgroup_id)
            self.containers[cgroup_id] = parse_cgroup_path(path) if path else None
        return self.containers[cgroup_id]

    def file_record(self, data: bytes) -> FileEvent | None:
        """The event for a file record, straight from its bytes: the storm path, without
        the intermediate RawFile/RawHeader values for a process seen before. None when
        `data` is not a file record (decode() and handle() take it); raises DecodeError
        for a malformed one, as decode() does."""
        if len(data) < FILE_SIZE:
            return None
        time_ns, kind, key, result, flags, op_code, fs_code = FILE_HEAD.unpack_from(data)
        if kind != KIND_FILE:
            return None
        proc = self._by_record.get(key)
        op = FILE_OPS.get(op_code)
        if proc is None or op is None:  # first record of this process, or a bad one
            raw = decode(data)
            assert isinstance(raw, RawFile)
            event = self._file(raw, time_ns + self.boot_to_wall_ns)
            if len(self._by_record) >= 4096:
                self._by_record.clear()
            self._by_record[key] = event.proc
            return event
        return self._file_event(
            time_ns + self.boot_to_wall_ns,
            proc,
            op,
            cstr(data, FILE_PATH, PATH_LEN),
            # most operations have no second path: skip the search when it is empty
            cstr(data, FILE_TARGET, PATH_LEN) if data[FILE_TARGET] else "",
            FILE_FS.get(fs_code, FsKind.UNKNOWN),
            result,
            flags,
        )

    def handle(self, raw: Raw) -> Event | None:
        """The event for one record; None for bookkeeping records (cgroups)."""
        if isinstance(raw, RawFile):  # (the agent takes these through file_record)
            return self._file(raw, raw.hdr.time_ns + self.boot_to_wall_ns)
        if isinstance(raw, RawCgroup):
            self.containers[raw.hdr.cgroup_id] = parse_cgroup_path(raw.path)
            self._forget()
            return None
        time_ns = raw.hdr.time_ns + self.boot_to_wall_ns
        if isinstance(raw, RawExec):
            self._forget(raw.hdr.pid)  # a new program: its Process is built anew
            info = ProcInfo(exepath=raw.exepath, cmdline=raw.argv)
            self.procs[raw.hdr.pid] = info
            self._remember_pid(raw.hdr.cgroup_id, raw.hdr.pid)
            return ExecEvent(time_ns=time_ns, proc=self._process(raw.hdr), origin=raw.origin)
        if isinstance(raw, RawExit):
            event = ExitEvent(time_ns=time_ns, proc=self._process(raw.hdr))
            self.procs.pop(raw.hdr.pid, None)
            pids = self.mount_pids.get(raw.hdr.cgroup_id)
            if pids and raw.hdr.pid in pids and len(pids) > 1:
                pids.remove(raw.hdr.pid)
            self._forget(raw.hdr.pid)
            return event
        return None

    def _file(self, raw: RawFile, time_ns: int) -> FileEvent:
        proc = self._process(raw.hdr)
        return self._file_event(
            time_ns, proc, raw.op, raw.path, raw.target, raw.fs, raw.result, raw.flags
        )

    def _file_event(
        self,
        time_ns: int,
        proc: Process,
        op: FileOp,
        path: str,
        target: str,
        fs: FsKind,
        result: int,
        flags: int,
    ) -> FileEvent:
        """Both record paths end here: paths made absolute, the filesystem found."""
        path = normalise(path)
        if target.startswith("/"):
            target = normalise(target)
        if fs is FsKind.UNKNOWN:
            fs = self._classify(proc.pid, proc.cgroup_id, path)
        return FileEvent(time_ns, proc, op, path, target, fs, result if result < 0 else 0, flags)

    def _forget(self, pid: int | None = None) -> None:
        """Drop reused Process values: one process's, or all (None)."""
        if pid is None:
            self._proc_cache.clear()
        else:
            self._proc_cache.pop(pid, None)
        self._by_record.clear()

    def _process(self, hdr: RawHeader) -> Process:
        key = hdr[1:]  # everything but the time
        cached = self._proc_cache.get(hdr.pid)
        if cached is not None and cached[0] == key:
            return cached[1]
        proc = self._build_process(hdr)
        self._proc_cache[hdr.pid] = (key, proc)
        return proc

    def _build_process(self, hdr: RawHeader) -> Process:
        info = self.procs.get(hdr.pid)
        ref = self.container_of(hdr.cgroup_id)
        session = hdr.session or Session.CONTAINER
        return Process(
            pid=hdr.pid,
            vpid=hdr.vpid,
            ppid=hdr.ppid,
            uid=hdr.uid,
            comm=hdr.comm,
            exepath=info.exepath if info else "",
            cmdline=info.cmdline if info else (),
            tty=hdr.tty,
            cgroup_id=hdr.cgroup_id,
            container_id=ref.container_id if ref else "",
            session=session,
            session_id=hdr.session_id if session is Session.EXEC else 0,
        )

    def _remember_pid(self, cgroup_id: int, pid: int) -> None:
        pids = self.mount_pids.setdefault(cgroup_id, [])
        if pid not in pids:
            pids.append(pid)
            del pids[:-4]  # a few candidates are enough: any live one will do

    def _classify(self, pid: int, cgroup_id: int, path: str) -> FsKind:
        table = self.mounts.get(cgroup_id)
        if table is None:
            for candidate in [pid, *reversed(self.mount_pids.get(cgroup_id, []))]:
                found = self.host.mount_points(candidate)
                if found:
                    table = found
                    self.mounts[cgroup_id] = table
                    break
        if not table:
            return FsKind.UNKNOWN
        return classify_path(path, table)


def normalise(path: str) -> str:
    """An absolute path with `.`, `..` and doubled slashes folded."""
    if not path.startswith("/"):
        return path
    if "/." not in path and "//" not in path and not path.endswith("/"):
        return path  # already folded: the common case, without normpath's cost
    folded = posixpath.normpath(path)
    return "/" + folded.lstrip("/")


def classify_path(path: str, mount_points: list[str]) -> FsKind:
    """rootfs if the longest mount point containing `path` is `/`, else volume."""
    best = "/"
    for mp in mount_points:
        if mp == "/":
            continue
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            best = mp
    return FsKind.ROOTFS if best == "/" else FsKind.VOLUME


def parse_mountinfo(text: str) -> list[str]:
    """Mount points from /proc/PID/mountinfo text (octal escapes decoded)."""
    points = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        points.append(_unescape(fields[4]))
    return points


def _unescape(field_text: str) -> str:
    if "\\" not in field_text:
        return field_text
    out = []
    i = 0
    while i < len(field_text):
        if (
            field_text[i] == "\\"
            and i + 3 < len(field_text) + 0
            and field_text[i + 1 : i + 4].isdigit()
        ):
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)
