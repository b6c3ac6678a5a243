"""Rule engine throughput: events/s through Engine.process on one core, default rules.

Workloads (synthetic events from detector.synthetic, built before timing):
  mix        a realistic node: container processes writing volumes and (some) rootfs,
             image execs, exits, exec probes, a kubectl cp, a human exec shell, refused
             writes; default rate limit on
  storm      100k file creates by one exec shell on the root filesystem: every event is
             an alert (rate limit off), i.e. the cost of making alerts
  storm-rl   the same with the default rate limit (most alerts held back)
  cp         100k files written by one `kubectl cp` tar: folded into one alert

Peers in the same run, for ratios (the machine is shared and noisy):
  floor      an engine with no rules: dispatch and state only
  tree-walk  the same default rules evaluated by walking the bound tree for every rule on
             every event (no compilation to closures, no per-event-type index)

Writes tests/bench/results/rules.md. PODLOCK_BENCH_RUNS (default 7) runs per cell, interleaved.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import cpu_model

from detector.condition.ast import And, BCompare, BExists, Const, Node, Not, Or
from detector.condition.compiler import extractor, value_test
from detector.config import RateLimit
from detector.engine import Engine
from detector.events import Event, ExecEvent, FileEvent, FsKind
from detector.fields import Fixed
from detector.rules import RuleSet
from detector.synthetic import (
    CID,
    META,
    StaticMeta,
    default_rules,
    exec_,
    exec_proc,
    exit_,
    proc,
    write,
)

RESULTS = Path(__file__).resolve().parent / "results" / "rules.md"
RUNS = int(os.environ.get("PODLOCK_BENCH_RUNS", "7"))
N = 100_000
TARGET = 50_000


def mix_events(n: int) -> list[Event]:
    """A node's worth of activity, repeated to n events."""
    apps = [proc(1000 + i, comm=c) for i, c in enumerate(["nginx", "java", "python3", "envoy"])]
    probe = exec_proc(5000, comm="sh", cmdline=("sh", "-c", "test -f /tmp/ready"))
    probe_child = exec_proc(5001, 5000, comm="test", ppid=5000)
    human = exec_proc(6000, comm="bash", cmdline=("bash",), tty=34816)
    tar = exec_proc(7000, comm="tar", cmdline=("tar", "-xmf", "-", "-C", "/srv"))
    block: list[Event] = []
    for i in range(40):
        block.append(write(apps[i % 4], f"/data/cache/{i}", fs=FsKind.VOLUME))
    for i in range(5):
        block.append(write(apps[i % 4], f"/var/run/app{i}.pid"))
    for i in range(15):
        child = proc(2000 + i, comm="date", ppid=1000)
        block += [exec_(child), exit_(child)]
    block += [exec_(probe), exec_(probe_child), exit_(probe_child), exit_(probe)]
    for _ in range(2):
        block += [exec_(probe), exit_(probe)]
    block += [exec_(human), write(human, "/etc/motd"), write(human, "/data/x", fs=FsKind.VOLUME)]
    block += [write(tar, f"/srv/f{i}") for i in range(10)]
    block += [write(apps[0], "/etc/nginx/x", result=-30) for _ in range(3)]
    block.append(exit_(tar))
    events: list[Event] = []
    while len(events) < n:
        events.extend(block)
    return events[:n]


def storm_events(n: int) -> list[Event]:
    shell = exec_proc(8000, comm="sh", cmdline=("sh", "-c", "for i in ...; do touch; done"))
    return [write(shell, f"/usr/share/storm/{i}") for i in range(n)]


def cp_events(n: int) -> list[Event]:
    tar = exec_proc(9000, comm="tar", cmdline=("tar", "-xmf", "-", "-C", "/opt"))
    return [write(tar, f"/opt/pkg/{i}") for i in range(n)]


# --- the tree-walking peer -----------------------------------------------------------------


class TreeWalk:
    """Every rule, every event: walk the bound tree (extractors cached per node/type)."""

    def __init__(self, rules: RuleSet, env: Engine) -> None:
        self.rules = rules.enabled
        self.env = env
        self.cache: dict[tuple[int, str], Any] = {}

    def _type(self, ev: Event) -> str:
        if isinstance(ev, FileEvent):
            return ev.op.value
        return "execve" if isinstance(ev, ExecEvent) else "procexit"

    def eval(self, node: Node, ev: Any, t: str) -> bool:
        if isinstance(node, And):
            return all(self.eval(n, ev, t) for n in node.items)
        if isinstance(node, Or):
            return any(self.eval(n, ev, t) for n in node.items)
        if isinstance(node, Not):
            return not self.eval(node.item, ev, t)
        if isinstance(node, Const):
            return node.value
        key = (id(node), t)
        hit = self.cache.get(key)
        if hit is None:
            assert isinstance(node, BCompare | BExists)
            get = extractor(node.field, node.arg, t, self.env)
            test: Callable[[Any], bool] = (
                (lambda x: x is not None)
                if isinstance(node, BExists)
                else value_test(node.op, node.value)
            )
            hit = self.cache[key] = (get, test)
        get, test = hit
        value = get.value if isinstance(get, Fixed) else get(ev)
        return test(value)

    def process(self, ev: Event, now_ns: int) -> list[str]:
        if not hasattr(ev, "proc"):
            return []
        t = self._type(ev)
        return [r.name for r in self.rules if self.eval(r.condition, ev, t)]


