"""`make bench`: run every tests/bench/bench_*.py in turn, then gather their result sections
(tests/bench/results/*.md) under one machine header into BENCHMARKS.md at the repository root.

A benchmark that fails is reported and the others still run; the exit status is non-zero if
any failed. Sections are concatenated in file-name order, each as its benchmark wrote it.
`run_all.py bench_detector.py` runs only the named benchmarks and gathers every section again
(the others as their last full run left them); `run_all.py --gather` runs none and only gathers.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
OUTPUT = ROOT / "BENCHMARKS.md"


def machine_header() -> list[str]:
    cpu = cpu_model()
    memory = "unknown"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
            break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- nproc: {os.cpu_count()}",
        f"- CPU: {cpu}",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- memory: {memory}",
        f"- Python: {platform.python_version()}",
        f"- load average when the report was written: {load} (the machine is shared: compare "
        "the ratios within a section, not absolute numbers across sections)",
    ]


def main() -> int:
    failed: list[str] = []
    gather_only = sys.argv[1:] == ["--gather"]
    only = set() if gather_only else set(sys.argv[1:])
    scripts = [] if gather_only else sorted(HERE.glob("bench_*.py"))
    if unknown := only - {s.name for s in scripts}:
        print(f"run_all: no benchmark named {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    for script in scripts:
        if only and script.name not in only:
            continue
        print(f"== {script.name}", flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(script)], cwd=ROOT, check=False)
        print(f"== {script.name}: exit {done.returncode} in {time.monotonic() - started:.0f} s")
        if done.returncode != 0:
            failed.append(script.name)

    sections = [p.read_text().rstrip() for p in sorted(RESULTS.glob("*.md"))]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (tests/bench/run_all.py); each section by its bench_*.py.",
        "",
        "## Machine",
        "",
        *machine_header(),
    ]
    if failed:
        lines += ["", f"Benchmarks that failed in this run: {', '.join(failed)}."]
    OUTPUT.write_text("\n".join(lines) + "\n\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {OUTPUT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
