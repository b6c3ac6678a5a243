"""Soak: does the detector's memory come back after churn? Real kernel, real runc.

The agent runs in this process as `podlock detect` wires it (Loader, Tracker, Engine,
Pipeline with its flush and sweep, a file output), polled by one thread; the main
thread makes the churn:

(a) SOAK_CONTAINERS runc containers (default 1,000), one after another: created, written
    to from an exec session (one file on the root filesystem, one on a volume), deleted;
(b) SOAK_PROCESSES short-lived processes (default 1,000,000) in two long-lived
    containers: a static spawner in each exec session posix_spawns a static do-nothing
    program and waits for it, half of the processes in each.

It samples the process's RSS and every table's entries (the kernel's `procs` and
`containers` maps, the tracker's and the engine's tables) at the start, every 100
containers and 100k processes, and at the end (after two sweep periods), and keeps the
peak. Every expected event (exec and exit of each spawned process, each file written)
is either seen by the engine or counted lost: `unaccounted` is what is neither.
Bounded in time: (b) stops at SOAK_BUDGET_S seconds (default 3,000) and says so.
Writes tests/bench/results/soak.md. Needs root.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import cpu_model, load_harness

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detector import procscan  # noqa: E402
from detector.agent import POLL_MS, SWEEP_EVERY_NS, Pipeline, seed  # noqa: E402
from detector.alerts import Alert  # noqa: E402
from detector.config import load_detector_settings  # noqa: E402
from detector.engine import Engine  # noqa: E402
from detector.events import Event, ExecEvent, ExitEvent, FileEvent  # noqa: E402
from detector.k8s import NoMetadata  # noqa: E402
from detector.loader import Loader  # noqa: E402
from detector.outputs import build_outputs  # noqa: E402
from detector.tracker import Tracker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "soak.md"
CONTAINERS = int(os.environ.get("SOAK_CONTAINERS", "1000"))
PROCESSES = int(os.environ.get("SOAK_PROCESSES", "1000000"))
BUDGET_S = float(os.environ.get("SOAK_BUDGET_S", "3000"))
SPAWNERS = 2
CHUNK = 50_000  # processes per spawner run: progress is sampled between runs
TRUE_EXE = "/bin/soak-true"

SPAWN_C = r"""
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
extern char **environ;
/* spawn n path: n times posix_spawn(path) and wait; prints how many ran */
int main(int argc, char **argv) {
    long n = atol(argv[1]), ran = 0;
    char *args[] = {argv[2], NULL};
    for (long i = 0; i < n; i++) {
        pid_t pid;
        int status;
        if (posix_spawn(&pid, argv[2], NULL, NULL, args, environ) != 0)
            continue;
        if (waitpid(pid, &status, 0) == pid)
            ran++;
    }
    printf("%ld\n", ran);
    return 0;
}
"""
TRUE_C = r"""
void _start(void) { __asm__ volatile("mov $60, %eax\n xor %edi, %edi\n syscall"); }
"""


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class CountingEngine(Engine):
    """The engine, counting the events the churn is expected to cause."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.execs = self.exits = self.files = 0

    def process(self, event: Event, now_ns: int) -> list[Alert]:
        if isinstance(event, ExecEvent | ExitEvent) and event.proc.exepath == TRUE_EXE:
            if isinstance(event, ExecEvent):
                self.execs += 1
            else:
                self.exits += 1
        elif isinstance(event, FileEvent) and "/soak-" in event.path:
            self.files += 1
        return super().process(event, now_ns)


@dataclass
class Sample:
    label: str
    rss_kib: int
    tables: dict[str, int]


