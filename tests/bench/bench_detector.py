"""Drift-detector overhead and capacity, with the probes attached vs not, on this machine.

(a) host workload: 1M open/close by a host process (no events: the cost of the filters);
(b) 20k file writes by a container's own process (events, NOTICE rule, rate-limited), the
    container's writable layer on ext4 in RAM (a loop device over /dev/shm): the same
    filesystem code as a node's disk, without this shared disk's I/O (mounted with
    `discard`, busy with other jobs), which made half of the loop's time I/O waits and
    single pairs swing by ±20%;
(c) exec-session storm: 100k file creates in a `runc exec` session, rate limit off so
    every per-file alert is written: delivered-or-counted, events/s, syscall->alert-written
    latency, and the real `podlock detect`'s peak RSS.

(a) and (b) run in pairs (detached, attached; the order alternates), >= 20 pairs, (a) with
a third arm, empty programs on podlock's tracepoints (the floor; the order rotates); each
attached run loads fresh probes and drains them with the agent's own Pipeline in a thread,
as `podlock detect` does. The workload is pinned to CPU 1 and the agent to CPU 0. The
added cost is the median of the per-pair ratios (on/off - 1), with a 95% bootstrap
interval over pairs, for both the workload's wall time and its CPU time (user + system:
the BPF programs run in its syscalls, and CPU time does not count the time other jobs on
this shared machine take the CPU away). (b) also gets a second figure that no noise
reaches: the kernel's own BPF run time per write plus three syscalls' tracing slow path
(the floor's per-syscall cost in (a)), over the detached loop's CPU per write. The kernel's
BPF run-time statistics
(kernel.bpf_stats_enabled=1) cost time themselves, so they are off for the timed pairs and
on for separate attached runs that give the per-program ns/event.
Writes tests/bench/results/detector.md. Needs root.

    PODLOCK_BENCH_DETECTOR_RUNS (default 30)  pairs for (a) and (b)
    PODLOCK_BENCH_DETECTOR_ONLY=c             only the storm (c), printed, results file untouched
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine import cpu_model, load_harness

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detector import libbpf, procscan  # noqa: E402
from detector.agent import FLUSH_EVERY_NS, POLL_MS, Pipeline, seed  # noqa: E402
from detector.alerts import Alert  # noqa: E402
from detector.config import load_detector_settings  # noqa: E402
from detector.engine import Engine  # noqa: E402
from detector.k8s import NoMetadata  # noqa: E402
from detector.loader import Loader, ProgStats  # noqa: E402
from detector.outputs import build_outputs  # noqa: E402
from detector.tracker import Tracker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "detector.md"
RUNS = int(os.environ.get("PODLOCK_BENCH_DETECTOR_RUNS", "30"))
ONLY_C = os.environ.get("PODLOCK_BENCH_DETECTOR_ONLY", "") == "c"
STATS_RUNS = 3  # attached runs with the BPF run-time statistics on, per workload
BACKLOG_RUNS = 3  # (c) backlog drains; the median is reported
WORKLOAD_CPU, AGENT_CPU = 1, 0
HOST_OPS = 1_000_000
CONTAINER_WRITES = 20_000
SYSCALLS_PER_WRITE = 3  # WRITER_C's write mode: open, write, close
# the storms and the writes leave about 540,000 one-block files on it
RAM_EXT4_MIB, RAM_EXT4_INODES = 4096, 1_000_000
STORM_FILES = 100_000

# (a)'s floor: podlock's tracepoints with programs that do nothing. Attached, they still put
# every syscall of every task on the tracing slow path and cost one indirect BPF call per
# syscall exit (and per fork, exec, exit and cgroup creation).
FLOOR_BPF_C = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "GPL";
SEC("tp_btf/sys_exit")
int BPF_PROG(floor_sys_exit, struct pt_regs *regs, long ret) { return 0; }
SEC("tp_btf/sched_process_fork")
int BPF_PROG(floor_fork, struct task_struct *parent, struct task_struct *child) { return 0; }
SEC("tp_btf/sched_process_exec")
int BPF_PROG(floor_exec, struct task_struct *t, pid_t old, struct linux_binprm *b) { return 0; }
SEC("tp_btf/sched_process_exit")
int BPF_PROG(floor_exit, struct task_struct *task) { return 0; }
SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(floor_cgroup_mkdir, struct cgroup *cgrp, const char *path) { return 0; }
SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(floor_cgroup_rmdir, struct cgroup *cgrp, const char *path) { return 0; }
"""

