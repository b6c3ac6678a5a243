"""Outputs with the real thing: files, shell programs, HTTP servers on 127.0.0.1.

Every output has its own queue and sender thread: these tests check what reaches each
sink (in order, once), what is counted when it cannot, and that the caller never waits."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import orjson
import pytest
from alert_samples import numbered_alert as alert

from detector.alerts import Alert
from detector.config import (
    FileOutput,
    HttpOutput,
    ProgramOutput,
    StdoutOutput,
    load_detector_settings,
)
from detector.errors import ConfigError
from detector.outputs import Output, Outputs, build_outputs
from detector.outputs import delivery as delivery_module
from detector.outputs.base import Formatter, Retry, Writer, json_line, text_line
from detector.outputs.delivery import Limits
from detector.outputs.file import FileWriter
from detector.outputs.http import HttpWriter
from detector.outputs.program import ProgramWriter
from detector.outputs.stdout import StdoutWriter


def one(writer: Writer, fmt: Formatter = json_line, limits: Limits | None = None) -> Outputs:
    return Outputs([Output("out", writer, fmt, limits or Limits())])


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def numbers(lines: list[str]) -> list[int]:
    return [int(json.loads(x)["output_fields"]["fd.name"].rsplit("/", 1)[1]) for x in lines]


# --- stdout and file ------------------------------------------------------------------------


def test_stdout_text_and_json() -> None:
    text, js = io.BytesIO(), io.BytesIO()
    out = Outputs(
        [Output("text", StdoutWriter(text), text_line, Limits()),
         Output("json", StdoutWriter(js), json_line, Limits())]
    )  # fmt: skip
    out.emit(alert(1))
    out.close()
    assert text.getvalue().decode().endswith(": Error write n=1\n")
    assert json.loads(js.getvalue())["output_fields"]["fd.name"] == "/etc/1"
    assert out.alerts == {("Write to container root filesystem in exec session", "Error"): 1}


def test_stdout_closed_stream_is_counted_not_raised() -> None:
    buf = io.BytesIO()
    buf.close()
    out = one(StdoutWriter(buf))
    out.emit_many([alert(1), alert(2)])
    out.close()
    assert out.stats()["out"].dropped == 2


@pytest.mark.parametrize("keep_alive", [True, False])
def test_file_appends_one_line_per_alert_in_order(tmp_path: Path, keep_alive: bool) -> None:
    path = tmp_path / "alerts.log"
    path.write_text("earlier\n")
    out = one(FileWriter(str(path), keep_alive))
    for n in range(3):
        out.emit(alert(n))
    out.emit_many([alert(n) for n in range(3, 300)])
    wait_for(lambda: len(path.read_text().splitlines()) == 301)  # written before close
    out.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier"
    assert numbers(lines[1:]) == list(range(300))
    assert out.stats()["out"].delivered == 300


def test_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"file_output.filename: cannot open .*/nodir/x"):
        FileWriter(str(tmp_path / "nodir" / "x"), True)


# --- program --------------------------------------------------------------------------------


def test_program_keep_alive_is_one_process(tmp_path: Path) -> None:
    out_file = tmp_path / "out"
    out = one(ProgramWriter(f"echo started >> {out_file}; cat >> {out_file}", True), text_line)
    for n in range(3):
        out.emit(alert(n))
    out.close()
    lines = out_file.read_text().splitlines()
    assert lines[0] == "started"
    assert [line.rsplit(" ", 1)[-1] for line in lines[1:]] == ["n=0", "n=1", "n=2"]


def test_program_per_alert_runs_once_each(tmp_path: Path) -> None:
    out_file = tmp_path / "out"
    out = one(ProgramWriter(f"echo run >> {out_file}; cat >> {out_file}", False))
    out.emit(alert(1))
    out.emit(alert(2))
    out.close()
    assert out_file.read_text().count("run\n") == 2
    assert out.stats()["out"].delivered == 2 and out.stats()["out"].dropped == 0


def test_a_program_that_reads_one_line_and_exits_gets_every_alert_once_in_order(
    tmp_path: Path,
) -> None:
    """Restarted after each exit; the lines it left unread in its pipe go to the next one."""
    out_file = tmp_path / "out"
    out = one(ProgramWriter(f"read -r line && printf '%s\\n' \"$line\" >> {out_file}", True))
    out.emit_many([alert(n) for n in range(6)])
    wait_for(lambda: out_file.exists() and len(out_file.read_text().splitlines()) == 6)
    out.close()
    assert numbers(out_file.read_text().splitlines()) == list(range(6))
    stats = out.stats()["out"]
    assert (stats.delivered, stats.dropped) == (6, 0)
    assert stats.retries >= 5  # each exit noticed


def test_a_program_that_exits_at_once_loses_nothing_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = one(ProgramWriter("true", True))
    started = time.monotonic()
    for n in range(50):
        out.emit(alert(n))
    # the caller never waits for the program (its retries back off 0.1, 0.2, 0.4 … 3.2 s)
    assert time.monotonic() - started < 5.0
    wait_for(lambda: out.stats()["out"].retries >= 2)
    out.close(drain_s=1.0)
    stats = out.stats()["out"]
    assert (stats.delivered, stats.dropped) == (0, 50)
    assert stats.retries >= 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("exited with status 0" in w or "stopped reading" in w for w in warnings)
    assert any("50 alerts" in w or "dropped" in w for w in warnings)
    assert len(warnings) <= 4  # a line per 10 s at most, not one per attempt


def test_a_program_that_never_reads_fills_only_its_bounded_queue() -> None:
    limits = Limits(capacity=1000, max_bytes=200_000)
    out = one(ProgramWriter("sleep 60", True), limits=limits)
    started = time.monotonic()
    out.emit_many([alert(n) for n in range(5000)])
    assert time.monotonic() - started < 10.0  # a write into its full pipe would wait 60 s
    stats = out.stats()["out"]
    wait_for(lambda: stats.queued > 0 and stats.queued_bytes <= limits.max_bytes)
    assert stats.queued <= limits.capacity and stats.queued_bytes <= limits.max_bytes
    assert stats.dropped >= 5000 - limits.capacity - 1000  # the pipe holds some
    # the next alert that fits says how many were dropped before it
    out.close(drain_s=0.5)
    assert stats.dropped + stats.delivered == 5000


# --- HTTP -----------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as falcosidekick
    bodies: ClassVar[list[dict[str, object]]] = []
    statuses: ClassVar[list[int]] = []  # answered in turn; then 200

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = orjson.loads(self.rfile.read(length))
        assert self.headers["Content-Type"] == "application/json"
        handler = type(self)
        status = handler.statuses.pop(0) if handler.statuses else 200
        if status == 200:
            handler.bodies.append(body)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(port: int = 0) -> tuple[ThreadingHTTPServer, type[_Receiver]]:
    handler = type("Handler", (_Receiver,), {"bodies": [], "statuses": []})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture()
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    server, handler = serve()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", handler
    stop(server)


def http_writer(url: str, timeout_s: float) -> HttpWriter:
    return HttpWriter(HttpOutput(enabled=True, url=url, timeout_s=timeout_s))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fields(handler: type[_Receiver]) -> list[dict[str, object]]:
    return [b["output_fields"] for b in handler.bodies]  # type: ignore[misc]


def test_http_posts_falco_json_in_order(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    out = one(http_writer(url, 2.0))
    out.emit_many([alert(n) for n in range(20)])
    out.close()
    assert [f["fd.name"] for f in fields(handler)] == [f"/etc/{n}" for n in range(20)]
    assert handler.bodies[0]["source"] == "podlock"
    assert out.stats()["out"].delivered == 20


def test_http_5xx_is_retried_and_every_alert_arrives_once_in_order(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    handler.statuses[:] = [500, 503, 502, 429]
    out = one(http_writer(url, 2.0))
    out.emit_many([alert(n) for n in range(5)])
    wait_for(lambda: len(handler.bodies) == 5)
    out.close()
    assert [f["fd.name"] for f in fields(handler)] == [f"/etc/{n}" for n in range(5)]
    stats = out.stats()["out"]
    assert (stats.delivered, stats.dropped, stats.retries) == (5, 0, 4)


def test_http_4xx_drops_that_alert_and_the_next_one_says_so(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    handler.statuses[:] = [200, 400]
    out = one(http_writer(url, 2.0))
    out.emit_many([alert(n) for n in range(4)])
    out.close()
    got = fields(handler)
    assert [f["fd.name"] for f in got] == ["/etc/0", "/etc/2", "/etc/3"]
    assert got[1]["podlock.output_drops"] == 1 and "podlock.output_drops" not in got[2]
    assert out.stats()["out"].dropped == 1


def test_http_receiver_down_then_back_gets_the_queue_in_order() -> None:
    port = free_port()
    out = one(http_writer(f"http://127.0.0.1:{port}/", 1.0), limits=Limits(max_backoff_s=0.5))
    out.emit_many([alert(n) for n in range(30)])
    wait_for(lambda: out.stats()["out"].retries >= 2)  # refused connections, retried
    server, handler = serve(port)
    try:
        out.emit_many([alert(n) for n in range(30, 40)])
        wait_for(lambda: len(handler.bodies) == 40)
        out.close()
    finally:
        stop(server)
    assert [f["fd.name"] for f in fields(handler)] == [f"/etc/{n}" for n in range(40)]


def test_http_hung_receiver_overflow_is_counted_and_marked() -> None:
    """A receiver that accepts and never answers: the caller goes on, the queue is bounded,
    and the first alert after the gap carries its size."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    port = hung.getsockname()[1]
    try:
        out = one(http_writer(f"http://127.0.0.1:{port}/", 30.0), limits=Limits(capacity=10))
        started = time.monotonic()
        out.emit_many([alert(n) for n in range(25)])  # 1 in flight, 10 queued, 14 dropped
        out.emit(alert(25))
        assert time.monotonic() - started < 10.0  # a wait for the receiver would be 30 s
        stats = out.stats()["out"]
        assert stats.queued <= 10 and stats.dropped >= 14
        out.close(drain_s=0.2)
    finally:
        hung.close()
    assert stats.dropped + stats.delivered == 26


