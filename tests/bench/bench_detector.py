"""Drift-detector overhead and capacity, with the probes attached vs not, on this machine.

(a) host workload: 1M open/close by a host process (no events: the cost of the filters);
(b) 20k file writes by a container's own process (events, NOTICE rule, rate-limited);
(c) exec-session storm: 100k file creates in a `runc exec` session, rate limit off so
    every per-file alert is written: delivered-or-counted, events/s, syscall->alert-written
    latency, and the real `podlock detect`'s peak RSS.

(a) and (b) alternate detached/attached runs (>= 20 each); each attached run loads fresh
probes and drains them with the agent's own Pipeline in a thread, as `podlock detect` does.
Per-program ns/event comes from the kernel's BPF run-time statistics
(kernel.bpf_stats_enabled=1). Writes tests/bench/results/detector.md. Needs root.

    PODLOCK_BENCH_DETECTOR_RUNS (default 20)  runs per arm for (a) and (b)
"""

from __future__ import annotations

import importlib.util
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detector import procscan  # noqa: E402
from detector.agent import Pipeline, seed  # noqa: E402
from detector.alerts import Alert  # noqa: E402
from detector.config import load_detector_settings  # noqa: E402
from detector.engine import Engine  # noqa: E402
from detector.events import Event, FileEvent  # noqa: E402
from detector.k8s import NoMetadata  # noqa: E402
from detector.loader import Loader, ProgStats  # noqa: E402
from detector.outputs import build_outputs  # noqa: E402
from detector.tracker import Tracker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "detector.md"
RUNS = int(os.environ.get("PODLOCK_BENCH_DETECTOR_RUNS", "20"))
HOST_OPS = 1_000_000
CONTAINER_WRITES = 20_000
STORM_FILES = 100_000

WRITER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
/* mode n dir: "open" = n open/close of dir/f (read-only, created first);
 * "write" = n create+write+close of dir/f<i>. Prints the loop's ns. */