WRITER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
/* mode n dir: "open" = n open/close of dir/f (read-only, created first);
 * "write" = n create+write+close of dir/f<i>. Prints the loop's wall and CPU ns. */
static long ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}
int main(int argc, char **argv) {
    long n = atol(argv[2]); char p[4096];
    mkdir(argv[3], 0755);
    snprintf(p, sizeof p, "%s/f", argv[3]);
    close(open(p, O_CREAT | O_WRONLY, 0644));
    long wall = ns(CLOCK_MONOTONIC), cpu = ns(CLOCK_PROCESS_CPUTIME_ID);
    for (long i = 0; i < n; i++) {
        if (argv[1][0] == 'o') { close(open(p, O_RDONLY)); continue; }
        snprintf(p, sizeof p, "%s/f%ld", argv[3], i);
        int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0) { perror(p); return 1; } /* a write that did not happen is not timed */
        write(fd, "x\n", 2);
        close(fd);
    }
    cpu = ns(CLOCK_PROCESS_CPUTIME_ID) - cpu;
    wall = ns(CLOCK_MONOTONIC) - wall;
    printf("%ld %ld\n", wall, cpu);
    return 0;
}
"""


def machine() -> str:
    return f"{os.cpu_count()} CPUs, {cpu_model()}, kernel {platform.release()}"


def ratio_ci(
    on: list[float], off: list[float], rng: random.Random, n: int = 2000
) -> tuple[float, float, float]:
    """Added cost: the median of the per-pair ratios on/off - 1 (pairs ran back to back, so
    slow drifts of the shared machine's load cancel), with a 95% bootstrap interval."""
    ratios = [a / b - 1 for a, b in zip(on, off, strict=True)]
    boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(n))
    return statistics.median(ratios), boots[int(0.025 * n)], boots[int(0.975 * n)]


@dataclass
class Attached:
    """Fresh probes plus the agent's Pipeline draining them in a thread."""

    settings: Any
    latencies_ns: list[int] = field(default_factory=list)
    consumer_cpu_s: float = 0.0
    first_last: list[int] = field(default_factory=list)
    go_ns: int = 0  # when the consumer started (a paused one: when it was let go)
    on_alerts: Callable[[list[Alert]], None] | None = None  # sees each written batch
    ring_bytes: int | None = None
    paused: bool = False  # the consumer waits for go: a backlog builds in the ring

    def __enter__(self) -> Attached:
        self.loader = Loader(procscan.host_mnt_ns(), ring_bytes=self.ring_bytes)
        self.loader.start()
        boot_to_wall = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        tracker = Tracker(host=procscan.ProcHost(), boot_to_wall_ns=boot_to_wall)
        seed(self.loader, tracker, procscan.host_mnt_ns())
        outputs = build_outputs(self.settings, json_stdout=False)
        engine = Engine.from_settings(self.settings, NoMetadata())
        emit_many = outputs.emit_many

        def timed_emit_many(alerts: list[Alert]) -> None:
            emit_many(alerts)  # the pipeline writes alerts in batches
            written = time.time_ns()
            self.latencies_ns.extend(written - a.time_ns for a in alerts)
            if self.on_alerts is not None:
                self.on_alerts(alerts)

        outputs.emit_many = timed_emit_many  # type: ignore[method-assign]
        self.outputs = outputs
        self.pipeline = Pipeline(self.loader, tracker, engine, outputs)
        self.stop = threading.Event()
        self.go = threading.Event()
        if not self.paused:
            self.go.set()
        self.start_stats = {s.name: s for s in self.loader.program_stats()}
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()
        return self

    def _drain(self) -> None:
        os.sched_setaffinity(0, {AGENT_CPU})
        self.go.wait()
        self.go_ns = time.time_ns()
        t0 = time.thread_time()
        next_flush = 0
        while not self.stop.is_set():
            before = self.pipeline.processed
            now = self.pipeline.step(POLL_MS)
            if self.pipeline.processed != before:
                if not self.first_last:
                    self.first_last.append(now)
                self.first_last[1:] = [now]
            if now >= next_flush:
                self.pipeline.flush(now)
                next_flush = now + FLUSH_EVERY_NS
        self.consumer_cpu_s = time.thread_time() - t0

    def drain_until(self, predicate: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.05)

    def prog_stats(self) -> dict[str, ProgStats]:
        end = {s.name: s for s in self.loader.program_stats()}
        return {
            k: ProgStats(k, v.run_time_ns - self.start_stats[k].run_time_ns,
                         v.run_cnt - self.start_stats[k].run_cnt)
            for k, v in end.items()
        }  # fmt: skip

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.loader.close()
        self.outputs.close()


