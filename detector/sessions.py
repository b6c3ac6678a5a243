"""Small bounded state the engine keeps between events: each exec session's
command (its leader's argv) and recently exec'd processes (for `proc.pname`).

The kernel labels sessions; this only remembers what the labels point at. Both
tables drop an entry when its process exits, and are bounded by a capacity past
which the least recently used entry is evicted and counted (`evicted`): a missed
exit (a lost record) costs a slot for a while, never memory without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import TypeVar

from detector.events import Process, Session, SessionRef

V = TypeVar("V")


def prune_gone(
    table: MutableMapping[int, V], alive: Callable[[int], bool], dead_before: dict[int, V]
) -> dict[int, V]:
    """Drop the entries of pids that are not alive and were not at the previous call
    either, holding the same entry: an exit record still on its way finds its entry
    (and a pid reused meanwhile keeps its new one). Returns what to pass next time."""
    dead = {pid: entry for pid, entry in table.items() if not alive(pid)}
    for pid, entry in list(dead.items()):
        if dead_before.get(pid) is entry:
            del table[pid], dead[pid]
    return dead


@dataclass(slots=True)
class SessionInfo:
    container_id: str
    argv: tuple[str, ...]
    ref: SessionRef  # what alerts of this session carry (one value per session)
    probe: bool | None = None  # None until the container's metadata is known


class SessionTable:
    """session id → its command; an entry lives until the leader exits (or eviction)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._by_id: OrderedDict[int, SessionInfo] = OrderedDict()
        self._dead: dict[int, SessionInfo] = {}  # found gone by the last prune
        self.evicted = 0

    def leader_exec(self, proc: Process, time_ns: int) -> None:
        """Record the session's command and start at its leader's first exec; later execs
        of the leader (`sh -c 'exec …'`) keep the session what it started as."""
        if proc.session is not Session.EXEC or proc.pid != proc.session_id:
            return
        if proc.session_id in self._by_id:
            return
        ref = SessionRef(proc.container_id, proc.session_id, proc.cmdline, time_ns)
        self._by_id[proc.session_id] = SessionInfo(proc.container_id, proc.cmdline, ref)
        if len(self._by_id) > self._capacity:
            self._by_id.popitem(last=False)
            self.evicted += 1

    def get(self, session_id: int) -> SessionInfo | None:
        return self._by_id.get(session_id)

    def end(self, session_id: int) -> None:
        self._by_id.pop(session_id, None)

    def prune(self, alive: Callable[[int], bool]) -> None:
        """Drop sessions whose leader is gone without its exit seen (see prune_gone)."""
        self._dead = prune_gone(self._by_id, alive, self._dead)

    def __len__(self) -> int:
        return len(self._by_id)


class ProcessTable:
    """pid → the process as of its last exec, for parent fields; an entry lives until
    the process exits (or eviction)."""

    def __init__(self, capacity: int = 32768) -> None:
        self._capacity = capacity
        self._by_pid: OrderedDict[int, Process] = OrderedDict()
        self._dead: dict[int, Process] = {}  # found gone by the last prune
        self.evicted = 0

    def remember(self, proc: Process) -> None:
        by_pid = self._by_pid
        if proc.pid in by_pid:
            by_pid.move_to_end(proc.pid)
        by_pid[proc.pid] = proc
        if len(by_pid) > self._capacity:
            by_pid.popitem(last=False)
            self.evicted += 1

    def get(self, pid: int) -> Process | None:
        return self._by_pid.get(pid)

    def forget(self, pid: int) -> None:
        self._by_pid.pop(pid, None)

    def prune(self, alive: Callable[[int], bool]) -> None:
        """Drop processes that are gone without their exit seen (see prune_gone)."""
        self._dead = prune_gone(self._by_pid, alive, self._dead)

    def __len__(self) -> int:
        return len(self._by_pid)
