"""Raw records -> events: container ids, rootfs/volume from mount tables, path folding,
and the start-up labelling of processes that already ran."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from detector.decode import DecodeError, RawCgroup, RawExec, RawExit, RawFile, RawHeader, decode
from detector.events import ExecEvent, ExecOrigin, FileEvent, FileOp, FsKind, Session
from detector.procscan import _Proc, label_processes
from detector.tracker import ProcInfo, Tracker, classify_path, normalise, parse_mountinfo

ID = "ab" * 32
CG = 4711
MOUNTS = ["/", "/proc", "/dev", "/vol", "/vol/sub", "/etc/hostname"]


@dataclass
class FakeHost:
    paths: dict[int, str] = field(default_factory=dict)
    mounts: dict[int, list[str]] = field(default_factory=dict)

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self.paths.get(cgroup_id)

    def mount_points(self, pid: int) -> list[str] | None:
        return self.mounts.get(pid)


def hdr(pid: int = 10, session: Session | None = Session.EXEC) -> RawHeader:
    return RawHeader(1_000, pid, 3, 9, 0, 0, CG, session, 10, "sh")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/etc/evil", FsKind.ROOTFS),
        ("/vol/data", FsKind.VOLUME),
        ("/vol", FsKind.VOLUME),
        ("/volume/x", FsKind.ROOTFS),  # a prefix of a name is not a mount point
        ("/vol/sub/deep", FsKind.VOLUME),
        ("/etc/hostname", FsKind.VOLUME),  # a file bind mount
        ("/", FsKind.ROOTFS),
    ],
)
def test_classify_path(path: str, kind: FsKind) -> None:
    assert classify_path(path, MOUNTS) == kind


@pytest.mark.parametrize(
    ("raw", "folded"),
    [
        ("/usr/share/./a", "/usr/share/a"),
        ("/usr/share/../b", "/usr/b"),
        ("//etc//x", "/etc/x"),
        ("/../../etc", "/etc"),
        ("relative/x", "relative/x"),  # unresolvable (dirfd gone): left alone
    ],
)
def test_normalise(raw: str, folded: str) -> None:
    assert normalise(raw) == folded


def test_parse_mountinfo_decodes_escapes() -> None:
    text = (
        "22 1 0:21 / / rw,relatime - overlay overlay rw\n"
        "23 22 0:5 / /my\\040vol rw - ext4 /dev/vda rw\n"
    )
    assert parse_mountinfo(text) == ["/", "/my vol"]


def test_file_event_gets_container_and_fs_from_host() -> None:
    host = FakeHost(paths={CG: f"/kubepods/besteffort/pod1/{ID}"}, mounts={10: MOUNTS})
    t = Tracker(host=host, boot_to_wall_ns=5)
    t.handle(RawExec(hdr(), ExecOrigin.IMAGE, "/bin/busybox", ("sh", "-c", "x")))
    ev = t.handle(RawFile(hdr(), FileOp.UNLINK, FsKind.UNKNOWN, -30, 0, "/vol/./a", ""))
    assert isinstance(ev, FileEvent)
    assert (ev.path, ev.fs, ev.result, ev.time_ns) == ("/vol/a", FsKind.VOLUME, -30, 1_005)
    assert ev.proc.container_id == ID
    assert ev.proc.cmdline == ("sh", "-c", "x")
    assert (ev.proc.session, ev.proc.session_id) == (Session.EXEC, 10)


def test_kernel_fs_verdict_wins_and_fd_results_become_zero() -> None:
    t = Tracker(host=FakeHost(), boot_to_wall_ns=0)
    ev = t.handle(RawFile(hdr(), FileOp.OPEN_WRITE, FsKind.ROOTFS, 3, 0o101, "/etc/x", ""))
    assert isinstance(ev, FileEvent)
    assert (ev.fs, ev.result, ev.proc.container_id) == (FsKind.ROOTFS, 0, "")


def test_cgroup_record_names_the_container_and_exit_forgets_the_process() -> None:
    t = Tracker(host=FakeHost(), boot_to_wall_ns=0)
    assert t.handle(RawCgroup(hdr(session=None), f"/docker/{ID}")) is None
    ev = t.handle(RawExec(hdr(pid=11, session=Session.CONTAINER), ExecOrigin.UPPER, "/t", ("t",)))
    assert isinstance(ev, ExecEvent)
    assert (ev.proc.container_id, ev.proc.session_id) == (ID, 0)
    t.handle(RawExit(hdr(pid=11), 0))
    assert 11 not in t.procs


def test_mount_table_falls_back_to_another_process_of_the_container() -> None:
    host = FakeHost(mounts={20: MOUNTS})  # pid 10 is gone, pid 20 still runs
    t = Tracker(host=host, boot_to_wall_ns=0)
    t.add_process(20, CG, ProcInfo("/bin/sh", ("sh",)))
    ev = t.handle(RawFile(hdr(pid=10), FileOp.MKDIR, FsKind.UNKNOWN, 0, 0o755, "/vol/d", ""))
    assert isinstance(ev, FileEvent) and ev.fs is FsKind.VOLUME


@pytest.mark.parametrize(
    ("between", "cmdline", "container_id"),
    [
        (None, ("sh", "-c", "x"), ""),  # nothing changed: the same Process value
        (RawExec(hdr(), ExecOrigin.UPPER, "/tmp/t", ("t", "-v")), ("t", "-v"), ""),
        (RawExit(hdr(), 0), (), ""),  # the pid's info is gone with the process
        (RawCgroup(hdr(session=None), f"/docker/{ID}"), ("sh", "-c", "x"), ID),
    ],
    ids=["same", "exec", "exit", "cgroup"],
)
def test_reused_process_values_follow_exec_exit_and_cgroup_records(
    between: RawExec | RawExit | RawCgroup | None, cmdline: tuple[str, ...], container_id: str
) -> None:
    t = Tracker(host=FakeHost(), boot_to_wall_ns=0)
    t.handle(RawExec(hdr(), ExecOrigin.IMAGE, "/bin/busybox", ("sh", "-c", "x")))
    write = RawFile(hdr(), FileOp.OPEN_WRITE, FsKind.ROOTFS, 3, 0o101, "/etc/x", "")
    first = t.handle(write)
    if between is not None:
        t.handle(between)
    second = t.handle(write)
    assert isinstance(first, FileEvent) and isinstance(second, FileEvent)
    assert (second.proc.cmdline, second.proc.container_id) == (cmdline, container_id)
    assert (second.proc is first.proc) == (between is None)


def proc(pid: int, ppid: int, start: int, cg: str = "/c1", pidns: int = 100) -> _Proc:
    return _Proc(pid, ppid, start, pidns, cg, ProcInfo("/bin/sh", ("sh",)))


@pytest.mark.parametrize(
    ("procs", "pidns_of", "expected"),
    [
        (  # init tree and an exec session with a child
            [proc(10, 1, 5), proc(11, 10, 6), proc(20, 2, 9), proc(21, 20, 10)],
            {1: 1, 2: 1},
            {10: (Session.CONTAINER, 0), 11: (Session.CONTAINER, 0),
             20: (Session.EXEC, 20), 21: (Session.EXEC, 20)},
        ),
        (  # shareProcessNamespace: an orphan reparented to pause (same PID ns) stays container
            [proc(10, 5, 5), proc(12, 5, 7), proc(20, 2, 9)],
            {5: 100, 2: 1},
            {10: (Session.CONTAINER, 0), 12: (Session.CONTAINER, 0), 20: (Session.EXEC, 20)},
        ),
        (  # two containers are labelled independently
            [proc(10, 1, 5, "/c1"), proc(30, 1, 3, "/c2"), proc(31, 2, 8, "/c2")],
            {1: 1, 2: 1},
            {10: (Session.CONTAINER, 0), 30: (Session.CONTAINER, 0), 31: (Session.EXEC, 31)},
        ),
    ],
    ids=["init-and-exec", "shared-pid-namespace", "two-containers"],
)  # fmt: skip
def test_label_processes(
    procs: list[_Proc], pidns_of: dict[int, int], expected: dict[int, tuple[Session, int]]
) -> None:
    got = {p.pid: (p.session, p.session_id) for p in label_processes(procs, pidns_of)}
    assert got == expected


def file_bytes(
    op: int = 1, fs: int = 1, p: str = "/etc/x", target: str = "", pid: int = 10
) -> bytes:
    """A file record as the kernel writes it (header of hdr(pid), 592 bytes)."""
    head = struct.pack("<QIIIIIIQIB3x16s", 1_000, 1, pid, 3, 9, 0, 0, CG, 10, 2, b"sh")
    body = struct.pack("<iIBB6x", 3, 0o101, op, fs)
    return head + body + p.encode().ljust(256, b"\0") + target.encode().ljust(256, b"\0")


@pytest.mark.parametrize(
    "record",
    [
        file_bytes(),
        file_bytes(op=2, fs=0, p="/vol/./a", target="/vol//b"),  # classified from the mounts
        file_bytes(op=6, fs=0, p="/etc/l", target="relative/target"),  # symlink text kept
        file_bytes(op=1, fs=2, p="/x"),
    ],
    ids=["open-rootfs", "rename-unknown-fs", "symlink", "volume"],
)
def test_file_record_fast_path_equals_decode_then_handle(record: bytes) -> None:
    host = FakeHost(mounts={10: MOUNTS})
    slow = Tracker(host=host, boot_to_wall_ns=5).handle(decode(record))
    fast = Tracker(host=host, boot_to_wall_ns=5)
    first, second = fast.file_record(record), fast.file_record(record)  # miss, then hit
    assert first == slow and second == slow
    assert first is not None and second is not None and second.proc is first.proc


@pytest.mark.parametrize(
    ("between", "cmdline", "container_id"),
    [
        (RawExec(hdr(), ExecOrigin.UPPER, "/tmp/t", ("t", "-v")), ("t", "-v"), ""),
        (RawExit(hdr(), 0), (), ""),
        (RawCgroup(hdr(session=None), f"/docker/{ID}"), ("sh", "-c", "x"), ID),
    ],
    ids=["exec", "exit", "cgroup"],
)
def test_file_record_process_follows_exec_exit_and_cgroup_records(
    between: RawExec | RawExit | RawCgroup, cmdline: tuple[str, ...], container_id: str
) -> None:
    t = Tracker(host=FakeHost(), boot_to_wall_ns=0)
    t.handle(RawExec(hdr(), ExecOrigin.IMAGE, "/bin/busybox", ("sh", "-c", "x")))
    first = t.file_record(file_bytes())
    t.handle(between)
    second = t.file_record(file_bytes())
    assert first is not None and second is not None
    assert first.proc.cmdline == ("sh", "-c", "x")
    assert (second.proc.cmdline, second.proc.container_id) == (cmdline, container_id)


@pytest.mark.parametrize(
    "record",
    [file_bytes()[:100], struct.pack("<QI", 1, 3).ljust(600, b"\0")],
    ids=["short", "exit-kind"],
)
def test_file_record_leaves_other_records_to_decode(record: bytes) -> None:
    assert Tracker(host=FakeHost(), boot_to_wall_ns=0).file_record(record) is None


def test_file_record_with_an_unknown_operation_is_a_decode_error() -> None:
    t = Tracker(host=FakeHost(), boot_to_wall_ns=0)
    t.file_record(file_bytes())  # the process is known: the fast path would be taken
    with pytest.raises(DecodeError, match="unknown file operation 99"):
        t.file_record(file_bytes(op=99))