@dataclass
class Agent:
    """The agent's loop in a thread; table sizes are read in that thread, between polls."""

    pipeline: Pipeline
    engine: CountingEngine
    stop: threading.Event = field(default_factory=threading.Event)
    _asked: threading.Event = field(default_factory=threading.Event)
    _answer: list[dict[str, int]] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    peak_rss_kib: int = 0
    peak_tables: dict[str, int] = field(default_factory=dict)

    def run(self) -> None:
        p = self.pipeline
        while not self.stop.is_set():
            now = p.step(POLL_MS)
            p.housekeeping(now)
            self.peak_rss_kib = max(self.peak_rss_kib, rss_kib())
            if self._asked.is_set():
                self._asked.clear()
                self._answer.append(p.table_sizes())
                self._ready.set()
        p.shutdown(time.time_ns())

    def sample(self, label: str) -> Sample:
        self._ready.clear()
        self._asked.set()
        self._ready.wait(30)
        tables = self._answer.pop()
        for k, v in tables.items():
            self.peak_tables[k] = max(self.peak_tables.get(k, 0), v)
        s = Sample(label, rss_kib(), tables)
        print(f"{label}: rss {s.rss_kib / 1024:.1f} MiB, {tables}", flush=True)
        return s


def build_tools(work: Path, image: Path) -> None:
    (work / "spawn.c").write_text(SPAWN_C)
    (work / "true.c").write_text(TRUE_C)
    subprocess.run(
        ["gcc", "-O2", "-static", "-o", str(image / "bin" / "soak-spawn"), str(work / "spawn.c")],
        check=True,
    )
    subprocess.run(
        ["gcc", "-O2", "-static", "-nostdlib", "-o", str(image / "bin" / "soak-true"),
         str(work / "true.c")],
        check=True,
    )  # fmt: skip


