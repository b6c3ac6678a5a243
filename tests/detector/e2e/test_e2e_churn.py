"""Churn: containers and processes that went away leave nothing behind, in the tracker,
the engine or the kernel's maps, once the agent's sweep has run. Real kernel, real runc.

The agent runs in this process (as `podlock detect` wires it) so the test can look at
its tables; its loop thread sweeps only when the test asks, so the test sees the
state before and after. Other jobs on the machine may run containers meanwhile: the
assertions are about this test's containers and about liveness, never about totals.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from detector import procscan
from detector.agent import POLL_MS, Pipeline, seed
from detector.config import RateLimit, load_detector_settings
from detector.engine import Engine
from detector.k8s import NoMetadata
from detector.loader import Loader
from detector.outputs import Outputs
from detector.tracker import Tracker

from .conftest import start_container, stop_container

pytestmark = pytest.mark.root
T = TypeVar("T")
CONTAINERS = 6
PROCESSES = 40  # short-lived processes per container


class InProcessAgent:
    """The agent's pipeline, polled by a thread; `call` runs a function in that thread
    between two polls (the tables are only ever touched there)."""

    def __init__(self) -> None:
        settings = load_detector_settings(None, [])
        self.loader = Loader(procscan.host_mnt_ns())
        self.loader.start()
        # a quick refill, so buckets of gone containers are prunable within a second
        limit = RateLimit(enabled=True, rate=10.0, max_burst=5, summary_interval_s=1.0)
        engine = Engine(settings.rules, NoMetadata(), rate_limit=limit)
        boot_to_wall = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        host = procscan.ProcHost()
        tracker = Tracker(host=host, boot_to_wall_ns=boot_to_wall)
        seed(self.loader, tracker, procscan.host_mnt_ns(), engine)
        self.pipeline = Pipeline(self.loader, tracker, engine, Outputs([]), None, host)
        self._calls: queue.Queue[tuple[Callable[[Pipeline], Any], queue.Queue[Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        p = self.pipeline
        while not self._stop.is_set():
            now = p.step(POLL_MS)
            p.flush(now)
            while not self._calls.empty():
                fn, answer = self._calls.get()
                answer.put(fn(p))

    def call(self, fn: Callable[[Pipeline], T]) -> T:
        answer: queue.Queue[T] = queue.Queue()
        self._calls.put((fn, answer))
        return answer.get(timeout=60)

    def drained(self) -> None:
        """Returns once the agent has handled every record the kernel wrote before the call
        (the ring buffer's consumer position has passed its producer position of then)."""
        written = self.call(lambda p: _ring(p)._prod_pos[0])
        deadline = time.monotonic() + 60
        while self.call(lambda p: _ring(p)._cons[0]) < written:
            assert time.monotonic() < deadline, "the agent did not catch up in 60 s"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.loader.close()


def _ring(p: Pipeline) -> Any:
    return p.loader._ring


@pytest.fixture
def agent(e2e_dir: Path) -> Iterator[InProcessAgent]:
    a = InProcessAgent()
    yield a
    a.close()


def _cgroup_id(c: Any) -> int:
    path = f"{procscan.cgroup_root()}/kubepods/besteffort/pod{c.pod_uid}/{c.id}"
    return os.stat(path).st_ino


def test_churned_containers_and_processes_leave_nothing_behind(
    agent: InProcessAgent, image: Path, e2e_dir: Path
) -> None:
    cgroups: dict[str, int] = {}
    for _ in range(CONTAINERS):
        c = start_container(e2e_dir / "churn", image, readonly=False)
        try:
            cgroups[c.id] = _cgroup_id(c)
            script = (
                "echo x > /etc/churn; echo y > /vol/churn; "
                f"i=0; while [ $i -lt {PROCESSES} ]; do /bin/true; i=$((i+1)); done"
            )
            assert c.exec(script).returncode == 0
        finally:
            stop_container(c)
    agent.drained()  # the last records

    def ours(p: Pipeline) -> dict[str, Any]:
        t, e = p.tracker, p.engine
        live = procscan.live_pids()
        buckets = e._limiter._buckets if e._limiter is not None else {}
        return {
            "tracker": [cg for cg in cgroups.values() if cg in t.containers],
            "mounts": [cg for cg in cgroups.values() if cg in t.mounts or cg in t.mount_pids],
            "kernel": [cg for cg in p.loader.container_cgroups() if cg in cgroups.values()],
            "buckets": [k for k in buckets if k[1] in cgroups],
            "dead pids": [
                pid
                for pid in {*p.loader.labelled_pids(), *t.procs, *e._procs._by_pid}
                if pid not in live
            ],
            "dead sessions": [s for s in e._sessions._by_id if s not in live],
        }

    before = agent.call(ours)
    # the agent did learn every container (or this test would prove nothing)
    assert len(before["tracker"]) == CONTAINERS, before
    assert len(before["mounts"]) == CONTAINERS, before
    assert len(before["buckets"]) >= CONTAINERS, before

    time.sleep(1.0)  # the buckets refill
    for _ in range(2):  # found gone, then dropped by the next sweep
        agent.call(Pipeline.sweep)
    after = agent.call(ours)
    # a process may have died a moment ago, its exit record still on its way: stale
    # is what stays dead and listed after the records written meanwhile are in
    agent.drained()
    again = agent.call(ours)
    for key in ("dead pids", "dead sessions"):
        after[key] = sorted(set(after[key]) & set(again[key]))
    assert after == {
        "tracker": [],
        "mounts": [],
        "kernel": [],
        "buckets": [],
        "dead pids": [],
        "dead sessions": [],
    }