def test_overflow_marks_the_next_queued_alert() -> None:
    """Direct on the queue: drops counted, the first line after the gap carries the count."""
    gate = threading.Event()

    class Gated:
        label, batch = "gated", 1000
        written: ClassVar[list[bytes]] = []

        def write(self, lines: list[bytes]) -> None:
            gate.wait()
            self.written.extend(lines)

        def check(self) -> None: ...
        def abort(self) -> None: ...
        def close(self) -> int:
            return 0

    out = one(Gated(), limits=Limits(capacity=3))
    out.emit(alert(0))  # taken by the sender, which waits at the gate
    wait_for(lambda: out.stats()["out"].queued == 0)
    out.emit_many([alert(n) for n in range(1, 9)])  # 1-3 queued, 4-8 dropped
    stats = out.stats()["out"]
    assert (stats.queued, stats.dropped) == (3, 5)
    gate.set()
    wait_for(lambda: out.stats()["out"].queued == 0)
    out.emit(alert(9))
    out.close()
    docs = [orjson.loads(x)["output_fields"] for x in Gated.written]
    assert [d["fd.name"] for d in docs] == ["/etc/0", "/etc/1", "/etc/2", "/etc/3", "/etc/9"]
    assert docs[4]["podlock.output_drops"] == 5
    assert all("podlock.output_drops" not in d for d in docs[:4])


