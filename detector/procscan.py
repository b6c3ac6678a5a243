"""Start-up seeding from /proc and the cgroup tree, and the host reads the tracker needs.

The kernel labels processes as they fork and exec; processes that already ran
when the detector started are labelled here, once, with the same meaning:

- a container's own tree: the earliest-started process whose parent is
  outside the container's cgroup (its init), and everything below it;
- an exec session: any other process whose parent is outside the cgroup,
  and everything below it. An orphan of the container's own tree reparented to
  a reaper in its own PID namespace (the pause process under
  shareProcessNamespace) stays in the container's tree.

Known limit: with hostPID, an orphan of the container's tree reparented to the
host before the detector started is taken for an exec session.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

from detector.cgroups import ContainerRef, cgroup_v2_path, parse_cgroup_path
from detector.decode import split_args
from detector.events import Process, Session
from detector.tracker import ProcInfo, parse_mountinfo

CGROUP_ROOT = "/sys/fs/cgroup/unified"
PROC = "/proc"


def cgroup_root() -> str:
    """Where cgroup v2 is mounted: /sys/fs/cgroup/unified (hybrid layout) or /sys/fs/cgroup."""
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.procs")):
        return CGROUP_ROOT
    return "/sys/fs/cgroup"


@dataclass(frozen=True, slots=True)
class SeedProc:
    pid: int
    cgroup_id: int
    session: Session
    session_id: int
    info: ProcInfo
    ppid: int = 0
    vpid: int = 0
    uid: int = 0
    comm: str = ""
    tty: int = 0

    def process(self, container_id: str) -> Process:
        """The process as the kernel's records would describe it."""
        return Process(
            pid=self.pid,
            vpid=self.vpid,
            ppid=self.ppid,
            uid=self.uid,
            comm=self.comm,
            exepath=self.info.exepath,
            cmdline=self.info.cmdline,
            tty=self.tty,
            cgroup_id=self.cgroup_id,
            container_id=container_id,
            session=self.session,
            session_id=self.session_id,
        )


@dataclass(frozen=True, slots=True)
class SeedContainer:
    cgroup_id: int
    path: str
    ref: ContainerRef
    claimed: bool  # its own first process has started


@dataclass(frozen=True, slots=True)
class Seed:
    containers: tuple[SeedContainer, ...]
    processes: tuple[SeedProc, ...]


def walk_cgroups(root: str) -> Iterator[tuple[int, str]]:
    """(cgroup id, v2 path) for every cgroup; the id is the directory's inode."""
    for dirpath, _dirs, _files in os.walk(root):
        try:
            ino = os.stat(dirpath).st_ino
        except OSError:
            continue
        rel = "/" + os.path.relpath(dirpath, root).lstrip(".")
        yield ino, "/" if rel == "/" else rel.rstrip("/")


@dataclass(frozen=True, slots=True)
class _Proc:
    pid: int
    ppid: int
    start: int
    pidns: int
    cgroup_path: str
    info: ProcInfo
    vpid: int = 0
    uid: int = 0
    comm: str = ""
    tty: int = 0


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except OSError:
        return None


def _proc(pid: int, host_mnt_ns: int) -> _Proc | None:
    base = f"{PROC}/{pid}"
    cgroup_text = _read(f"{base}/cgroup")
    stat = _read(f"{base}/stat")
    status = _read(f"{base}/status")
    if cgroup_text is None or stat is None or status is None:
        return None
    cg_path = cgroup_v2_path(cgroup_text)
    if cg_path is None or parse_cgroup_path(cg_path) is None:
        return None
    try:
        if os.stat(f"{base}/ns/mnt").st_ino == host_mnt_ns:
            return None  # runc's machinery before it enters the container
        pidns = os.stat(f"{base}/ns/pid").st_ino
        exe = os.readlink(f"{base}/exe")
    except OSError:
        return None
    # fields after the parenthesised comm: state ppid pgrp session tty_nr … starttime
    head, _, tail = stat.rpartition(")")
    rest = tail.split()
    ids = {k: v.split() for k, _, v in (line.partition(":") for line in status.splitlines())}
    cmdline_raw = _read(f"{base}/cmdline") or ""
    # as the exec record's argv is split: `sh -c ""` keeps its empty word either way
    argv = split_args(cmdline_raw.encode("utf-8", "surrogateescape"))
    return _Proc(
        pid=pid,
        ppid=int(rest[1]),
        start=int(rest[19]),
        pidns=pidns,
        cgroup_path=cg_path,
        info=ProcInfo(exepath=exe.removesuffix(" (deleted)"), cmdline=argv),
        vpid=int((ids.get("NSpid") or [str(pid)])[-1]),
        uid=int((ids.get("Uid") or ["0"])[0]),
        comm=head.partition("(")[2],
        tty=int(rest[4]),
    )