class FloorProbe:
    """The empty programs on podlock's tracepoints, attached for the duration of a `with`."""

    def __init__(self, obj_path: Path) -> None:
        self._path = obj_path
        self._obj: int | None = None
        self._links: list[int] = []

    def __enter__(self) -> FloorProbe:
        bpf = libbpf.lib()
        self._obj = bpf.bpf_object__open_file(str(self._path).encode(), None)
        if not self._obj or bpf.bpf_object__load(self._obj) != 0:
            raise SystemExit(f"bench_detector: cannot load {self._path}")
        prog = bpf.bpf_object__next_program(self._obj, None)
        while prog:
            link = bpf.bpf_program__attach(prog)
            if not link:
                raise SystemExit("bench_detector: cannot attach a floor program")
            self._links.append(link)
            prog = bpf.bpf_object__next_program(self._obj, prog)
        return self

    def __exit__(self, *_exc: object) -> None:
        bpf = libbpf.lib()
        for link in self._links:
            bpf.bpf_link__destroy(link)
        if self._obj:
            bpf.bpf_object__close(self._obj)


def mount_ram_ext4(where: Path) -> None:
    """An empty ext4 filesystem in RAM at `where`: a loop device over a file in /dev/shm,
    whose name is gone once mounted (unmounting frees it)."""
    where.mkdir(parents=True)
    backing = Path("/dev/shm") / f"podlock-bench-{os.getpid()}.ext4"
    try:
        with backing.open("wb") as f:
            f.truncate(RAM_EXT4_MIB << 20)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-N", str(RAM_EXT4_INODES), str(backing)], check=True
        )
        subprocess.run(["mount", "-o", "loop", str(backing), str(where)], check=True)
    finally:
        backing.unlink(missing_ok=True)


