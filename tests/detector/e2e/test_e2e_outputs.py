"""Outputs under faults, end to end: the real `podlock detect` with real probes and runc
containers, a real local HTTP receiver, real programs as outputs, and its /metrics.

- a program output taking 2 s per alert during a 60k-write burst: no event is lost;
- the HTTP receiver down for 30 s, then back: every alert arrives once and in order, or is
  counted as dropped (the queue is kept small so that it overflows), and the alert after a
  gap carries the gap's size;
- a program output that exits at once: the detector goes on, the loss is counted and
  logged at a bounded rate;
- file names with newlines, escape sequences, the list separator and bytes that are not
  UTF-8: every JSON alert is strict JSON carrying the exact bytes, every text alert is one
  line with nothing raw.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from escapes import unescape
from prometheus_samples import Samples, scrape

from detector.alerts import split_items
from tests.detector.e2e.conftest import (
    Container,
    Detector,
    podlock_cmd,
    start_container,
    stop_container,
    stop_detector,
)

pytestmark = pytest.mark.root

ROOTFS_WRITE = "Write to container root filesystem in exec session"
KUBECTL_CP = "kubectl cp into container"
LOST = "podlock internal: events lost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((f"podlock_detector_{name}", tuple(sorted(labels.items()))), 0.0)


def start(workdir: Path, config: str, port: int, json: bool = True, nice: int = 0) -> Detector:
    """`podlock detect --config … --metrics-bind …` (JSON alerts on stdout unless `json` is
    False), at niceness `nice`. No PODLOCK_EVENTS_LOG: a JSON line per event would cost more
    than the rules."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "podlock.yaml").write_text(config)
    stdout, pidfile = workdir / ("alerts.jsonl" if json else "alerts.txt"), workdir / "pid"
    pidfile.unlink(missing_ok=True)
    args = ["detect", "--config", str(workdir / "podlock.yaml"), "--pidfile", str(pidfile),
            "--metrics-bind", f"127.0.0.1:{port}", *(["--json"] if json else [])]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", "PODLOCK_EVENTS_LOG")}
    with stdout.open("wb") as out, (workdir / "stderr.txt").open("wb") as err:
        argv = ["nice", "-n", str(nice), *podlock_cmd(), *args]
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
    deadline = time.monotonic() + 90
    while not pidfile.exists():
        assert proc.poll() is None, (workdir / "stderr.txt").read_text(errors="replace")
        assert time.monotonic() < deadline, "the detector did not attach within 90 s"
        time.sleep(0.05)
    return Detector(proc, stdout, workdir / "no-events-log", pidfile)


@pytest.fixture
def fresh(e2e_dir: Path, image: Path) -> Iterator[Callable[[], Container]]:
    """Containers of this test only (so its alerts and counts are its own)."""
    made: list[Container] = []

    def make() -> Container:
        made.append(start_container(e2e_dir / "containers", image, readonly=False))
        return made[-1]

    yield make
    for c in made:
        stop_container(c)


def of(alerts: list[dict[str, Any]], rule: str, c: Container) -> list[dict[str, Any]]:
    return [
        a for a in alerts
        if a["rule"] == rule and a["output_fields"].get("container.full_id") == c.id
    ]  # fmt: skip


# --- a slow program during a burst -----------------------------------------------------------