int main(int argc, char **argv) {
    long n = atol(argv[2]); char p[4096]; struct timespec a, b;
    mkdir(argv[3], 0755);
    snprintf(p, sizeof p, "%s/f", argv[3]);
    close(open(p, O_CREAT | O_WRONLY, 0644));
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        if (argv[1][0] == 'o') { close(open(p, O_RDONLY)); continue; }
        snprintf(p, sizeof p, "%s/f%ld", argv[3], i);
        int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd >= 0) { write(fd, "x\n", 2); close(fd); }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld\n", (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec));
    return 0;
}
"""


def load_harness() -> Any:
    """The e2e tests' runc helpers (tests/detector/e2e/conftest.py)."""
    path = ROOT / "tests" / "detector" / "e2e" / "conftest.py"
    spec = importlib.util.spec_from_file_location("podlock_e2e_harness", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    return f"{os.cpu_count()} CPUs, {cpu}, kernel {platform.release()}"


def median_ci(xs: list[float], rng: random.Random, n: int = 2000) -> tuple[float, float, float]:
    """Median with a 95% bootstrap confidence interval."""
    boots = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return statistics.median(xs), boots[int(0.025 * n)], boots[int(0.975 * n)]


def ratio_ci(
    on: list[float], off: list[float], rng: random.Random, n: int = 2000
) -> tuple[float, float, float]:
    """Added time (median on / median off - 1) with a 95% bootstrap interval."""
    boots = sorted(
        statistics.median(rng.choices(on, k=len(on)))
        / statistics.median(rng.choices(off, k=len(off)))
        - 1
        for _ in range(n)
    )
    point = statistics.median(on) / statistics.median(off) - 1
    return point, boots[int(0.025 * n)], boots[int(0.975 * n)]


@dataclass
class Attached:
    """Fresh probes plus the agent's Pipeline draining them in a thread."""

    settings: Any
    latencies_ns: list[int] = field(default_factory=list)
    consumer_cpu_s: float = 0.0
    first_last: list[int] = field(default_factory=list)
    on_event: Callable[[Event], None] | None = None

    def __enter__(self) -> Attached:
        self.loader = Loader(procscan.host_mnt_ns())
        self.loader.start()
        boot_to_wall = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        tracker = Tracker(host=procscan.ProcHost(), boot_to_wall_ns=boot_to_wall)
        seed(self.loader, tracker, procscan.host_mnt_ns())
        outputs = build_outputs(self.settings, json_stdout=False)
        engine = Engine.from_settings(self.settings, NoMetadata())
        emit = outputs.emit

        def timed_emit(alert: Alert) -> None:
            emit(alert)
            self.latencies_ns.append(time.time_ns() - alert.time_ns)

        outputs.emit = timed_emit  # type: ignore[method-assign]
        self.outputs = outputs
        self.pipeline = Pipeline(self.loader, tracker, engine, outputs)
        if self.on_event is not None:
            deliver, hook = self.pipeline.deliver, self.on_event

            def counting(event: Event, now: int) -> None:
                hook(event)
                deliver(event, now)

            self.pipeline.deliver = counting  # type: ignore[method-assign]
        self.stop = threading.Event()
        self.start_stats = {s.name: s for s in self.loader.program_stats()}
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()
        return self

    def _drain(self) -> None:
        t0 = time.thread_time()
        next_flush = 0
        while not self.stop.is_set():
            before = self.pipeline.processed
            now = self.pipeline.step(50)
            if self.pipeline.processed != before:
                if not self.first_last:
                    self.first_last.append(now)
                self.first_last[1:] = [now]
            if now >= next_flush:
                self.pipeline.flush(now)
                next_flush = now + 100_000_000
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
    image = h.build_image(work / "image")
    shutil.copy2(writer, image / "bin" / "writer")
    old_stats = sysctl("kernel.bpf_stats_enabled", "1")
    container = None
    settings = load_detector_settings(None, [])
    report: list[str] = []
    try:
        h.INIT_SCRIPT = (
            "while true; do if [ -f /vol/go ]; then rm -f /vol/go; "
            f"writer write {CONTAINER_WRITES} /tmp/w > /vol/result.tmp; "
            "mv /vol/result.tmp /vol/result; fi; sleep 0.02; done"
        )
        container = h.start_container(work / "containers", image, readonly=False)

        def host_run() -> float:
            out = subprocess.run(
                [str(writer), "open", str(HOST_OPS), str(work / "host")],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            return int(out.stdout) / 1e9

        def container_run() -> float:
            result = container.volume / "result"
            result.unlink(missing_ok=True)
            (container.volume / "go").write_text("1")
            deadline = time.monotonic() + 60
            while not result.exists():
                assert time.monotonic() < deadline, "container workload did not finish"
                time.sleep(0.005)
            return int(result.read_text()) / 1e9

        arms: dict[str, dict[str, list[float]]] = {"a": {"off": [], "on": []},
                                                   "b": {"off": [], "on": []}}  # fmt: skip
        prog_total: dict[str, dict[str, list[int]]] = {"a": {}, "b": {}}
        container_run()  # warm up the upper layer's files
        for i in range(RUNS):
            for key, run in (("a", host_run), ("b", container_run)):
                order = ("off", "on") if i % 2 == 0 else ("on", "off")
                for arm in order:
                    if arm == "off":
                        arms[key]["off"].append(run())
                        continue
                    with Attached(settings) as att:
                        arms[key]["on"].append(run())
                        if key == "b":
                            att.drain_until(lambda a=att: a.pipeline.processed >= CONTAINER_WRITES)
                        merge_stats(prog_total[key], att.prog_stats())
            print(f"run {i + 1}/{RUNS} done", file=sys.stderr, flush=True)

        report += [
            "## Drift detector (eBPF probes + Python agent)",
            "",
            f"Machine: {machine()}. {RUNS} interleaved runs per arm; medians with 95% bootstrap",
            'intervals. "on" = fresh probes attached and drained by the agent\'s pipeline',
            "(default rules and outputs: rate-limited text alerts on stdout).",
            "",
            "| workload | off (median, CI) | on (median, CI) | added time (CI) | target |",
            "|---|---|---|---|---|",
        ]
        labels = {
            "a": (f"(a) host: {HOST_OPS:,} open/close", "≤ 3%"),
            "b": (f"(b) container's own process: {CONTAINER_WRITES:,} file writes", "≤ 10%"),
        }
        for key, (label, target) in labels.items():
            off = median_ci(arms[key]["off"], rng)
            on = median_ci(arms[key]["on"], rng)
            added = ratio_ci(arms[key]["on"], arms[key]["off"], rng)
            report.append(
                f"| {label} | {off[0] * 1e3:.1f} ms ({off[1] * 1e3:.1f} to {off[2] * 1e3:.1f}) "
                f"| {on[0] * 1e3:.1f} ms ({on[1] * 1e3:.1f} to {on[2] * 1e3:.1f}) "
                f"| {added[0] * 100:+.1f}% ({added[1] * 100:+.1f}% to {added[2] * 100:+.1f}%) "
                f"| {target} |"
            )
        for key, (label, _) in labels.items():
            report += ["", f"BPF run time per program during {label} (attached runs):", ""]
            report += stats_table(prog_total[key])

        # (c) the exec-session storm, in-process (latency, throughput, delivery)
        storm_settings = load_detector_settings(_storm_config(work), [])
        storm_events = [0]

        def count(event: Event) -> None:
            if isinstance(event, FileEvent) and event.path.startswith("/tmp/storm/"):
                storm_events[0] += 1

        with Attached(storm_settings, on_event=count) as att:
            t0 = time.monotonic()
            res = container.exec_argv(
                ["writer", "write", str(STORM_FILES), "/tmp/storm"], timeout=300
            )
            assert res.returncode == 0, res.stderr
            produce_s = int(res.stdout) / 1e9
            att.drain_until(
                lambda: storm_events[0] + att.loader.drops() >= STORM_FILES, timeout=300
            )
            wall = time.monotonic() - t0
            drops = att.loader.drops()
            storm_stats = att.prog_stats()
        first, last = ([*att.first_last, 0, 0])[:2]
        lat = sorted(att.latencies_ns)
        p50 = lat[len(lat) // 2] / 1e6 if lat else float("nan")
        p99 = lat[int(len(lat) * 0.99)] / 1e6 if lat else float("nan")
        processed = storm_events[0]
        rate = processed / max((last - first) / 1e9, 1e-9)
        capacity = att.pipeline.processed / max(att.consumer_cpu_s, 1e-9)
        rss_mib = _storm_rss(h, container, work)
        report += [
            "",
            f"(c) exec-session storm: {STORM_FILES:,} file creates by one `runc exec` process",
            f"(produced in {produce_s:.2f} s), rate limit off so every per-file alert is written",
            "to a file output:",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| delivered + counted lost | {processed:,} + {drops:,} = {processed + drops:,} "
            f"of {STORM_FILES:,} | all |",
            f"| events processed per second (first to last) | {rate:,.0f} | ≥ 50,000 |",
            f"| consumer capacity (events per CPU-second of the agent) | {capacity:,.0f} | |",
            f"| syscall → alert written, p50 / p99 | {p50:.1f} ms / {p99:.1f} ms | p99 ≤ 100 ms |",
            f"| alerts written | {len(lat):,} | |",
            f"| `podlock detect` peak RSS during the same storm | {rss_mib:.1f} MiB | ≤ 100 MiB |",
            f"| wall time until all events were handled | {wall:.2f} s | |",
            "",
            "BPF run time per program during the storm:",
            "",
            *stats_table({k: [v.run_time_ns, v.run_cnt] for k, v in storm_stats.items()}),
            "",
        ]
    finally:
        if container is not None:
            h.stop_container(container)
        sysctl("kernel.bpf_stats_enabled", old_stats)
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


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
        res = container.exec_argv(["writer", "write", str(STORM_FILES), "/tmp/storm2"], timeout=300)
        assert res.returncode == 0, res.stderr
        time.sleep(3)
        status = Path(f"/proc/{detector.proc.pid}/status").read_text()
        hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        return int(hwm.split()[1]) / 1024
    finally:
        h.stop_detector(detector)


if __name__ == "__main__":
    sys.exit(main())