def sysctl(name: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / name.replace(".", "/")
    old = path.read_text().strip()
    if value is not None:
        path.write_text(value)
    return old


def merge_stats(total: dict[str, list[int]], stats: dict[str, ProgStats]) -> None:
    for name, s in stats.items():
        t = total.setdefault(name, [0, 0])
        t[0] += s.run_time_ns
        t[1] += s.run_cnt


def stats_table(total: dict[str, list[int]]) -> list[str]:
    lines = ["| program | runs | ns/run |", "|---|---:|---:|"]
    for name, (ns, cnt) in sorted(total.items()):
        if cnt:
            lines.append(f"| `{name}` | {cnt:,} | {ns / cnt:.0f} |")
    return lines


def main() -> int:
    if os.geteuid() != 0:
        print("bench_detector: needs root (eBPF, runc)", file=sys.stderr)
        return 1
    rng = random.Random(4)
    h = load_harness()
    work = Path(tempfile.mkdtemp(prefix="podlock-bench-"))
    writer = work / "writer"
    (work / "writer.c").write_text(WRITER_C)
    subprocess.run(
        ["clang", "-O2", "-static", "-o", str(writer), str(work / "writer.c")], check=True
    )
    floor_obj = work / "floor.bpf.o"
    (work / "floor.bpf.c").write_text(FLOOR_BPF_C)
    subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
         f"-I{ROOT / 'detector' / 'bpf'}", "-c", str(work / "floor.bpf.c"), "-o", str(floor_obj)],
        check=True,
    )  # fmt: skip
    ram = work / "ram"
    image = h.build_image(work / "image")
    shutil.copy2(writer, image / "bin" / "writer")
    old_stats = sysctl("kernel.bpf_stats_enabled", "0")
    os.sched_setaffinity(0, {AGENT_CPU})
    container = None
    settings = load_detector_settings(None, [])
    report: list[str] = []
    try:
        mount_ram_ext4(ram)  # in the try: a failure after it still unmounts
        h.INIT_SCRIPT = (
            "while true; do if [ -f /vol/go ]; then rm -f /vol/go; "
            f"writer write {CONTAINER_WRITES} /tmp/w > /vol/result.tmp; "
            "mv /vol/result.tmp /vol/result; fi; sleep 0.02; done"
        )
        container = h.start_container(ram / "containers", image, readonly=False)
        init_pid = json.loads(
            subprocess.run(["runc", "state", container.id], capture_output=True, check=True).stdout
        )["pid"]
        # the container's loop and the writer it starts run on the workload's CPU
        subprocess.run(["taskset", "-a", "-p", "-c", str(WORKLOAD_CPU), str(init_pid)],
                       check=True, capture_output=True)  # fmt: skip

        def host_run() -> tuple[float, float]:
            out = subprocess.run(
                ["taskset", "-c", str(WORKLOAD_CPU), str(writer), "open", str(HOST_OPS),
                 str(work / "host")],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            wall, cpu = out.stdout.split()
            return int(wall) / 1e9, int(cpu) / 1e9

        def container_run() -> tuple[float, float]:
            result = container.volume / "result"
            result.unlink(missing_ok=True)
            (container.volume / "go").write_text("1")
            deadline = time.monotonic() + 300  # a shared machine can be very slow
            while not result.exists():
                assert time.monotonic() < deadline, "container workload did not finish"
                time.sleep(0.005)
            wall, cpu = result.read_text().split()
            return int(wall) / 1e9, int(cpu) / 1e9

        runs = {"a": host_run, "b": container_run}
        arms: dict[str, dict[str, list[tuple[float, float]]]] = {
            k: {"off": [], "on": [], "floor": []} for k in runs
        }
        prog_total: dict[str, dict[str, list[int]]] = {"a": {}, "b": {}}

        def attached_run(key: str) -> tuple[float, float]:
            with Attached(settings) as att:
                result = runs[key]()
                if key == "b":
                    pipeline = att.pipeline
                    att.drain_until(lambda: pipeline.processed >= CONTAINER_WRITES)
                merge_stats(prog_total[key], att.prog_stats())
            return result

        def floor_run() -> tuple[float, float]:
            with FloorProbe(floor_obj):
                return host_run()

        container_run()  # warm up the upper layer's files
        for i in range(0 if ONLY_C else RUNS):
            for key, run in runs.items():
                # (a) also runs with the floor program only; the order rotates
                order = ["off", "on", "floor"] if key == "a" else ["off", "on"]
                order = order[i % len(order) :] + order[: i % len(order)]
                for arm in order:
                    if arm == "off":
                        arms[key][arm].append(run())
                    elif arm == "floor":
                        arms[key][arm].append(floor_run())
                    else:
                        arms[key][arm].append(attached_run(key))
            _progress(f"pair {i + 1}/{RUNS} done")
        # per-program run time: separate attached runs, statistics on
        prog_total = {"a": {}, "b": {}}
        sysctl("kernel.bpf_stats_enabled", "1")
        for _ in range(0 if ONLY_C else STATS_RUNS):
            for key in runs:
                attached_run(key)
        sysctl("kernel.bpf_stats_enabled", "0")
        _progress("statistics runs done")

        report += [
            "## Drift detector (eBPF probes + Python agent)",
            "",
            f"Machine: {machine()}; load average at the start {os.getloadavg()[0]:.1f} "
            "(the machine is shared with other jobs).",
            "",
            f"Method: {RUNS} pairs per workload (detached and attached back to back, the order",
            "alternating; (a) also with empty programs on podlock's tracepoints attached, the",
            "order of the three rotating). Added cost = median over pairs of on/off - 1, with a",
            "95% bootstrap interval over pairs; above the floor = median over the triples of",
            "(on - floor)/off, in points, with its interval. The workload is pinned to CPU 1,",
            "the agent to CPU 0. Wall =",
            "the workload loop's elapsed time; CPU = its user + system time (the BPF programs",
            "run in its syscalls; other jobs on the machine inflate wall time, not CPU time).",
            '"on" = fresh probes attached and drained by the agent\'s pipeline (default rules',
            "and outputs: rate-limited text alerts on stdout). BPF run-time statistics off for",
            f"these pairs; the per-program tables come from {STATS_RUNS} further attached runs",
            "with statistics on. (b)'s container has its writable layer on ext4 in RAM (a loop",
            "device over /dev/shm; see the notes).",
            "",
            "| workload | off wall, median | added wall (CI) | off CPU, median "
            "| added CPU (CI) | target |",
            "|---|---|---|---|---|---|",
        ]
        labels = {
            "a": (f"(a) host: {HOST_OPS:,} open/close", 0.03),
            "b": (f"(b) container's own process: {CONTAINER_WRITES:,} file writes", 0.05),
        }
        verdicts: list[str] = []
        for key, (label, target) in () if ONLY_C else labels.items():
            cells = []
            for col, measure in ((0, "wall"), (1, "CPU")):
                on = [x[col] for x in arms[key]["on"]]
                off = [x[col] for x in arms[key]["off"]]
                added = ratio_ci(on, off, rng)
                cells += [
                    f"{statistics.median(off) * 1e3:.1f} ms",
                    f"{added[0] * 100:+.1f}% ({added[1] * 100:+.1f}% to {added[2] * 100:+.1f}%)",
                ]
                verdicts.append(f"{label.split(')')[0]}) {measure}: {_verdict(added, target)}")
            report.append(f"| {label} | {' | '.join(cells)} | ≤ {target:.0%} |")
            if key == "a":
                report.append(_floor_row(arms["a"], rng, verdicts))
        for key, (label, _) in () if ONLY_C else labels.items():
            report += ["", f"BPF run time per program during {label} (attached runs):", ""]
            report += stats_table(prog_total[key])
        if not ONLY_C:
            line, verdict = _kernel_share(arms, prog_total["b"])
            report += ["", line]
            verdicts.append(verdict)

        # (c) the exec-session storm, in-process (latency, throughput, delivery)
        storm_settings = load_detector_settings(_storm_config(work), [])
        sysctl("kernel.bpf_stats_enabled", "1")
        live = _storm(container, storm_settings, "/tmp/storm/")
        _progress("live storm done")
        # the same storm into a paused consumer with a ring big enough for all of it:
        # how fast the pipeline works through a backlog
        backlogs = sorted(
            (
                _storm(container, storm_settings, f"/tmp/storm-b{i}/", ring_bytes=128 << 20)
                for i in range(BACKLOG_RUNS)
            ),
            key=lambda r: r.rate,
        )
        backlog = backlogs[len(backlogs) // 2]  # the median run
        sysctl("kernel.bpf_stats_enabled", "0")
        _progress("backlog storm done")
        rss_mib = _storm_rss(h, container, work)
        lat = sorted(live.latencies_ns)
        p50 = lat[len(lat) // 2] / 1e6 if lat else float("nan")
        p99 = lat[int(len(lat) * 0.99)] / 1e6 if lat else float("nan")
        report += [
            "",
            f"(c) exec-session storm: {STORM_FILES:,} file creates by one `runc exec` process,",
            "rate limit off so every per-file alert is written (JSON, to a file output).",
            f"Live: the agent consumes as the storm runs (produced in {live.produce_s:.2f} s, so",
            "the live rate cannot exceed the producer's). Backlog: the same storm into a",
            f"paused agent with a 128 MiB ring, then drained ({BACKLOG_RUNS} times): the",
            "pipeline's end-to-end rate.",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            *(
                f"| delivered (per-file alert written) + counted lost, {name} | {r.events:,} + "
                f"{r.drops:,} = {r.events + r.drops:,} of {STORM_FILES:,} | all |"
                for name, r in (
                    ("live", live),
                    *((f"backlog {i + 1}", b) for i, b in enumerate(backlogs)),
                )
            ),
            "| events processed per second, backlog (consumer let go → last storm alert "
            f"written), median of {BACKLOG_RUNS} (range) | {backlog.rate:,.0f} "
            f"({backlogs[0].rate:,.0f} to {backlogs[-1].rate:,.0f}) | ≥ 50,000 |",
            "| events processed per second, live (first event handled → last storm alert "
            f"written; bounded by the producer) | {live.rate:,.0f} | |",
            f"| consumer capacity (events per CPU-second of the agent), live / backlog "
            f"| {live.capacity:,.0f} / {backlog.capacity:,.0f} | |",
            f"| syscall → alert written, live, p50 / p99 | {p50:.1f} ms / {p99:.1f} ms "
            "| p99 ≤ 100 ms |",
            f"| alerts written (live) | {len(lat):,} | |",
            f"| `podlock detect` peak RSS during the same storm | {rss_mib:.1f} MiB | ≤ 100 MiB |",
            f"| wall time until all events were handled (live) | {live.wall_s:.2f} s | |",
            "",
            "BPF run time per program during the live storm (statistics on):",
            "",
            *stats_table({k: [v.run_time_ns, v.run_cnt] for k, v in live.stats.items()}),
            "",
            "Targets in this run (a CI entirely under the target = met, entirely over = not",
            "met):",
            "",
            *(f"- {v}" for v in verdicts),
            f"- (c) every event delivered or counted lost: "
            f"{_yes(all(r.events + r.drops >= STORM_FILES for r in (live, *backlogs)))}",
            f"- (c) ≥ 50,000 events/s processed (backlog median): "
            f"{_yes(backlog.rate >= 50_000)} ({backlog.rate:,.0f}/s)",
            f"- (c) p99 syscall → alert written ≤ 100 ms (live): {_yes(p99 <= 100)} ({p99:.1f} ms)",
            f"- (c) RSS ≤ 100 MiB: {_yes(rss_mib <= 100)} ({rss_mib:.1f} MiB)",
            "",
            *NOTES,
        ]
    finally:
        if container is not None:
            h.stop_container(container)
        subprocess.run(["umount", str(ram)], check=False)  # detaches the loop device
        sysctl("kernel.bpf_stats_enabled", old_stats)
        shutil.rmtree(work, ignore_errors=True)
    if not ONLY_C:  # a partial run does not replace the results
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


_T0 = time.monotonic()

NOTES = [
    "Notes (measured separately, by hand, on the same machine, 2026-11-27):",
    "",
    "- (a)'s floor, other hooks, by hand (20 shuffled runs of each, median added CPU): an",
    "  empty `tp_btf/sys_exit` +12.4%, an empty `raw_tp/sys_exit` +12.4%, an empty",
    "  per-syscall `tp/syscalls/sys_exit_openat` (covering openat alone; needs tracefs)",
    "  +13.9%, podlock's probes +16.6%. Any syscall tracepoint puts every task's syscalls on",
    "  the tracing slow path (syscall_trace_enter / syscall_exit_work) and adds an indirect",
    "  call, through retpoline and ITS thunks on this VM; fentry, kprobes and LSM programs,",
    "  which could hook the VFS instead, do not load here (shared/PLATFORM.md).",
    "- (c)'s live rate is the producer's: one `runc exec` process creating files on overlayfs",
    "  makes 5k-30k events/s here depending on the machine's other jobs; the backlog row is",
    "  the pipeline's own end-to-end rate.",
    "",
    "Notes (by hand, 2026-12-07):",
    "",
    "- (b) used to run on this machine's disk (ext4 mounted with `discard`, I/O pressure",
    "  about 25% from other jobs): the loop spent half its wall time in `submit_bio_wait`,",
    "  a write cost 69 µs of CPU, and single pairs swung by ±20%; 30 pairs gave +6.4% wall",
    "  and +8.0% CPU with intervals 10 points wide. On ext4 in RAM a write costs 35 µs, so",
    "  the probes' share of it is about twice as large, and pairs agree within a few %.",
    "- In a file event every BPF helper is cold code: in-program timers put a probe read at",
    "  about 100 ns there, against 25 ns in a warm loop. Reading names, the comm, the",
    "  namespace pid and the fd slot with direct loads instead took on_sys_exit from 664 to",
    "  415 ns per run on the disk (5 alternating runs each) and from 404 to 268 ns in RAM (3).",
    "- Waking the agent every 1 MiB of unread events instead of every 32 KiB took about",
    "  100 ns off each event in the probes, yet made the writes 8% slower in wall time and",
    "  3% in CPU (10 pairs, in RAM); the cause was not pinned down (this is a VM), so the",
    "  wake-up stays at 32 KiB.",
]


def _floor_row(
    arms: dict[str, list[tuple[float, float]]], rng: random.Random, verdicts: list[str]
) -> str:
    """(a) with empty programs on podlock's tracepoints: what any tracepoint hook costs."""
    cells = []
    for col in (0, 1):
        off = [x[col] for x in arms["off"]]
        added = ratio_ci([x[col] for x in arms["floor"]], off, rng)
        cells += [
            f"{statistics.median(off) * 1e3:.1f} ms",
            f"{added[0] * 100:+.1f}% ({added[1] * 100:+.1f}% to {added[2] * 100:+.1f}%)",
        ]
        if col == 1:
            above = points_ci(arms["on"], arms["floor"], arms["off"], rng)
            verdicts.append(
                f"(a) floor: empty programs on podlock's tracepoints add {added[0]:+.1%} CPU "
                f"({added[1]:+.1%} to {added[2]:+.1%}); podlock's probes cost "
                f"{above[0] * 100:+.1f} points more ({above[1] * 100:+.1f} to "
                f"{above[2] * 100:+.1f}): {_verdict(above, 0.02, 'points')}"
            )
    label = "(a) the same, only empty programs on podlock's tracepoints (the floor)"
    return f"| {label} | {' | '.join(cells)} | |"


def _kernel_share(
    arms: dict[str, dict[str, list[tuple[float, float]]]], stats_b: dict[str, list[int]]
) -> tuple[str, str]:
    """(b)'s added cost from the kernel's own clocks, which no other job on the machine
    moves: podlock's BPF run time per write plus SYSCALLS_PER_WRITE times the tracing slow
    path (the floor's cost per syscall in (a): open and close), over the detached loop's
    CPU time per write. Returns the report's line and the verdict's."""
    a = arms["a"]
    slow_ns = statistics.median(
        (f[1] - o[1]) * 1e9 / (2 * HOST_OPS) for f, o in zip(a["floor"], a["off"], strict=True)
    )
    bpf_ns = sum(ns for ns, _ in stats_b.values()) / (STATS_RUNS * CONTAINER_WRITES)
    write_ns = statistics.median(x[1] for x in arms["b"]["off"]) * 1e9 / CONTAINER_WRITES
    share = (bpf_ns + SYSCALLS_PER_WRITE * slow_ns) / write_ns
    what = "(b) from the kernel's clocks"
    verdict = f"{share:+.1%} ({'met' if share <= 0.05 else 'not met'}, target ≤ 5%)"
    line = (
        f"{what}: BPF {bpf_ns:,.0f} ns + slow path {SYSCALLS_PER_WRITE} x {slow_ns:,.0f} ns "
        f"per write, of a {write_ns / 1e3:,.1f} µs write (CPU, detached); {verdict}"
    )
    return line, f"{what}: {verdict}"


def points_ci(
    on: list[tuple[float, float]],
    floor: list[tuple[float, float]],
    off: list[tuple[float, float]],
    rng: random.Random,
    n: int = 2000,
) -> tuple[float, float, float]:
    """CPU cost above the floor, in points of the detached run: the median over the
    triples (which ran back to back) of (on - floor)/off, with a 95% bootstrap interval."""
    points = [(a[1] - f[1]) / b[1] for a, f, b in zip(on, floor, off, strict=True)]
    boots = sorted(statistics.median(rng.choices(points, k=len(points))) for _ in range(n))
    return statistics.median(points), boots[int(0.025 * n)], boots[int(0.975 * n)]


def _verdict(added: tuple[float, float, float], target: float, unit: str = "%") -> str:
    point, lo, hi = added
    state = "met" if hi <= target else "not met" if lo > target else "not decided (CI spans it)"
    if unit == "points":
        return f"{state} ({point * 100:+.1f} points, target ≤ {target * 100:.0f} points)"
    return f"{state} ({point * 100:+.1f}%, target ≤ {target:.0%})"


def _yes(ok: bool) -> str:
    return "met" if ok else "not met"


def _progress(what: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {what}", file=sys.stderr, flush=True)


@dataclass
class StormResult:
    events: int
    drops: int
    produce_s: float
    wall_s: float
    rate: float
    capacity: float
    latencies_ns: list[int]
    stats: dict[str, ProgStats]


def _storm(
    container: Any, settings: Any, prefix: str, ring_bytes: int | None = None
) -> StormResult:
    """STORM_FILES creates under `prefix` in a `runc exec` session, through the Pipeline."""
    seen = [0]
    done_ns = [0]

    def count(alerts: list[Alert]) -> None:
        # each storm file's event, delivered and its per-file alert written
        seen[0] += sum(1 for a in alerts if str(a.output_fields.get("fd.name")).startswith(prefix))
        if seen[0] >= STORM_FILES and not done_ns[0]:
            done_ns[0] = time.time_ns()

    paused = ring_bytes is not None
    with Attached(settings, on_alerts=count, ring_bytes=ring_bytes, paused=paused) as att:
        t0 = time.monotonic()
        produce_s = _exec_writer(container, prefix.rstrip("/"))
        att.go.set()
        att.drain_until(lambda: seen[0] + att.loader.drops() >= STORM_FILES, timeout=300)
        wall = time.monotonic() - t0
        drops = att.loader.drops()
        stats = att.prog_stats()
    # first event handled to the last storm alert written (live: bounded by the producer);
    # backlog: from the consumer's start, as the whole backlog can come in one poll
    first = att.go_ns if paused else ([*att.first_last, 0])[0]
    last = done_ns[0] or ([*att.first_last, 0, 0])[1]
    return StormResult(
        events=seen[0],
        drops=drops,
        produce_s=produce_s,
        wall_s=wall,
        rate=seen[0] / max((last - first) / 1e9, 1e-9),
        capacity=att.pipeline.processed / max(att.consumer_cpu_s, 1e-9),
        latencies_ns=att.latencies_ns,
        stats=stats,
    )


def _exec_writer(container: Any, directory: str) -> float:
    """`runc exec <id> writer write STORM_FILES directory` on the workload's CPU (the exec'd
    process inherits runc's affinity); returns the loop's wall seconds."""
    res = subprocess.run(
        ["taskset", "-c", str(WORKLOAD_CPU), "runc", "exec", container.id,
         "writer", "write", str(STORM_FILES), directory],
        input=b"", capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return int(res.stdout.split()[0]) / 1e9


def _storm_config(work: Path) -> str:
    path = work / "storm.yaml"
    path.write_text(
        "stdout_output: {enabled: false}\n"
        f"file_output: {{enabled: true, filename: {work / 'storm-alerts.jsonl'}, "
        "keep_alive: true}\n"
        "json_output: true\n"
        "rate_limit: {enabled: false}\n"
    )
    return str(path)


def _storm_rss(h: Any, container: Any, work: Path) -> float:
    """Peak RSS (VmHWM) of the real `podlock detect` while it takes the same storm."""
    detector = h.start_detector(work / "rss", ["--config", _storm_config(work)])
    try:
        _exec_writer(container, "/tmp/storm2")
        time.sleep(3)
        status = Path(f"/proc/{detector.proc.pid}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        return int(hwm.split()[1]) / 1024
    finally:
        h.stop_detector(detector)


if __name__ == "__main__":
    sys.exit(main())