def label_processes(procs: list[_Proc], pidns_of: dict[int, int]) -> list[SeedProc]:
    """Sessions for the processes of container cgroups (see the module docstring)."""
    by_pid = {p.pid: p for p in procs}
    by_cgroup: dict[str, list[_Proc]] = {}
    for p in procs:
        by_cgroup.setdefault(p.cgroup_path, []).append(p)
    labels: dict[int, tuple[Session, int]] = {}
    for members in by_cgroup.values():
        entries = [
            p
            for p in members
            if p.ppid not in by_pid or by_pid[p.ppid].cgroup_path != p.cgroup_path
        ]
        if not entries:
            continue
        init = min(entries, key=lambda p: (p.start, p.pid))
        for entry in entries:
            orphan = entry is not init and pidns_of.get(entry.ppid) == entry.pidns
            if entry is init or orphan:
                labels[entry.pid] = (Session.CONTAINER, 0)
            else:
                labels[entry.pid] = (Session.EXEC, entry.pid)
    out = []
    for p in procs:
        # climb to the entry of this process's tree inside its cgroup
        cur, hops = p, 0
        while cur.pid not in labels and hops < 4096:
            cur = by_pid[cur.ppid]
            hops += 1
        session, sid = labels.get(cur.pid, (Session.CONTAINER, 0))
        out.append(SeedProc(p.pid, 0, session, sid, p.info, p.ppid, p.vpid, p.uid, p.comm, p.tty))
    return out


def scan(host_mnt_ns: int, root: str | None = None) -> Seed:
    """Containers and their processes as they are now."""
    root = root or cgroup_root()
    containers: dict[str, tuple[int, ContainerRef]] = {}
    for cgroup_id, path in walk_cgroups(root):
        ref = parse_cgroup_path(path)
        if ref is not None:
            containers[path] = (cgroup_id, ref)
    procs: list[_Proc] = []
    pidns_of: dict[int, int] = {}
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            pidns_of[pid] = os.stat(f"{PROC}/{pid}/ns/pid").st_ino
        except OSError:
            continue
        p = _proc(pid, host_mnt_ns)
        if p is not None and p.cgroup_path in containers:
            procs.append(p)
    path_of = {p.pid: p.cgroup_path for p in procs}
    seeded = [
        dataclasses.replace(sp, cgroup_id=containers[path_of[sp.pid]][0])
        for sp in label_processes(procs, pidns_of)
    ]
    busy = {p.cgroup_path for p in procs}
    return Seed(
        containers=tuple(
            SeedContainer(cgroup_id, path, ref, claimed=path in busy)
            for path, (cgroup_id, ref) in containers.items()
        ),
        processes=tuple(seeded),
    )


def host_mnt_ns() -> int:
    """The host's mount namespace: PID 1's, or ours when PID 1's is not readable
    (a PID 1 holding capabilities we lack hides its namespaces)."""
    try:
        return os.stat(f"{PROC}/1/ns/mnt").st_ino
    except PermissionError:
        return os.stat(f"{PROC}/self/ns/mnt").st_ino


def live_pids() -> set[int]:
    """Every process (tgid) that exists now: one directory listing, not a read per pid.
    (A zombie is listed until it is reaped.)"""
    return {int(name) for name in os.listdir(PROC) if name.isdigit()}


class ProcHost:
    """`tracker.Host` over the real /proc and cgroup tree."""

    def __init__(self, root: str | None = None) -> None:
        self._root = root or cgroup_root()
        # the cgroup tree as of the last walk: replaced whole by every walk
        self._paths: dict[int, str] = {}

    def live_cgroups(self) -> set[int]:
        """Ids of every cgroup that exists now (one walk of the tree)."""
        self._paths = dict(walk_cgroups(self._root))
        return set(self._paths)

    def cgroup_path(self, cgroup_id: int) -> str | None:
        if cgroup_id not in self._paths:
            self._paths = dict(walk_cgroups(self._root))
        return self._paths.get(cgroup_id)

    def mount_points(self, pid: int) -> list[str] | None:
        text = _read(f"{PROC}/{pid}/mountinfo")
        return parse_mountinfo(text) if text else None