def main() -> int:
    if os.geteuid() != 0:
        print("bench_soak: needs root (eBPF, runc)", file=sys.stderr)
        return 1
    harness = load_harness()
    work = Path(tempfile.mkdtemp(prefix="podlock-soak-"))
    image = harness.build_image(work / "image")
    build_tools(work, image)
    config = work / "detector.yaml"
    config.write_text(
        "stdout_output: {enabled: false}\n"
        f"file_output: {{enabled: true, filename: {work}/alerts.log, keep_alive: true}}\n"
    )
    settings = load_detector_settings(str(config), [])
    outputs = build_outputs(settings, json_stdout=True)
    host_mnt_ns = procscan.host_mnt_ns()
    loader = Loader(host_mnt_ns)
    loader.start()
    engine = CountingEngine(
        settings.rules, NoMetadata(), hostname="soak", rate_limit=settings.rate_limit
    )
    boot_to_wall = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    host = procscan.ProcHost()
    tracker = Tracker(host=host, boot_to_wall_ns=boot_to_wall)
    seed(loader, tracker, host_mnt_ns, engine)
    pipeline = Pipeline(loader, tracker, engine, outputs, None, host)
    agent = Agent(pipeline, engine)
    thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    thread.start()
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        time.sleep(1)
        samples.append(agent.sample("start"))

        # (a) containers created, written to, deleted
        t0 = time.monotonic()
        for n in range(1, CONTAINERS + 1):
            c = harness.start_container(work / "churn", image, readonly=False)
            try:
                c.exec(f"echo x > /etc/soak-{n}; echo y > /vol/soak-{n}")
            finally:
                harness.stop_container(c)
            if n % 100 == 0 or n == CONTAINERS:
                samples.append(agent.sample(f"{n} containers"))
        containers_s = time.monotonic() - t0

        # (b) short-lived processes in long-lived containers
        long_lived = [
            harness.start_container(work / "long", image, readonly=False) for _ in range(SPAWNERS)
        ]
        spawned = 0
        t0 = time.monotonic()
        next_sample = 100_000
        try:
            while spawned < PROCESSES and time.monotonic() - t0 < BUDGET_S:
                chunk = min(CHUNK, (PROCESSES - spawned) // SPAWNERS) or 1
                runs = [
                    subprocess.Popen(
                        ["runc", "exec", c.id, "/bin/soak-spawn", str(chunk), TRUE_EXE],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                    )
                    for c in long_lived
                ]
                for run in runs:
                    out, _ = run.communicate()
                    spawned += int(out.strip() or 0)
                if spawned >= next_sample:
                    samples.append(agent.sample(f"{spawned:,} processes"))
                    next_sample += 100_000
        finally:
            for c in long_lived:
                harness.stop_container(c)
        processes_s = time.monotonic() - t0

        time.sleep(2 * SWEEP_EVERY_NS / 1e9 + 3)  # two sweeps after the last container went
        samples.append(agent.sample("end"))
    finally:
        agent.stop.set()
        thread.join(60)
        loader.close()
        outputs.close()
    total_s = time.monotonic() - started

    expected = 2 * CONTAINERS + 2 * spawned
    seen = engine.files + engine.execs + engine.exits
    lost = pipeline.lost_seen
    unaccounted = max(0, expected - seen - lost)
    write_results(
        samples, agent, spawned, containers_s, processes_s, total_s,
        expected, seen, lost, unaccounted,
    )  # fmt: skip
    return 0


def write_results(
    samples: list[Sample],
    agent: Agent,
    spawned: int,
    containers_s: float,
    processes_s: float,
    total_s: float,
    expected: int,
    seen: int,
    lost: int,
    unaccounted: int,
) -> None:
    start, end = samples[0], samples[-1]
    after_containers = next(s for s in samples if s.label == f"{CONTAINERS} containers")
    mib = 1024.0
    peak = max(agent.peak_rss_kib, *(s.rss_kib for s in samples))
    per_1k = (after_containers.rss_kib - start.rss_kib) / mib / (CONTAINERS / 1000)
    per_100k = (end.rss_kib - after_containers.rss_kib) / mib / max(spawned / 100_000, 1e-9)
    complete = spawned >= PROCESSES
    keys = list(start.tables)
    lines = [
        "## Soak: memory and map occupancy under churn (bench_soak.py)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine).",
        "",
        f"The agent (Loader, Tracker, Engine, Pipeline with its flush and its sweep every "
        f"{SWEEP_EVERY_NS // 10**9} s, a file output) ran in the benchmark's process; RSS is "
        "that process's (the churn loop itself keeps nothing per container). The tables "
        "count every container on the machine: other jobs' containers come and go too.",
        f"(a) {CONTAINERS:,} runc containers created, written to from an exec session (rootfs "
        f"and volume) and deleted, one after another: {containers_s:.0f} s "
        f"({containers_s / CONTAINERS:.2f} s each).",
        f"(b) {spawned:,} short-lived processes (posix_spawn of a static do-nothing program) in "
        f"{SPAWNERS} long-lived containers' exec sessions: {processes_s:.0f} s "
        f"({spawned / processes_s:,.0f} processes/s)."
        + (
            ""
            if complete
            else f" **Incomplete: the {BUDGET_S:.0f} s budget ran out after {spawned:,} of "
            f"{PROCESSES:,}**; at this rate 1,000,000 would take "
            f"{1_000_000 / (spawned / processes_s):.0f} s."
        ),
        f"Whole run: {total_s:.0f} s.",
        "",
        "| | RSS MiB | " + " | ".join(keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    for s in samples:
        lines.append(
            f"| {s.label} | {s.rss_kib / mib:.1f} | "
            + " | ".join(str(s.tables.get(k, 0)) for k in keys)
            + " |"
        )
    lines.append(
        f"| **peak** | {peak / mib:.1f} | "
        + " | ".join(str(agent.peak_tables.get(k, 0)) for k in keys)
        + " |"
    )
    ok_rss = end.rss_kib - start.rss_kib <= 10 * 1024
    lines += [
        "",
        f"- RSS: start {start.rss_kib / mib:.1f} MiB, peak {peak / mib:.1f} MiB, end "
        f"{end.rss_kib / mib:.1f} MiB: end - start = {(end.rss_kib - start.rss_kib) / mib:+.1f} "
        f"MiB (target: within 10 MiB: {'met' if ok_rss else 'NOT met'}).",
        f"- Per 1k containers: {per_1k:+.2f} MiB of RSS (after (a) against the start); per "
        f"100k processes: {per_100k:+.2f} MiB (end against after (a)).",
        f"- Events: {expected:,} expected (an exec and an exit per process, a file event per "
        f"write), {seen:,} seen by the engine ({agent.engine.execs:,} execs and "
        f"{agent.engine.exits:,} exits of {spawned:,} processes, {agent.engine.files:,} file "
        f"events of {2 * CONTAINERS:,} writes), {lost:,} counted lost, {unaccounted:,} "
        "unaccounted (target 0).",
        f"- Self-reported peak RSS (ru_maxrss): "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib:.1f} MiB.",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