def test_a_slow_program_output_during_a_60k_write_burst_loses_no_event(
    e2e_dir: Path, fresh: Callable[[], Container]
) -> None:
    port = free_port()
    ran = e2e_dir / "slow-program-ran"
    # The agent runs ahead of the machine's other work: what this test is about is that a
    # slow output loses nothing, and on a loaded machine the burst (native code) would
    # otherwise outrun the agent for want of CPU, whatever its outputs do (those losses
    # are counted, not silent, but they would fail this test for another reason).
    d = start(
        e2e_dir / "slow-program",
        f"program_output: {{enabled: true, program: 'sleep 2; cat >> {ran}'}}\n",
        port,
        nice=-10,
    )
    try:
        c, marker = fresh(), fresh()
        before = scrape(port)
        burst = "i=0; while [ $i -lt 60000 ]; do : > /tmp/burst.$((i % 64)); i=$((i + 1)); done"
        result = c.exec(burst, timeout=600)
        assert result.returncode == 0, result.stderr
        # alerts still flow at once while the program works through its queue (another
        # container: the burst's own rule and container are rate-limited by now)
        marker.exec("echo after > /etc/after-burst")
        d.wait_for(lambda a: bool(of(a, ROOTFS_WRITE, marker)), timeout=120)
        after = scrape(port)
    finally:
        stop_detector(d)
    opens = metric(after, "events_total", type="open") - metric(before, "events_total", type="open")
    print(
        f"burst: {opens:.0f} open events evaluated; lost kernel/user: "
        f"{metric(after, 'lost_records_total', side='kernel'):.0f}/"
        f"{metric(after, 'lost_records_total', side='user'):.0f}"
    )
    assert metric(after, "lost_records_total", side="kernel") == 0
    assert metric(after, "lost_records_total", side="user") == 0
    assert opens >= 60_000
    timed = metric(after, "rule_evaluation_seconds_count") - metric(
        before, "rule_evaluation_seconds_count"
    )
    assert timed >= opens // 64 - 1 and metric(after, "rule_evaluation_seconds_sum") > 0
    assert not [a for a in d.alerts() if a["rule"] == LOST]
    # the program is behind: its alerts wait in its own queue, none lost unaccounted
    waiting = metric(after, "output_queue_depth", output="program")
    delivered = metric(after, "output_delivered_total", output="program")
    dropped = metric(after, "output_dropped_total", output="program")
    alerts = sum(v for (name, _), v in after.items() if name == "podlock_detector_alerts_total")
    assert waiting > 0
    assert alerts - 1 <= waiting + delivered + dropped <= alerts  # one may be in its run
    assert metric(after, "output_delivered_total", output="stdout") == alerts


# --- the HTTP receiver down for 30 s ---------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


# Only this test's own files alert: other containers on the node (other tests, a busy
# machine) must not fill its small queue.
MARKED_WRITES = """
- rule: Marked write
  desc: a write to one of this test's marked files
  condition: evt.type = open and (fd.name startswith /etc/down- or fd.name startswith /etc/up-)
  output: Marked write (file=%fd.name container=%container.full_id)
  priority: ERROR
"""


