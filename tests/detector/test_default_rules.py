"""The default rules against synthetic event sequences built from detector.events."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from detector.alerts import Alert, Priority
from detector.engine import Engine
from detector.events import Event, ExecOrigin, FileOp, FsKind, Session
from detector.synthetic import (
    CID,
    SEC,
    T0,
    StaticMeta,
    engine,
    exec_,
    exec_proc,
    exit_,
    proc,
    write,
)

CP = "kubectl cp into container"
EXEC_ROOTFS = "Write to container root filesystem in exec session"
EXEC_VOLUME = "Write to container volume in exec session"
REFUSED = "Write attempt refused by read-only root filesystem"
SHELL = "Shell in container exec session"
DROPPED = "Dropped executable launched in container"
CONTAINER_ROOTFS = "Container process wrote to its root filesystem"

EROFS, EACCES, ENOENT = -30, -13, -2


def run(events: Sequence[Event], eng: Engine | None = None, tick: int = 1000) -> list[Alert]:
    """Feed events 1 µs apart on the engine's clock; no flush."""
    eng = eng or engine()
    out: list[Alert] = []
    for i, ev in enumerate(events):
        out.extend(eng.process(ev, T0 + i * tick))
    return out


def names(alerts: Sequence[Alert]) -> list[str]:
    return [a.rule for a in alerts]


# --- one table: sequence → the rules that fire ---------------------------------------------

SHELL_LEADER = exec_proc(300, comm="sh", cmdline=("sh",), tty=34816)
BASH_TTY = exec_proc(301, comm="bash", cmdline=("bash", "-il"), tty=34817)
APP = proc(200, comm="nginx")
SCRIPT = exec_proc(320, comm="sh", cmdline=("sh", "-c", "echo hi > /tmp/x"))

CASES: list[tuple[str, list[Event], list[str]]] = [
    ("exec shell writes /etc/evil", [exec_(SHELL_LEADER), write(SHELL_LEADER, "/etc/evil")],
     [SHELL, EXEC_ROOTFS]),
    ("exec shell writes the volume", [exec_(SHELL_LEADER), write(SHELL_LEADER, "/data/x",
     fs=FsKind.VOLUME)], [SHELL, EXEC_VOLUME]),
    ("exec write fails ENOENT: nothing", [write(SCRIPT, "/nope/x", result=ENOENT)], []),
    ("exec write refused EROFS", [write(SCRIPT, "/etc/evil", result=EROFS)], [REFUSED]),
    ("container write refused EACCES", [write(APP, "/etc/x", result=EACCES)], [REFUSED]),
    ("refused on a volume is not a rootfs refusal",
     [write(APP, "/data/x", fs=FsKind.VOLUME, result=EROFS)], []),
    ("container writes rootfs: notice only", [write(APP, "/var/cache/nginx/x")],
     [CONTAINER_ROOTFS]),
    ("container writes volume: nothing", [write(APP, "/data/x", fs=FsKind.VOLUME)], []),
    ("container rename on rootfs", [write(APP, "/etc/a", op=FileOp.RENAME, target="/etc/b")],
     [CONTAINER_ROOTFS]),
    ("container image exec: nothing", [exec_(APP)], []),
    ("shell started by the container itself: nothing", [exec_(proc(201, comm="sh"))], []),
    ("subshell of an exec shell is not reported again",
     [exec_(SHELL_LEADER), exec_(exec_proc(302, 300, comm="sh", ppid=300))], [SHELL]),
    ("non-shell in exec session: nothing", [exec_(exec_proc(303, comm="ls"))], []),
    ("setsid child of the session keeps exec", [exec_(SHELL_LEADER), write(
     exec_proc(330, 300, comm="sh", ppid=1), "/usr/bin/evil")], [SHELL, EXEC_ROOTFS]),
    ("dropped binary from upper layer", [exec_(proc(210, comm="xmrig"), ExecOrigin.UPPER)],
     [DROPPED]),
    ("dropped binary from a volume", [exec_(proc(211, comm="x"), ExecOrigin.VOLUME)], [DROPPED]),
    ("dropped binary from memfd", [exec_(exec_proc(212, comm="x"), ExecOrigin.MEMFD)],
     [DROPPED]),
    ("unknown origin: nothing", [exec_(proc(213, comm="x"), ExecOrigin.UNKNOWN)], []),
    ("tar with a tty is a human, not kubectl cp", [write(exec_proc(340, comm="tar", tty=34818),
     "/etc/x")], [EXEC_ROOTFS]),
]  # fmt: skip