def test_failures_are_logged_at_a_bounded_rate_and_the_recovery_too(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery_module, "LOG_EVERY_S", 0.3)
    port = free_port()
    out = one(http_writer(f"http://127.0.0.1:{port}/", 1.0), limits=Limits(max_backoff_s=0.1))
    out.emit(alert(0))

    def failures() -> list[str]:
        return [m for m in messages() if "retrying" in m]

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if "http (" in r.getMessage()]

    # three lines logged, and more attempts than lines (a slow machine may space them out)
    wait_for(lambda: 3 <= len(failures()) < out.stats()["out"].retries)
    server, handler = serve(port)
    try:
        wait_for(lambda: len(handler.bodies) == 1)
        out.close()
    finally:
        stop(server)
    failed, retries = failures(), out.stats()["out"].retries
    assert 3 <= len(failed) < retries  # every failure counted, a line per interval
    assert "failures" in failed[1]  # later lines say how many since the last
    assert "delivering again" in messages()[-1]


# --- wiring ---------------------------------------------------------------------------------


def test_build_outputs_from_settings(tmp_path: Path, receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    base = load_detector_settings(None, [], environ={"NODE_NAME": "n"})
    settings = replace(
        base,
        stdout_output=StdoutOutput(enabled=False),
        file_output=FileOutput(enabled=True, filename=str(tmp_path / "a.log"), keep_alive=True),
        program_output=ProgramOutput(enabled=True, program=f"cat >> {tmp_path / 'p'}",
                                     keep_alive=True),
        http_output=HttpOutput(enabled=True, url=url),
    )  # fmt: skip
    outputs = build_outputs(settings, json_stdout=True)
    assert [o.name for o in outputs.outputs] == ["file", "program", "http"]
    outputs.emit(alert(7))
    outputs.close()
    assert json.loads((tmp_path / "a.log").read_text())["rule"].startswith("Write")
    assert json.loads((tmp_path / "p").read_text())["output"].endswith("write n=7")
    assert len(handler.bodies) == 1
    assert {k: (s.delivered, s.dropped) for k, s in outputs.stats().items()} == {
        "file": (1, 0), "program": (1, 0), "http": (1, 0)
    }  # fmt: skip
    default = build_outputs(base, json_stdout=False)
    assert [o.name for o in default.outputs] == ["stdout"]
    default.close()


def _not_utf8(n: int) -> Alert:
    """A path that is not UTF-8, as decode() keeps it: surrogate escapes (b"\\xff" -> \\udcff)."""
    path = b"/etc/ev\xffil".decode("utf-8", "surrogateescape")
    return alert(n)._replace(output=f"write {path}", output_fields={"fd.name": path})


def _batch() -> list[Alert]:
    # the odd alert sits between two ordinary ones: none of the three may be lost
    return [alert(0), _not_utf8(1), alert(2)]


def _check_lines(text: str) -> None:
    first, odd, last = text.splitlines()[-3:]
    assert first.endswith("write n=0") and last.endswith("write n=2")
    assert odd.endswith(r"write /etc/ev\xffil"), odd  # the byte shown, not dropped


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_path_that_is_not_utf8_is_written_escaped_by_the_file_output(
    tmp_path: Path, keep_alive: bool
) -> None:
    path = tmp_path / "alerts.log"
    out = one(FileWriter(str(path), keep_alive), text_line)
    out.emit_many(_batch())
    out.close()
    _check_lines(path.read_text())
    assert out.stats()["out"].dropped == 0


def test_a_path_that_is_not_utf8_is_written_escaped_by_the_program_output(
    tmp_path: Path,
) -> None:
    out_file = tmp_path / "out"
    out = one(ProgramWriter(f"cat >> {out_file}", True), text_line)
    out.emit_many(_batch())
    out.close()
    _check_lines(out_file.read_text())


def test_a_path_that_is_not_utf8_is_written_escaped_to_stdout() -> None:
    raw = io.BytesIO()
    out = one(StdoutWriter(raw), text_line)
    out.emit_many(_batch())
    out.close()
    _check_lines(raw.getvalue().decode())  # strict: valid UTF-8


def test_a_path_that_is_not_utf8_stays_valid_json() -> None:
    doc = orjson.loads(json_line(_not_utf8(1)))["output_fields"]
    assert doc["fd.name"] == "/etc/ev\\xffil"
    assert base64.b64decode(doc["fd.name.b64"]) == b"/etc/ev\xffil"


def test_shutdown_is_bounded_even_when_stdout_never_drains() -> None:
    """A stdout pipe that nobody reads: the write blocks for good, shutdown does not."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "wb")
    out = one(StdoutWriter(stream))
    try:
        out.emit_many([alert(n) for n in range(2000)])  # far more than a pipe holds
        started = time.monotonic()
        out.close(drain_s=0.5)
        assert time.monotonic() - started < 0.5 + 2.0 + 5.0  # drain, abort, a slow machine
        stats = out.stats()["out"]
        assert stats.dropped > 0 and stats.queued == 0
    finally:
        os.close(read_end)  # the blocked write fails now; its sender thread ends
        wait_for(lambda: not [t for t in threading.enumerate() if t.name == "podlock-out"])
        with contextlib.suppress(OSError):
            stream.close()


def test_a_batch_written_after_the_program_exited_is_sent_again(tmp_path: Path) -> None:
    """The program exits between two writes (no idle check in between): the second batch
    and whatever the first left unread come back to be sent to the next program."""
    # It waits on a gate before exiting, so the first write surely finds it alive; the test
    # then waits until it is a zombie (exited, not yet reaped), so the second surely does not.
    gate, pidfile = tmp_path / "gate", tmp_path / "pid"
    os.mkfifo(gate)
    writer = ProgramWriter(f"echo $$ > {pidfile}; cat {gate} >/dev/null; exit 0", True)
    writer.write([b"one"])
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    pid = int(pidfile.read_text())
    with open(gate, "wb"):
        pass  # the program's `cat` reads end of file
    wait_for(lambda: _process_state(pid) == "Z")
    with pytest.raises(Retry) as info:
        writer.write([b"two", b"three"])
    assert info.value.resend == [b"one", b"two", b"three"]
    writer.close()


def _process_state(pid: int) -> str:
    """The one-letter state in /proc/<pid>/stat (after the command name in brackets)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]