# --- timing ----------------------------------------------------------------------------------


def run_once(process: Callable[[Event, int], Sequence[object]], events: list[Event]) -> float:
    t0 = time.perf_counter()
    now = 1_790_000_000_000_000_000
    for ev in events:
        process(ev, now)
        now += 10_000  # 100k events/s of the caller's clock
    return len(events) / (time.perf_counter() - t0)


def machine() -> list[str]:
    cpu = cpu_model()
    return [
        f"- nproc {os.cpu_count()}, CPU {cpu}, kernel {platform.release()}",
        f"- Python {platform.python_version()}",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]


def main() -> int:
    meta = StaticMeta({CID: META})
    rules = default_rules()
    workloads = {"mix": mix_events(N), "storm": storm_events(N), "cp": cp_events(N)}
    off = RateLimit(enabled=False)

    def make(name: str) -> Callable[[Event, int], Sequence[object]]:
        if name == "floor":
            return Engine(RuleSet(()), meta, rate_limit=off).process
        if name == "tree-walk":
            return TreeWalk(rules, Engine(rules, meta, rate_limit=off)).process
        limit = RateLimit() if name == "engine+rl" else off
        return Engine(rules, meta, rate_limit=limit).process

    cells = [
        ("mix", "engine+rl"), ("mix", "floor"), ("mix", "tree-walk"),
        ("storm", "engine"), ("storm", "engine+rl"), ("storm", "floor"), ("storm", "tree-walk"),
        ("cp", "engine"), ("cp", "floor"),
    ]  # fmt: skip
    samples: dict[tuple[str, str], list[float]] = {c: [] for c in cells}
    alerts: dict[tuple[str, str], int] = {}
    started = time.monotonic()
    for _ in range(RUNS):  # interleaved: each run visits every cell
        for cell in cells:
            process = make(cell[1])
            samples[cell].append(run_once(process, workloads[cell[0]]))
            if cell[1].startswith("engine"):
                eng: Engine = process.__self__  # type: ignore[attr-defined]
                alerts[cell] = eng.alerts + len(eng.shutdown(2_000_000_000_000_000_000))

    lines = ["## Rule engine: events/s through Engine.process (default rules, one core)", ""]
    lines += machine()
    lines += [
        f"- {N} events per workload, {RUNS} interleaved runs per cell, median and min-max;"
        " events built before timing",
        "- mix: volume/rootfs writes, image execs, exits, exec probes, a human shell, a kubectl"
        " cp, refused writes; storm: 100k exec-session rootfs creates (each an alert);"
        " cp: 100k files by one kubectl cp tar (one alert)",
        "- floor: engine with no rules; tree-walk: the same rules evaluated by walking the"
        " bound tree for every rule on every event",
        f"- total bench time {(time.monotonic() - started) / 60:.1f} min",
        "",
        "| workload | engine | events/s (median) | min-max | µs/event | vs floor | alerts |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    medians = {c: statistics.median(v) for c, v in samples.items()}
    for cell in cells:
        med = medians[cell]
        floor = medians[(cell[0], "floor")]
        lines.append(
            f"| {cell[0]} | {cell[1]} | {med:,.0f} | {min(samples[cell]):,.0f}-"
            f"{max(samples[cell]):,.0f} | {1e6 / med:.2f} | {med / floor:.2f}x |"
            f" {alerts.get(cell, '')} |"
        )
    lines += ["", "### Targets", ""]
    for cell in cells:
        if cell[1].startswith("engine"):
            ok = "PASS" if medians[cell] >= TARGET else "MISS"
            lines.append(
                f"- {cell[0]} / {cell[1]}: {medians[cell]:,.0f} events/s (target >= "
                f"{TARGET:,}): {ok}"
            )
    for w in ("mix", "storm"):
        ratio = medians[(w, "engine+rl" if w == "mix" else "engine")] / medians[(w, "tree-walk")]
        lines.append(f"- {w}: compiled and indexed vs tree-walk: {ratio:.1f}x faster")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
