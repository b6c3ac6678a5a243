"""What queued alerts cost: the real `podlock detect` with an HTTP receiver that accepts
connections and never answers, while an exec session in a runc container writes 10,500 files
(rate limit off: one alert each). Its HTTP queue fills to its 10,000-alert capacity (checked
on /metrics) and the agent's RSS is read from /proc; a control arm, the same detector and
workload without the HTTP output, runs right after, so the difference is the queue's cost.
Writes tests/bench/results/outputs.md. Needs root.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from machine import load_harness

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "outputs.md"
ALERTS = 10_500
CAPACITY = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def metric(port: int, name: str, output: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f'podlock_detector_{name}{{output="{output}"}}'):
                return float(line.split()[-1])
    return 0.0


def arm(h: Any, work: Path, container: Any, name: str, http: str | None) -> dict[str, float]:
    port = free_port()
    config = work / f"{name}.yaml"
    config.write_text(
        "rate_limit: {enabled: false}\n"
        + (f"http_output: {{enabled: true, url: '{http}', timeout: 600}}\n" if http else "")
    )
    d = h.start_detector(
        work / name, ["--config", str(config), "--metrics-bind", f"127.0.0.1:{port}"]
    )
    try:
        time.sleep(2)
        start = rss_mib(d.proc.pid)
        script = f"i=0; while [ $i -lt {ALERTS} ]; do : > /etc/{name}.$i; i=$((i + 1)); done"
        res = container.exec(script, timeout=600)
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 300
        while sum(1 for _ in d.stdout.open("rb")) < ALERTS:
            assert time.monotonic() < deadline, "the alerts did not all reach stdout"
            time.sleep(0.5)
        time.sleep(2)
        out = {
            "start": start,
            "end": rss_mib(d.proc.pid),
            "queued": metric(port, "output_queue_depth", "http"),
            "queued_bytes": metric(port, "output_queue_bytes", "http"),
            "dropped": metric(port, "output_dropped_total", "http"),
        }
    finally:
        h.stop_detector(d)
    return out


def main() -> int:
    if shutil.which("runc") is None or not Path("/sys/kernel/btf/vmlinux").exists():
        print("bench_outputs: needs root, runc and BTF", file=sys.stderr)
        return 1
    h = load_harness()
    work = Path(tempfile.mkdtemp(prefix="podlock-bench-outputs-"))
    image = h.build_image(work / "image")
    container = h.start_container(work / "containers", image, readonly=False)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)  # accepts (in the kernel) and never answers
    try:
        queued = arm(h, work, container, "hung", f"http://127.0.0.1:{hung.getsockname()[1]}/")
        control = arm(h, work, container, "control", None)
    finally:
        hung.close()
        h.stop_container(container)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    growth = queued["end"] - queued["start"]
    control_growth = control["end"] - control["start"]
    cost = growth - control_growth
    per_alert = queued["queued_bytes"] / max(queued["queued"], 1)
    report = [
        "## Outputs: what 10,000 queued alerts cost",
        "",
        f"The real `podlock detect`, an exec session writing {ALERTS:,} files (rate limit off, one",
        "alert each), and an HTTP receiver that accepts connections and never answers; the",
        "control arm runs the same detector and workload without the HTTP output.",
        "",
        "| | HTTP receiver hung | control (no HTTP output) |",
        "|---|---|---|",
        f"| alerts waiting in the HTTP queue | {queued['queued']:,.0f} | n/a |",
        f"| bytes waiting in the HTTP queue | {queued['queued_bytes'] / 2**20:.1f} MiB "
        f"({per_alert:,.0f} B per alert) | n/a |",
        f"| alerts dropped (queue full), counted | {queued['dropped']:,.0f} | n/a |",
        f"| RSS before the writes | {queued['start']:.1f} MiB | {control['start']:.1f} MiB |",
        f"| RSS after | {queued['end']:.1f} MiB | {control['end']:.1f} MiB |",
        f"| RSS growth | {growth:.1f} MiB | {control_growth:.1f} MiB |",
        "",
        f"The queue's cost (growth minus the control's): **{cost:.1f} MiB** for "
        f"{queued['queued']:,.0f} queued alerts,",
        "for their bytes plus a bytes object and a deque slot each. Before encoded alerts",
        "were copied to their own size, this benchmark measured 75 MiB: orjson's result keeps",
        "the capacity its buffer grew to (8 KiB for a 1.3 KiB alert).",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(report))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
