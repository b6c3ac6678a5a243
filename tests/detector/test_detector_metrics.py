"""The metrics endpoint, scraped over real HTTP from a MetricsServer on 127.0.0.1, reading
real outputs (a file and a program that never reads) and the event loop's counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_samples import scrape

from detector.alerts import Alert, Priority
from detector.errors import ConfigError
from detector.metrics import EventCounts, MetricsServer, Sources, parse_bind
from detector.outputs import Output, Outputs
from detector.outputs.base import json_line
from detector.outputs.delivery import Limits
from detector.outputs.file import FileWriter
from detector.outputs.program import ProgramWriter


def alert(n: int, rule: str = "Drift", priority: Priority = Priority.ERROR) -> Alert:
    fields = {"n": n, "pad": "x" * 1000}
    return Alert(1_790_000_000_000_000_000 + n, rule, priority, f"n={n}", fields, (), "node")


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_scrape_reads_every_count_live(tmp_path: Path) -> None:
    outputs = Outputs(
        [Output("file", FileWriter(str(tmp_path / "a.log"), True), json_line, Limits()),
         Output("program", ProgramWriter("sleep 30", True), json_line,
                Limits(capacity=100, max_bytes=65536))]
    )  # fmt: skip
    counts = EventCounts(evaluation_ns=3_000_000, evaluations=9)
    counts.by_type.update(open=7, execve=2)
    tables = {"procs": 40, "containers": 3, "kernel": 5, "user": 1}
    server = MetricsServer(
        "127.0.0.1:0",
        Sources(
            events=lambda: counts,
            outputs=lambda: outputs,
            kernel_drops=lambda: tables["kernel"],
            user_drops=lambda: tables["user"],
            tracked_processes=lambda: tables["procs"],
            tracked_containers=lambda: tables["containers"],
        ),
    )
    try:
        # The program never reads: its sender takes the first batch (what its queue held)
        # into the pipe, then blocks for good writing the second; the third fills its queue.
        program = outputs.stats()["program"]
        for start in (0, 200, 400):
            outputs.emit_many([alert(n) for n in range(start, start + 200)])
            if start < 400:
                wait_for(lambda: program.queued == 0)  # taken by its sender
        outputs.emit(alert(600, "Shell", Priority.NOTICE))
        got = scrape(server.port)
        counts.by_type["unlink"] += 1
        tables["procs"] = 41
        wait_for(lambda: outputs.stats()["file"].delivered == 601)
        again = scrape(server.port)
    finally:
        server.close()
        outputs.close(drain_s=0.2)

    p = "podlock_detector_"
    assert got[p + "events_total", (("type", "open"),)] == 7
    assert got[p + "events_total", (("type", "execve"),)] == 2
    assert got[p + "rule_evaluation_seconds_count", ()] == 9
    assert got[p + "rule_evaluation_seconds_sum", ()] == pytest.approx(0.003)
    assert got[p + "lost_records_total", (("side", "kernel"),)] == 5
    assert got[p + "lost_records_total", (("side", "user"),)] == 1
    assert got[p + "alerts_total", (("priority", "Error"), ("rule", "Drift"))] == 600
    assert got[p + "alerts_total", (("priority", "Notice"), ("rule", "Shell"))] == 1
    assert got[p + "tracked_processes", ()] == 40
    assert got[p + "tracked_containers", ()] == 3
    program = (("output", "program"),)
    queued = got[p + "output_queue_depth", program]
    assert 0 < queued <= 100 and 0 < got[p + "output_queue_bytes", program] <= 65536
    assert got[p + "output_dropped_total", program] >= 400
    assert got[p + "output_retries_total", (("output", "file"),)] == 0
    assert again[p + "events_total", (("type", "unlink"),)] == 1
    assert got[p + "events_total", (("type", "mkdir"),)] == 0  # every type, from the start
    assert again[p + "tracked_processes", ()] == 41
    assert again[p + "output_delivered_total", (("output", "file"),)] == 601


@pytest.mark.parametrize("text", ["8766", "host:", ":8766", "h:99999", "h:x"])
def test_a_bad_bind_is_named(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-bind: expected HOST:PORT"):
        parse_bind(text)


def test_bind_forms() -> None:
    assert parse_bind("0.0.0.0:8766") == ("0.0.0.0", 8766)
    assert parse_bind("[::1]:9") == ("::1", 9)


def test_a_port_in_use_is_one_sentence() -> None:
    outputs = Outputs([])
    sources = Sources(lambda: EventCounts(), lambda: outputs, int, int, int, int)
    first = MetricsServer("127.0.0.1:0", sources)
    try:
        with pytest.raises(ConfigError, match=r"--metrics-bind: cannot listen on 127.0.0.1:\d+"):
            MetricsServer(f"127.0.0.1:{first.port}", sources)
    finally:
        first.close()