def test_http_receiver_down_for_30s_then_back(
    e2e_dir: Path, fresh: Callable[[], Container]
) -> None:
    http_port, port = free_port(), free_port()
    config = (
        f"http_output: {{enabled: true, url: 'http://127.0.0.1:{http_port}/falco', timeout: 1}}\n"
        "outputs_queue: {capacity: 20, max_retry_interval: 2}\n"
        "rate_limit: {enabled: false}\n"
        "rules_file: [marked.yaml]\n"
    )
    (e2e_dir / "http-down").mkdir(parents=True, exist_ok=True)
    (e2e_dir / "http-down" / "marked.yaml").write_text(MARKED_WRITES)
    d = start(e2e_dir / "http-down", config, port)
    server: ThreadingHTTPServer | None = None
    handler = type("Handler", (_Receiver,), {"bodies": []})
    try:
        c = fresh()
        # 30 s without a receiver: 60 alerts of this container, 20 fit in the queue
        for n in range(30):
            c.exec(f"echo {n} > /etc/down-{2 * n}; echo {n} > /etc/down-{2 * n + 1}")
            time.sleep(1.0)
        assert handler.bodies == []
        down = scrape(port)
        server = ThreadingHTTPServer(("127.0.0.1", http_port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        wait_until(lambda: metric(scrape(port), "output_queue_depth", output="http") == 0)
        for n in range(5):  # the recovered receiver gets new alerts too
            c.exec(f"echo {n} > /etc/up-{n}")
        d.wait_for(lambda a: any(x["output_fields"].get("fd.name") == "/etc/up-4" for x in a))
        wait_until(lambda: any(b"/etc/up-4" in body for body in handler.bodies))
        # and its sender has counted its last post (the receiver has it a moment before)
        wait_until(lambda: _http_accounted(scrape(port)))
        up = scrape(port)
    finally:
        stop_detector(d)
        if server is not None:
            server.shutdown()
            server.server_close()
    got = [orjson.loads(b) for b in handler.bodies]
    printed = d.alerts()  # stdout, the detector's order (its own queue may drop too)
    # once each, in the detector's order, with gaps only where alerts were dropped
    keys = [(g["output"], g["rule"]) for g in got]
    assert len(keys) == len(set(keys))
    both = {(a["output"], a["rule"]) for a in printed} & set(keys)
    printed_order = [(a["output"], a["rule"]) for a in printed]
    assert [k for k in keys if k in both] == [k for k in printed_order if k in both]
    mine = [
        g["output_fields"]["fd.name"]
        for g in got
        if g["output_fields"]["container.full_id"] == c.id
    ]
    assert mine[-5:] == [f"/etc/up-{n}" for n in range(5)]
    assert len([n for n in mine if n.startswith("/etc/down-")]) < 60  # the queue overflowed
    dropped = metric(up, "output_dropped_total", output="http")
    assert dropped > 0 and metric(down, "output_retries_total", output="http") >= 5
    # every alert is delivered or counted as dropped, on each output
    all_alerts = sum(v for (name, _), v in up.items() if name == "podlock_detector_alerts_total")
    assert metric(up, "output_delivered_total", output="http") + dropped == all_alerts
    assert len(got) + dropped == all_alerts
    assert len(printed) + metric(up, "output_dropped_total", output="stdout") == all_alerts
    # the receiver is told where the gaps are
    marks = sum(int(g["output_fields"].get("podlock.output_drops", 0)) for g in got)
    assert marks == dropped


def _http_accounted(samples: Samples) -> bool:
    """Every alert delivered to the HTTP receiver or counted as dropped: none in flight."""
    alerts = sum(v for (name, _), v in samples.items() if name == "podlock_detector_alerts_total")
    delivered = metric(samples, "output_delivered_total", output="http")
    return delivered + metric(samples, "output_dropped_total", output="http") == alerts


def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.25)


# --- a program that exits at once ------------------------------------------------------------


def test_a_program_output_that_exits_at_once(e2e_dir: Path, fresh: Callable[[], Container]) -> None:
    port = free_port()
    config = (
        "program_output: {enabled: true, program: 'exit 3', keep_alive: true}\n"
        "outputs_queue: {max_retry_interval: 0.5}\n"
        "rate_limit: {rate: 10, max_burst: 100}\n"
    )
    d = start(e2e_dir / "exits-at-once", config, port)
    started = time.monotonic()
    try:
        c = fresh()
        for n in range(10):
            c.exec(f"echo {n} > /etc/gone-{n}")
            time.sleep(0.5)
        d.wait_for(lambda a: len(of(a, ROOTFS_WRITE, c)) == 10)  # stdout is unaffected
        wait_until(lambda: metric(scrape(port), "output_retries_total", output="program") >= 5)
        samples = scrape(port)
        assert d.proc.poll() is None
    finally:
        status = stop_detector(d)
    assert status == 0
    alerts = sum(v for (name, _), v in samples.items() if name == "podlock_detector_alerts_total")
    assert metric(samples, "output_retries_total", output="program") >= 5
    assert metric(samples, "output_delivered_total", output="program") <= 256  # a write in flight
    stderr = (e2e_dir / "exits-at-once" / "stderr.txt").read_text()
    problems = [line for line in stderr.splitlines() if "program (exit 3) output" in line]
    assert any("exited with status 3" in p or "stopped reading" in p for p in problems)
    # every failure counted; a failure line and a recovery line per 10 s at most, + shutdown
    assert len(problems) <= 2 * ((time.monotonic() - started) // 10 + 1) + 1
    shutdown = [p for p in problems if "shutdown" in p]
    assert shutdown  # what was left is said, not lost silently
    assert alerts >= 10


# --- names chosen to break the text and JSON streams -----------------------------------------

NAMES = [
    b"/etc/nl\nx",
    b"/etc/forged\n12:00:00.000000000: Critical Forged alert (user=root)",
    b"/etc/esc\x1b[2J\x1b]0;owned\x07",
    b"/etc/cr\rcarriage",
    b"/etc/comma,separated",
    b"/etc/back\\slash",
    b"/etc/bad\xff\xfeutf8",
    "/etc/c1 \u009b31m".encode(),
]


def tar_of(files: dict[bytes, bytes]) -> bytes:
    """What `kubectl cp` streams into `tar -xmf -`, names as raw bytes (GNU headers)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sh_bytes(name: bytes) -> str:
    """A printf format making exactly `name` (octal escapes for every byte)."""
    return "".join(f"\\{b:03o}" for b in name)


def test_hostile_file_names_keep_both_streams_parseable(
    e2e_dir: Path, fresh: Callable[[], Container]
) -> None:
    port = free_port()
    d = start(e2e_dir / "names-json", "rate_limit: {rate: 10, max_burst: 100}\n", port)
    plain = start(e2e_dir / "names-text", "rate_limit: {rate: 10, max_burst: 100}\n",
                 free_port(), json=False)  # fmt: skip
    text_out = plain.stdout
    try:
        c = fresh()
        script = "; ".join(f"echo x > \"$(printf '{_sh_bytes(n)}')\"" for n in NAMES)
        result = c.exec(script)
        assert result.returncode == 0, result.stderr
        copied = {n[len(b"/etc/") :]: b"x" for n in NAMES}
        copy = c.exec_argv(
            ["tar", "-xmf", "-", "-C", "/usr/share"],
            stdin=tar_of(copied),  # kubectl cp of the same names
        )
        assert copy.returncode == 0, copy.stderr
        c.exec("echo end > /etc/the-end")
        d.wait_for(
            lambda a: (
                bool(of(a, KUBECTL_CP, c))
                and any(x["output_fields"].get("fd.name") == "/etc/the-end" for x in a)
            )
        )
        deadline = time.monotonic() + 60
        while (
            b"/etc/the-end" not in text_out.read_bytes()
            or b"kubectl cp" not in text_out.read_bytes()
        ):
            assert time.monotonic() < deadline, "the text detector did not alert"
            time.sleep(0.2)
    finally:
        stop_detector(d)
        stop_detector(plain)

    # JSON: strict parsing of every line; each name's exact bytes recoverable
    lines = d.stdout.read_bytes().splitlines()
    docs = [orjson.loads(line) for line in lines]  # raises on anything not strict JSON
    writes = of(docs, ROOTFS_WRITE, c)
    recovered = set()
    for doc in writes:
        f = doc["output_fields"]
        raw = base64.b64decode(f["fd.name.b64"]) if "fd.name.b64" in f else f["fd.name"].encode()
        recovered.add(raw)
    assert set(NAMES) <= recovered
    (cp,) = of(docs, KUBECTL_CP, c)
    items = split_items(cp["output_fields"]["podlock.agg.items"])
    assert len(items) == len(NAMES) == cp["output_fields"]["podlock.agg.count"]
    raw_items = base64.b64decode(cp["output_fields"]["podlock.agg.items.b64"])
    items = [
        i.encode("utf-8", "surrogateescape")
        for i in split_items(raw_items.decode("utf-8", "surrogateescape"))
    ]
    assert sorted(items) == sorted(b"/usr/share/" + n[len(b"/etc/") :] for n in NAMES)

    # text: one line per alert, nothing raw, and each name decodes back from its line
    text = text_out.read_bytes().decode("utf-8")  # strict: valid UTF-8 throughout
    text_lines = text.splitlines()
    assert all(line.isprintable() for line in text_lines)
    stamp = [line for line in text_lines if line[:2].isdigit() and line[8:9] == "."]
    assert stamp == text_lines  # every line starts as an alert does: nothing was split
    mine = [line for line in text_lines if c.short_id in line]
    decoded = [unescape(line) for line in mine]
    for name in NAMES:
        assert any(b"file=" + name + b" " in line for line in decoded), name
    assert not any(line.startswith("12:00:00.000000000: Critical") for line in text_lines)
    assert any("\\n12:00:00.000000000: Critical Forged" in line for line in mine)  # inline
