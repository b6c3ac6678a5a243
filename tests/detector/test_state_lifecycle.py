"""The agent's long-lived state: what bounds each table, what a reload carries over,
what a restart seeds. Pure: plain values, no kernel (the e2e tests run the real thing)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from detector import engine as engine_mod
from detector.cgroups import ContainerRef
from detector.config import RateLimit
from detector.decode import RawExec, RawExit, RawHeader
from detector.events import ExecOrigin, Session
from detector.procscan import SeedProc
from detector.ratelimit import RateLimiter
from detector.synthetic import CID, SEC, T0, engine, exec_, exec_proc, exit_, proc, write
from detector.tracker import ProcInfo, Tracker

ROOTFS_NOTICE = "Container process wrote to its root filesystem"
CP_RULE = "kubectl cp into container"
LIMIT = RateLimit(enabled=True, rate=1.0, max_burst=1, summary_interval_s=10.0)


# --- reload: a new engine adopts the running one's state ------------------------------------


def test_reload_keeps_sessions_groups_held_alerts_and_drops() -> None:
    old = engine(rate_limit=LIMIT)
    leader = exec_proc(300, comm="sh", cmdline=("sh", "-c", "tar xf -"))
    tar = exec_proc(301, session_id=300, comm="tar", ppid=300)
    old.process(exec_(leader), T0)
    old.process(exec_(tar), T0)
    old.process(write(tar, "/x/1"), T0 + 1)  # opens the kubectl-cp group
    app = proc(200, comm="app")
    assert len(old.process(write(app, "/etc/a"), T0 + 2)) == 1
    assert old.process(write(app, "/etc/b"), T0 + 3) == []  # held back

    new = engine(rate_limit=LIMIT)
    assert new.adopt(old, T0 + 4) == []  # same rate limit: held alerts move, none owed
    assert new.session_cmdline(tar) == ("sh", "-c", "tar xf -")
    assert new.parent(300) == leader
    new.process(write(tar, "/x/2"), T0 + 5)  # folds into the group the old engine opened
    (cp,) = new.process(exit_(leader), T0 + 6)
    assert cp.rule == CP_RULE
    assert cp.output_fields["podlock.agg.count"] == 2
    # the old engine's held-back alert is released by the new one, with its count
    (summary,) = new.flush(T0 + 11 * SEC)
    assert (summary.rule, summary.output_fields["fd.name"]) == (ROOTFS_NOTICE, "/etc/b")


def test_reload_with_another_rate_limit_releases_the_held_alerts_at_once() -> None:
    old = engine(rate_limit=LIMIT)
    app = proc(200, comm="app")
    old.process(write(app, "/etc/a"), T0)
    old.process(write(app, "/etc/b"), T0 + 1)
    new = engine(rate_limit=RateLimit(enabled=False))
    (owed,) = new.adopt(old, T0 + 2)
    assert owed.output_fields["fd.name"] == "/etc/b"
    assert new.flush(T0 + 20 * SEC) == []


def test_seeded_session_leader_gives_children_their_session_and_parent() -> None:
    eng = engine()
    leader = exec_proc(300, comm="sh", cmdline=("sh", "-c", "sleep 1000"))
    eng.seed(leader)
    child = exec_proc(301, session_id=300, comm="touch", ppid=300)
    assert eng.session_cmdline(child) == ("sh", "-c", "sleep 1000")
    (alert,) = eng.process(write(child, "/etc/x"), T0)
    assert alert.output_fields["podlock.session_cmdline"] == "sh -c sleep 1000"
    assert alert.output_fields["podlock.session"] == "exec"
    assert eng.parent(300) == leader


def test_seed_proc_becomes_the_process_the_kernel_would_describe() -> None:
    sp = SeedProc(4000, 77, Session.EXEC, 4000, ProcInfo("/bin/sh", ("sh",)), 3990, 5, 0, "sh")
    p = sp.process(CID)
    assert (p.pid, p.vpid, p.ppid, p.comm, p.container_id) == (4000, 5, 3990, "sh", CID)
    assert (p.session, p.session_id, p.cgroup_id, p.exepath) == (Session.EXEC, 4000, 77, "/bin/sh")


# --- bounds ---------------------------------------------------------------------------------


def test_aggregate_groups_past_the_bound_close_oldest_first_and_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_mod, "MAX_GROUPS", 3)
    eng = engine()
    out = []
    for pid in range(400, 405):  # five copies at once, each its own session
        tar = exec_proc(pid, comm="tar")
        out += eng.process(write(tar, f"/x/{pid}"), T0 + pid)
    assert [a.output_fields["podlock.agg.items"] for a in out] == ["/x/400", "/x/401"]
    assert eng.evictions()["engine.groups"] == 2
    assert eng.table_sizes()["engine.groups"] == 3


def test_rate_limit_buckets_that_refilled_are_pruned_held_ones_stay() -> None:
    limiter: RateLimiter[str, str] = RateLimiter(rate=1.0, max_burst=2, summary_ns=10 * SEC)
    for key in ("a", "b", "c"):
        limiter.admit(key, 0)
    limiter.admit("c", 0)
    assert limiter.admit("c", 0) is None
    limiter.hold("c", 0, "held")
    assert limiter.prune(SEC // 2) == 0  # half a token back: not full yet
    assert limiter.prune(SEC) == 2  # a and b refilled; c holds an alert back
    assert len(limiter) == 1
    assert limiter.due(10 * SEC) == [("c", 0, "held")]
    assert limiter.prune(10 * SEC) == 1
    assert len(limiter) == 0


def test_engine_sweep_prunes_idle_buckets() -> None:
    eng = engine(rate_limit=LIMIT)
    for n in range(50):  # fifty containers alert once each, then go away
        eng.process(write(proc(200 + n, cid=f"{n:064x}"), "/etc/a"), T0)
    assert eng.table_sizes()["engine.rate_buckets"] == 50
    eng.sweep(T0 + 2 * SEC)
    assert eng.table_sizes()["engine.rate_buckets"] == 0


@dataclass
class Host:
    paths: dict[int, str] = field(default_factory=dict)

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self.paths.get(cgroup_id)

    def mount_points(self, pid: int) -> list[str] | None:
        return ["/", "/vol"]


def hdr(pid: int, cgroup_id: int) -> RawHeader:
    return RawHeader(1_000, pid, pid, 1, 0, 0, cgroup_id, Session.CONTAINER, 0, "sh")


def test_tracker_prune_forgets_gone_containers_and_processes_whose_exit_was_missed() -> None:
    t = Tracker(host=Host(), boot_to_wall_ns=0)
    for n in range(100):
        cg = 5000 + n
        t.add_container(cg, ContainerRef(f"{n:064x}", None, "containerd"))
        t.handle(RawExec(hdr(10_000 + n, cg), ExecOrigin.IMAGE, "/bin/sh", ("sh",)))
        t.handle(RawExec(hdr(20_000 + n, cg), ExecOrigin.IMAGE, "/bin/sh", ("sh",)))
        t.handle(RawExit(hdr(20_000 + n, cg), 0))  # this one's exit was seen
        t.container_of(cg)
        t._classify(10_000 + n, cg, "/etc/x")  # caches the mount table
    sizes = t.table_sizes()
    assert (sizes["tracker.containers"], sizes["tracker.processes"]) == (100, 100)
    assert sizes["tracker.mount_tables"] == 100
    # containers 0..89 are gone (their processes too, exits lost); 90..99 still run
    live_cgroups = {5000 + n for n in range(90, 100)}
    live_pids = {10_000 + n for n in range(90, 100)}
    t.prune(live_cgroups, live_pids.__contains__)
    assert t.table_sizes() == sizes  # found gone once: kept for records on their way
    t.prune(live_cgroups, live_pids.__contains__)
    sizes = t.table_sizes()
    assert (sizes["tracker.containers"], sizes["tracker.processes"]) == (10, 10)
    assert (sizes["tracker.mount_tables"], sizes["tracker.process_cache"]) == (10, 1)
    assert t.container_of(5095) is not None


def test_an_exit_record_on_its_way_finds_its_process_and_a_reused_pid_keeps_its_entry() -> None:
    t = Tracker(host=Host(), boot_to_wall_ns=0)
    t.add_container(5000, ContainerRef("ab" * 32, None, "containerd"))
    t.handle(RawExec(hdr(700, 5000), ExecOrigin.IMAGE, "/bin/tar", ("tar",)))
    t.prune({5000}, lambda pid: False)  # tar has exited; its exit record is not read yet
    exit_event = t.handle(RawExit(hdr(700, 5000), 0))
    assert exit_event is not None and exit_event.proc.exepath == "/bin/tar"
    # pid 701 is found gone, then reused by a new program before the next prune
    t.handle(RawExec(hdr(701, 5000), ExecOrigin.IMAGE, "/bin/sh", ("sh",)))
    t.prune({5000}, lambda pid: False)
    t.handle(RawExec(hdr(701, 5000), ExecOrigin.IMAGE, "/bin/ls", ("ls",)))
    t.prune({5000}, lambda pid: False)
    assert t.procs[701].exepath == "/bin/ls"
    t.prune({5000}, lambda pid: False)
    assert 701 not in t.procs


def test_engine_sweep_forgets_sessions_and_parents_a_sweep_after_they_are_found_gone() -> None:
    eng = engine()
    leader = exec_proc(300, comm="sh", cmdline=("sh", "-c", "sleep 9"))
    eng.process(exec_(leader), T0)  # its exit record is lost
    eng.sweep(T0, lambda pid: False)
    assert eng.table_sizes()["engine.sessions"] == 1
    eng.sweep(T0, lambda pid: False)
    assert (eng.table_sizes()["engine.sessions"], eng.table_sizes()["engine.processes"]) == (0, 0)