@pytest.mark.parametrize(("events", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules_that_fire(events: list[Event], expected: list[str]) -> None:
    assert names(run(events)) == expected


# --- kubectl cp --------------------------------------------------------------------------------

TAR = exec_proc(400, comm="tar", cmdline=("tar", "-xmf", "-", "-C", "/usr/share"))


def test_kubectl_cp_is_one_alert_emitted_when_tar_exits() -> None:
    eng = engine()
    events: list[Event] = [exec_(TAR)]
    events += [write(TAR, f"/usr/share/f{i}") for i in range(5)]
    events += [write(TAR, "/usr/share/d", op=FileOp.MKDIR)]
    events += [write(TAR, "/data/v", fs=FsKind.VOLUME)]
    before_exit = run(events, eng)
    assert before_exit == []  # folded, and no per-file exec-session alerts either
    (alert,) = eng.process(exit_(TAR), T0 + SEC // 10)
    assert alert.rule == CP
    assert alert.priority is Priority.ERROR
    fields = alert.output_fields
    assert fields["podlock.agg.count"] == 7
    assert fields["podlock.agg.items"] == ",".join(
        [f"/usr/share/f{i}" for i in range(5)] + ["/usr/share/d", "/data/v"]
    )
    assert fields["podlock.fs"] == "rootfs,volume"
    assert fields["podlock.session"] == "exec"
    assert fields["podlock.session_id"] == 400
    assert fields["container.id"] == CID[:12]
    assert fields["k8s.pod.name"] == "web-7d9f"
    assert "command=tar -xmf - -C /usr/share" in alert.output
    assert alert.time_ns == T0  # when the copy started
    assert eng.flush(T0 + 10 * SEC) == []  # nothing left open


def test_kubectl_cp_over_20_files_lists_20_and_counts_all() -> None:
    eng = engine()
    events = [write(TAR, f"/opt/f{i:03d}") for i in range(57)]
    events.append(write(TAR, "/opt/f000", op=FileOp.CHMOD_EXEC))  # same path: counted once
    run(events, eng)
    (alert,) = eng.process(exit_(TAR), T0 + SEC)
    items = str(alert.output_fields["podlock.agg.items"]).split(",")
    assert items == [f"/opt/f{i:03d}" for i in range(20)]
    assert alert.output_fields["podlock.agg.count"] == 57


def test_kubectl_cp_flushes_after_one_second_idle() -> None:
    eng = engine()
    run([write(TAR, "/usr/share/a"), write(TAR, "/usr/share/b")], eng)
    assert eng.flush(T0 + SEC // 2) == []
    (alert,) = eng.flush(T0 + SEC + 2000)
    assert alert.rule == CP
    assert alert.output_fields["podlock.agg.count"] == 2
    # A later write by the same tar opens a new copy alert.
    eng.process(write(TAR, "/usr/share/c"), T0 + 3 * SEC)
    (again,) = eng.process(exit_(TAR), T0 + 3 * SEC + 10)
    assert again.output_fields["podlock.agg.items"] == "/usr/share/c"


def test_kubectl_cp_idle_flush_also_happens_from_process() -> None:
    eng = engine()
    eng.process(write(TAR, "/usr/share/a"), T0)
    alerts = eng.process(exec_(proc(250, comm="nginx")), T0 + 2 * SEC)
    assert names(alerts) == [CP]


def test_kubectl_cp_into_readonly_root_folds_refusals() -> None:
    eng = engine()
    run([write(TAR, "/usr/share/a", result=EROFS), write(TAR, "/usr/share/b", result=EROFS)], eng)
    (alert,) = eng.process(exit_(TAR), T0 + SEC)
    assert alert.rule == CP
    assert alert.output_fields["evt.res"] == "EROFS"


def test_two_copies_in_parallel_are_two_alerts() -> None:
    eng = engine()
    tar2 = exec_proc(401, comm="tar")
    run([write(TAR, "/a/1"), write(tar2, "/b/1"), write(TAR, "/a/2")], eng)
    first = eng.process(exit_(tar2), T0 + SEC // 10)
    second = eng.process(exit_(TAR), T0 + SEC // 5)
    assert [a.output_fields["podlock.agg.items"] for a in first + second] == ["/b/1", "/a/1,/a/2"]


# --- exec probes ---------------------------------------------------------------------------

PROBE = exec_proc(500, comm="sh", cmdline=("sh", "-c", "test -f /tmp/ready"))
PROBE_CHILD = exec_proc(501, 500, comm="test", ppid=500)


def test_probe_session_and_its_children_are_not_reported() -> None:
    events: list[Event] = [
        exec_(PROBE),  # would be a shell in an exec session
        exec_(PROBE_CHILD, ExecOrigin.UPPER),  # would be a dropped executable
        write(PROBE_CHILD, "/tmp/ready"),  # would be an exec-session rootfs write
        write(PROBE, "/etc/x", result=EROFS),
        exit_(PROBE_CHILD),
        exit_(PROBE),
    ]
    assert run(events) == []


def test_same_command_without_probe_metadata_is_reported() -> None:
    events: list[Event] = [exec_(PROBE), write(PROBE_CHILD, "/tmp/ready")]
    assert names(run(events, engine(meta=StaticMeta({})))) == [SHELL, EXEC_ROOTFS]


def test_probe_state_ends_with_the_leader_and_pid_reuse_is_not_a_probe() -> None:
    eng = engine()
    run([exec_(PROBE), exit_(PROBE)], eng)
    reused = exec_proc(500, comm="sh", cmdline=("sh",), tty=34816)
    assert names(run([exec_(reused), write(reused, "/etc/x")], eng)) == [SHELL, EXEC_ROOTFS]


def test_argv_must_match_exactly() -> None:
    almost = exec_proc(510, comm="cat", cmdline=("cat", "/tmp/healthy", "/etc/shadow"))
    assert names(run([exec_(almost), write(almost, "/etc/x")])) == [EXEC_ROOTFS]


# --- output content -------------------------------------------------------------------------


def test_shell_alert_records_the_tty() -> None:
    (alert,) = run([exec_(BASH_TTY)])
    assert alert.rule == SHELL
    assert alert.priority is Priority.NOTICE
    assert alert.output_fields["proc.tty"] == 34817
    assert "tty=34817" in alert.output
    assert alert.tags[0] == "maturity_stable"


@pytest.mark.parametrize("origin", [ExecOrigin.UPPER, ExecOrigin.VOLUME, ExecOrigin.MEMFD])
def test_dropped_executable_names_origin(origin: ExecOrigin) -> None:
    p = proc(600, comm="payload", exepath="/tmp/payload")
    (alert,) = run([exec_(p, origin)])
    assert alert.priority is Priority.CRITICAL
    assert f"origin={origin.value}" in alert.output
    assert alert.output_fields["proc.exepath"] == "/tmp/payload"


def test_exec_rootfs_alert_fields() -> None:
    (alert,) = run([write(SCRIPT, "/etc/evil")])
    f = alert.output_fields
    assert (f["fd.name"], f["podlock.fs"], f["podlock.session"]) == ("/etc/evil", "rootfs", "exec")
    assert (f["container.name"], f["k8s.ns.name"]) == ("web", "shop")
    assert f["container.image.repository"] == "registry.example:5000/shop/web"
    assert (f["podlock.drops"], f["podlock.suppressed"]) == (0, 0)
    assert f["proc.cmdline"] == "sh -c echo hi > /tmp/x"


def test_host_process_without_metadata_renders_na() -> None:
    p = proc(700, comm="x", cid="ab" * 32)
    (alert,) = run([write(p, "/etc/x")], engine(meta=StaticMeta({})))
    assert alert.output_fields["k8s.pod.name"] is None
    assert "k8s_pod=<NA>" in alert.output


def test_rule_index_by_event_type() -> None:
    eng = engine()
    assert eng.rules_for("procexit") == ()
    assert set(eng.rules_for("execve")) == {SHELL, DROPPED}
    assert CP in eng.rules_for("mkdir")
    assert eng.warnings == []


def test_session_enum_used_by_kit_is_exec() -> None:
    assert exec_proc(1).session is Session.EXEC


# --- tuning through the hooks, without editing the default file --------------------------

LOCAL = """\
- list: known_rootfs_writer_binaries
  items: [nginx]
  override: {items: append}

- macro: user_known_exec_session_activities
  condition: (k8s.ns.name = shop and proc.name = pg_dump)
  override: {condition: replace}

- rule: Container process wrote to its root filesystem
  enabled: false
"""


def test_hooks_extend_the_defaults_from_a_local_file() -> None:
    from detector.config import default_rules_path
    from detector.rules import load_rules
    from detector.synthetic import engine as make_engine

    with open(default_rules_path(), encoding="utf-8") as handle:
        rules = load_rules([("default_rules.yaml", handle.read()), ("local.yaml", LOCAL)])
    eng = make_engine(rules)
    nginx = proc(200, comm="nginx")
    dump = exec_proc(800, comm="pg_dump")
    other = exec_proc(801, comm="vi", tty=34816)
    assert run([write(nginx, "/etc/x", result=EROFS)], eng) == []  # known writer
    assert run([write(proc(201, comm="java"), "/etc/x")], eng) == []  # rule disabled
    assert run([write(dump, "/etc/x")], eng) == []  # known exec activity
    assert names(run([write(other, "/etc/x")], eng)) == [EXEC_ROOTFS]
