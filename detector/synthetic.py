"""Synthetic events for tests and benchmarks of the rule engine: builders of
detector.events values with realistic defaults, and a static metadata source."""

from __future__ import annotations

from collections.abc import Mapping

from detector.config import RateLimit
from detector.engine import Engine
from detector.events import (
    ExecEvent,
    ExecOrigin,
    ExitEvent,
    FileEvent,
    FileOp,
    FsKind,
    Process,
    Session,
)
from detector.k8s import ContainerMeta
from detector.rules import RuleSet, load_rules

CID = "3f2a9c" * 10 + "beef"  # 64 hex
T0 = 1_790_000_000_000_000_000  # 2026-09-21T…Z
SEC = 1_000_000_000

META = ContainerMeta(
    container_id=CID,
    container_name="web",
    pod_name="web-7d9f",
    namespace="shop",
    pod_uid="0b3e6c1e-1111-2222-3333-444455556666",
    image="registry.example:5000/shop/web:1.4.2",
    repository="registry.example:5000/shop/web",
    tag="1.4.2",
    probe_commands=frozenset({("cat", "/tmp/healthy"), ("sh", "-c", "test -f /tmp/ready")}),
    labels={"app": "web"},
)


class StaticMeta:
    def __init__(self, metas: Mapping[str, ContainerMeta] | None = None) -> None:
        self.metas = dict(metas) if metas is not None else {CID: META}

    def lookup(self, container_id: str) -> ContainerMeta | None:
        return self.metas.get(container_id)


def proc(
    pid: int = 200,
    *,
    comm: str = "app",
    cmdline: tuple[str, ...] | None = None,
    session: Session = Session.CONTAINER,
    session_id: int = 0,
    tty: int = 0,
    ppid: int = 1,
    uid: int = 0,
    exepath: str | None = None,
    cid: str = CID,
) -> Process:
    return Process(
        pid=pid,
        vpid=pid - 100 if pid > 100 else pid,
        ppid=ppid,
        uid=uid,
        comm=comm,
        exepath=exepath if exepath is not None else f"/bin/{comm}",
        cmdline=cmdline if cmdline is not None else (comm,),
        tty=tty,
        cgroup_id=4242,
        container_id=cid,
        session=session,
        session_id=session_id,
    )


def exec_proc(pid: int, session_id: int | None = None, **kw: object) -> Process:
    """A process of an exec session (the leader when session_id is its own pid)."""
    return proc(pid, session=Session.EXEC, session_id=pid if session_id is None else session_id,
                **kw)  # type: ignore[arg-type]  # fmt: skip


def write(
    p: Process,
    path: str,
    *,
    op: FileOp = FileOp.OPEN_WRITE,
    fs: FsKind = FsKind.ROOTFS,
    result: int = 0,
    t: int = T0,
    target: str = "",
) -> FileEvent:
    return FileEvent(time_ns=t, proc=p, op=op, path=path, target=target, fs=fs, result=result,
                     flags=0o101)  # fmt: skip


def exec_(p: Process, origin: ExecOrigin = ExecOrigin.IMAGE, t: int = T0) -> ExecEvent:
    return ExecEvent(time_ns=t, proc=p, origin=origin)


def exit_(p: Process, t: int = T0) -> ExitEvent:
    return ExitEvent(time_ns=t, proc=p)


def default_rules() -> RuleSet:
    from detector.config import default_rules_path

    with open(default_rules_path(), encoding="utf-8") as handle:
        return load_rules([("default_rules.yaml", handle.read())])


def engine(
    rules: RuleSet | None = None,
    *,
    meta: StaticMeta | None = None,
    rate_limit: RateLimit | None = None,
    **kw: object,
) -> Engine:
    return Engine(
        rules if rules is not None else default_rules(),
        meta if meta is not None else StaticMeta(),
        hostname="node-1",
        rate_limit=rate_limit or RateLimit(enabled=False),
        **kw,  # type: ignore[arg-type]
    )
