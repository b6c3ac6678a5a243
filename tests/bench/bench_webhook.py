"""Webhook throughput and latency: wrk POSTing a ~6 KB Pod AdmissionReview over keep-alive TLS
on loopback to `podlock serve` (/mutate and /validate), against a minimal Flask-on-gunicorn
gthread TLS app that returns a canned answer (the stack's ceiling), in the same runs.

Writes tests/bench/results/webhook.md. Environment knobs for a quick smoke run:
    PODLOCK_BENCH_SECONDS (default 15)  per wrk run
    PODLOCK_BENCH_RUNS    (default 3)   runs per cell; the median is reported
    PODLOCK_BENCH_CONNS   (default 8,32,64)
    PODLOCK_BENCH_PINNING (default unpinned,pinned)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "webhook.md"
EXAMPLE = ROOT / "examples" / "admission-review-pod.json"
WORKERS = 2
CANNED_VALIDATE = "canned (validate body)"
BASELINE = {"podlock /mutate": "canned", "podlock /validate": CANNED_VALIDATE}

SECONDS = int(os.environ.get("PODLOCK_BENCH_SECONDS", "15"))
RUNS = int(os.environ.get("PODLOCK_BENCH_RUNS", "3"))
CONNS = [int(c) for c in os.environ.get("PODLOCK_BENCH_CONNS", "8,32,64").split(",")]
PINNINGS = os.environ.get("PODLOCK_BENCH_PINNING", "unpinned,pinned").split(",")

# wrk: POST the body; at the end print one JSON line with what we report.
LUA = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50": %d, "p90": %d, "p99": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# --- the canned-response server (run as `bench_webhook.py --canned PORT CERT KEY`) ----------


def canned_server(port: int, cert: str, key: str, answer_file: str) -> None:
    from flask import Flask, Response, request
    from gunicorn.app.base import BaseApplication

    from webhook.serve import THREADS, PerWorkerListeners
    from webhook.tls import ReloadingContext

    answer = Path(answer_file).read_bytes()
    app = Flask("canned")

    @app.post("/<path:_path>")
    def canned(_path: str) -> Response:
        request.get_data()  # read the body like the real app does
        return Response(answer, content_type="application/json")

    tls = ReloadingContext(cert, key)

    class Canned(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for k, v in {
                "bind": [f"127.0.0.1:{port}"],
                "workers": WORKERS,
                "worker_class": "gthread",
                "threads": THREADS,  # as podlock serve
                "keepalive": 120,
                "certfile": cert,
                "keyfile": key,
                "ssl_context": lambda _c, _f: tls.context(),
                "preload_app": True,
                "accesslog": None,
                "loglevel": "warning",
                **PerWorkerListeners().hooks(),  # spread connections as podlock serve does
            }.items():
                self.cfg.set(k, v)

        def load(self) -> Flask:
            return app

    Canned().run()


# --- orchestration --------------------------------------------------------------------------


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    rss_mib: float  # the largest worker's RSS after the run
    cpu_us: float  # server CPU time (all its processes) per request: robust to a noisy machine


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children."""
    total = 0.0
    for p in (pid, *_children(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _wait_up(port: int, cafile: str, proc: subprocess.Popen[bytes]) -> None:
    import http.client
    import ssl

    ctx = ssl.create_default_context(cafile=cafile)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
            c.request("POST", "/validate", body=b"{}")
            c.getresponse().read()
            c.close()
            if len(_children(proc.pid)) >= WORKERS:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not come up")


class Servers:
    def __init__(self, tmp: Path, pin: str | None) -> None:
        self.tmp = tmp
        self.pin = pin
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def _start(self, name: str, cmd: list[str]) -> None:
        if self.pin is not None:
            cmd = ["taskset", "-c", self.pin, *cmd]
        port = _free_port()
        cmd = [c.replace("{PORT}", str(port)) for c in cmd]
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the server
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT)
        self.procs[name], self.ports[name] = proc, port
        _wait_up(port, str(self.tmp / "ca.crt"), proc)

    def start(self) -> None:
        cert, key = str(self.tmp / "tls.crt"), str(self.tmp / "tls.key")
        py = sys.executable
        serve = ["serve", "--bind", "127.0.0.1:{PORT}", "--workers", str(WORKERS)]
        self._start("podlock", [py, "-m", "webhook.cli", *serve, "--cert", cert, "--key", key])
        self._start(
            "canned",
            [py, __file__, "--canned", "{PORT}", cert, key, str(self.tmp / "answer.json")],
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            proc.wait(60)

    def cpu(self, name: str) -> float:
        return _cpu_seconds(self.procs[name].pid)

    def worker_rss(self, name: str) -> float:
        return max((_rss_mib(p) for p in _children(self.procs[name].pid)), default=0.0)


def _wrk(
    url: str, body: Path, conns: int, seconds: int, pin: str | None, lua: Path
) -> dict[str, Any]:
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", str(lua), url]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    env = os.environ | {"BENCH_BODY": str(body)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    m = re.search(r"^BENCH (\{.*\})$", out, re.M)
    if m is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    result: dict[str, Any] = json.loads(m.group(1))
    return result


def _machine() -> list[str]:
    model = cpu_model()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    import gunicorn

    import webhook.review

    built = "compiled with mypyc" if (webhook.review.__file__ or "").endswith(".so") else "Python"
    return [
        f"- nproc {os.cpu_count()}, CPU {model}, kernel {platform.release()}",
        f"- Python {platform.python_version()}, gunicorn {gunicorn.__version__}, {wrk.strip()}",
        f"- podlock's admission path (webhook/review.py and the policy core): {built}",
        f"- {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def _prepare(tmp: Path) -> tuple[Path, Path]:
    """Certificates, the two request bodies and the canned answer."""
    import jsonpatch  # the validating webhook sees the pod after mutation: apply our patch

    from certs.cli import write_bundle
    from certs.pki import generate_bundle
    from webhook.config import load_settings
    from webhook.review import review

    write_bundle(
        str(tmp), generate_bundle("podlock", "bench", ["127.0.0.1"], now=datetime.now(UTC))
    )
    mutate_body = EXAMPLE.read_bytes()
    settings = load_settings(None)
    answer = review(mutate_body, "mutate", "enforce", settings).body
    import base64

    doc = json.loads(mutate_body)
    patch = json.loads(base64.b64decode(json.loads(answer)["response"]["patch"]))
    doc["request"]["object"] = jsonpatch.apply_patch(doc["request"]["object"], patch)
    validate_body = tmp / "validate.json"
    # compact, as the API server sends it (indented, the patched pod would be ~9 KB)
    validate_body.write_bytes(json.dumps(doc, separators=(",", ":")).encode())
    verdict = json.loads(review(validate_body.read_bytes(), "validate", "enforce", settings).body)
    assert verdict["response"]["allowed"], verdict  # the hardened pod is admitted
    (tmp / "answer.json").write_bytes(answer)
    return EXAMPLE, validate_body


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--canned":
        canned_server(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
        return 0
    argparse.ArgumentParser(description=__doc__).parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="podlock-bench-"))
    try:
        return _bench(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(tmp: Path) -> int:
    load_start = os.getloadavg()
    mutate_body, validate_body = _prepare(tmp)
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    # Each podlock endpoint is compared with the canned app fed the same body.
    targets = [
        ("canned", "canned", "/mutate", mutate_body),
        ("podlock /mutate", "podlock", "/mutate", mutate_body),
        (CANNED_VALIDATE, "canned", "/validate", validate_body),
        ("podlock /validate", "podlock", "/validate", validate_body),
    ]
    ncpu = os.cpu_count() or 1
    pins = {"unpinned": (None, None), "pinned": ("0", "1" if ncpu > 1 else "0")}
    results: dict[tuple[str, str, int], list[Sample]] = {}
    started = time.monotonic()
    for pinning in PINNINGS:
        server_pin, load_pin = pins[pinning]
        servers = Servers(tmp, server_pin)
        servers.start()
        try:
            for _name, server, path, body in targets:  # warm-up, not reported
                url = f"https://127.0.0.1:{servers.ports[server]}{path}"
                _wrk(url, body, 8, 2, load_pin, lua)
            for run in range(RUNS):
                for conns in CONNS:
                    for name, server, path, body in targets:
                        url = f"https://127.0.0.1:{servers.ports[server]}{path}"
                        cpu_before = servers.cpu(server)
                        r = _wrk(url, body, conns, SECONDS, load_pin, lua)
                        cpu = servers.cpu(server) - cpu_before
                        errors = sum(
                            r[k] for k in ("connect", "read", "write", "status", "timeout")
                        )
                        s = Sample(
                            rps=r["requests"] / (r["duration_us"] / 1e6),
                            p50_ms=r["p50"] / 1000,
                            p90_ms=r["p90"] / 1000,
                            p99_ms=r["p99"] / 1000,
                            errors=errors,
                            rss_mib=servers.worker_rss(server),
                            cpu_us=cpu / max(r["requests"], 1) * 1e6,
                        )
                        results.setdefault((pinning, name, conns), []).append(s)
                        print(
                            f"[{pinning} run {run + 1}/{RUNS}] {name:18} c={conns:<3} "
                            f"{s.rps:8.0f} req/s  p50 {s.p50_ms:6.2f}  p90 {s.p90_ms:6.2f}  "
                            f"p99 {s.p99_ms:6.2f} ms  cpu {s.cpu_us:4.0f} us/req  "
                            f"errors {s.errors}  rss {s.rss_mib:.0f} MiB",
                            flush=True,
                        )
        finally:
            servers.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    load = f"{load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    names = [t[0] for t in targets]
    size = validate_body.stat().st_size
    report = _report(results, names, time.monotonic() - started, load, size)
    RESULTS.write_text(report)
    print(f"wrote {RESULTS}")
    return 0


def _median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def _report(
    results: dict[tuple[str, str, int], list[Sample]],
    names: list[str],
    elapsed: float,
    load: str,
    validate_bytes: int,
) -> str:
    lines = [
        "## Webhook: podlock serve vs a canned-response Flask/gunicorn app",
        "",
        *_machine(),
        f"- wrk -t2, {SECONDS} s per run, {RUNS} run(s) per cell (median shown), keep-alive "
        f"TLS on loopback; {WORKERS} gthread workers x 4 threads on both servers; body "
        f"{EXAMPLE.stat().st_size} B Pod CREATE review; /validate gets it after podlock's patch, "
        f"as compact JSON ({validate_bytes} B); each endpoint's ceiling is the canned app "
        "fed the same body",
        "- pinned: servers on CPU 0, wrk on CPU 1 (taskset); unpinned: all share the 2 cores",
        f"- total bench time {elapsed / 60:.1f} min; 1-min load average {load} (shared "
        "machine: compare podlock with the canned app of the same run, not across runs)",
        "- server CPU µs/req: CPU time of all the server's processes during the run divided by "
        "the requests answered; the least noise-sensitive column",
        "",
    ]
    checks: list[str] = []
    for pinning in PINNINGS:
        lines += [
            f"### {pinning}",
            "",
            "| target | conns | req/s | vs canned | p50 ms | p90 ms | p99 ms | p99 vs canned "
            "| server CPU µs/req | errors | max RSS/worker MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for conns in CONNS:
            for name in names:
                base = results[(pinning, BASELINE.get(name, name), conns)]
                ss = results[(pinning, name, conns)]
                rps, p99 = _median(ss, "rps"), _median(ss, "p99_ms")
                ratio = rps / _median(base, "rps")
                p99_ratio = p99 / _median(base, "p99_ms")
                errors = sum(s.errors for s in ss)
                rss = max(s.rss_mib for s in ss)
                lines.append(
                    f"| {name} | {conns} | {rps:.0f} | {ratio:.0%} | {_median(ss, 'p50_ms'):.2f} "
                    f"| {_median(ss, 'p90_ms'):.2f} | {p99:.2f} | {p99_ratio:.2f}x "
                    f"| {_median(ss, 'cpu_us'):.0f} | {errors} | {rss:.0f} |"
                )
                if name in BASELINE and conns == 32:
                    checks.append(
                        f"- {pinning}, {name}, 32 conns: throughput {ratio:.0%} of canned "
                        f"(target >= 75%): {'PASS' if ratio >= 0.75 else 'MISS'}; p99 "
                        f"{p99_ratio:.2f}x canned (target <= 1.5x): "
                        f"{'PASS' if p99_ratio <= 1.5 else 'MISS'}"
                    )
                    if pinning == "unpinned":
                        checks.append(
                            f"- unpinned, {name}, 32 conns: {rps:.0f} reviews/s (target >= "
                            f"4000): {'PASS' if rps >= 4000 else 'MISS'}"
                        )
                if name in BASELINE:
                    if errors:
                        checks.append(f"- {pinning}, {name}, {conns} conns: {errors} errors: MISS")
                    if rss > 100:
                        checks.append(f"- {pinning}, {name}: {rss:.0f} MiB RSS per worker: MISS")
        lines.append("")
    all_errors = sum(s.errors for k, ss in results.items() if k[1] in BASELINE for s in ss)
    max_rss = max(s.rss_mib for k, ss in results.items() if k[1] in BASELINE for s in ss)
    checks.append(f"- errors across all podlock runs: {all_errors} (target 0)")
    checks.append(f"- max podlock worker RSS: {max_rss:.0f} MiB (target <= 100)")
    lines += ["### Targets", "", *checks, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
