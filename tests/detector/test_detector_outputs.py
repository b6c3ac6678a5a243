"""Outputs with the real thing: files, a shell program, an HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from detector.alerts import Alert, Priority
from detector.config import (
    FileOutput,
    HttpOutput,
    ProgramOutput,
    StdoutOutput,
    load_detector_settings,
)
from detector.errors import ConfigError
from detector.outputs import build_outputs
from detector.outputs.base import json_line, text_line
from detector.outputs.file import FileSink
from detector.outputs.http import HttpSink
from detector.outputs.program import ProgramSink
from detector.outputs.stdout import StdoutSink


def alert(n: int) -> Alert:
    return Alert(
        time_ns=1_790_000_000_000_000_000 + n,
        rule="Write to container root filesystem in exec session",
        priority=Priority.ERROR,
        output=f"write n={n}",
        output_fields={"fd.name": f"/etc/{n}", "podlock.drops": 0},
        tags=("maturity_stable",),
        hostname="node-1",
    )


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_stdout_text_and_json() -> None:
    buf = io.StringIO()
    sink = StdoutSink(text_line, buf)
    sink.emit(alert(1))
    sink2 = StdoutSink(json_line, buf)
    sink2.emit(alert(2))
    first, second = buf.getvalue().splitlines()
    assert first.endswith(": Error write n=1")
    assert json.loads(second)["output_fields"]["fd.name"] == "/etc/2"


def test_stdout_closed_stream_is_counted_not_raised() -> None:
    buf = io.StringIO()
    buf.close()
    sink = StdoutSink(text_line, buf)
    sink.emit(alert(1))
    sink.emit(alert(2))
    assert sink.failures == 2


@pytest.mark.parametrize("keep_alive", [True, False])
def test_file_appends_one_line_per_alert(tmp_path: Path, keep_alive: bool) -> None:
    path = tmp_path / "alerts.log"
    path.write_text("earlier\n")
    sink = FileSink(str(path), keep_alive, json_line)
    for n in range(3):
        sink.emit(alert(n))
        # line-buffered / closed per alert: readable at once
        assert len(path.read_text().splitlines()) == n + 2
    sink.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier"
    assert [json.loads(x)["output_fields"]["fd.name"] for x in lines[1:]] == [
        "/etc/0", "/etc/1", "/etc/2"
    ]  # fmt: skip


def test_file_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"file_output.filename: cannot open .*/nodir/x"):
        FileSink(str(tmp_path / "nodir" / "x"), True, text_line)


def test_program_keep_alive_is_one_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ProgramSink(f"echo started >> {out}; cat >> {out}", True, text_line)
    for n in range(3):
        sink.emit(alert(n))
    sink.close()
    lines = out.read_text().splitlines()
    assert lines[0] == "started"
    assert [line.rsplit(" ", 1)[-1] for line in lines[1:]] == ["n=0", "n=1", "n=2"]


def test_program_per_alert_runs_once_each(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ProgramSink(f"echo run >> {out}; cat >> {out}", False, json_line)
    sink.emit(alert(1))
    sink.emit(alert(2))
    sink.close()
    assert out.read_text().count("run\n") == 2
    assert sink.failures == 0


def test_program_that_exits_is_restarted_and_failure_counted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ProgramSink(f"head -n 1 >> {out}", True, text_line)
    sink.emit(alert(1))
    wait_for(lambda: out.exists() and out.read_text().count("\n") == 1)
    time.sleep(0.2)  # head has exited; the pipe is broken now
    for n in range(2, 6):
        sink.emit(alert(n))
    sink.close()
    assert out.read_text().count("\n") >= 2  # a restarted program got later alerts
    assert sink.failures >= 1  # the exit was noticed (and logged once)


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, object]]] = []
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        assert self.headers["Content-Type"] == "application/json"
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"bodies": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", handler
    server.shutdown()
    server.server_close()


def test_http_posts_falco_json(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    sink = HttpSink(url, timeout_s=2.0)
    for n in range(3):
        sink.emit(alert(n))
    sink.close()
    assert [b["output_fields"]["fd.name"] for b in handler.bodies] == [  # type: ignore[index]
        "/etc/0", "/etc/1", "/etc/2"
    ]  # fmt: skip
    assert handler.bodies[0]["source"] == "podlock"
    assert sink.failures == 0 and sink.sent == 3


def test_http_error_status_is_counted(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    handler.status = 500
    sink = HttpSink(url)
    sink.emit(alert(1))
    sink.close()
    assert sink.failures == 1


def test_http_dead_receiver_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = HttpSink(f"http://127.0.0.1:{port}/", timeout_s=0.5)
    for n in range(5):
        sink.emit(alert(n))
    sink.close()
    assert sink.failures == 5
    assert len([r for r in caplog.records if "http" in r.getMessage()]) == 1  # logged once


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
    assert [s.name for s in outputs.sinks] == ["file", "program", "http"]
    outputs.emit(alert(7))
    outputs.close()
    assert json.loads((tmp_path / "a.log").read_text())["rule"].startswith("Write")
    assert json.loads((tmp_path / "p").read_text())["output"].endswith("write n=7")
    assert len(handler.bodies) == 1
    assert outputs.failures() == {"file": 0, "program": 0, "http": 0}
    default = build_outputs(base, json_stdout=False)
    assert [s.name for s in default.sinks] == ["stdout"]


@pytest.mark.parametrize("keep_alive", [True, False])
def test_file_batch_is_written_in_order(tmp_path: Path, keep_alive: bool) -> None:
    path = tmp_path / "alerts.log"
    sink = FileSink(str(path), keep_alive, json_line)
    sink.emit_many([alert(n) for n in range(5)])
    # the batch is on disk when emit_many returns, before close
    names = [json.loads(x)["output_fields"]["fd.name"] for x in path.read_text().splitlines()]
    assert names == [f"/etc/{n}" for n in range(5)]
    sink.close()


def test_stdout_batch_and_closed_stream() -> None:
    buf = io.StringIO()
    StdoutSink(text_line, buf).emit_many([alert(1), alert(2)])
    assert [line.rsplit(" ", 1)[1] for line in buf.getvalue().splitlines()] == ["n=1", "n=2"]
    buf.close()
    sink = StdoutSink(text_line, buf)
    sink.emit_many([alert(1), alert(2)])
    assert sink.failures == 2


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
def test_a_path_that_is_not_utf8_is_written_escaped_by_the_file_sink(
    tmp_path: Path, keep_alive: bool
) -> None:
    path = tmp_path / "alerts.log"
    sink = FileSink(str(path), keep_alive, text_line)
    sink.emit_many(_batch())
    sink.close()
    _check_lines(path.read_text())
    assert sink.failures == 0


def test_a_path_that_is_not_utf8_is_written_escaped_by_the_program_sink(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ProgramSink(f"cat >> {out}", True, text_line)
    sink.emit_many(_batch())
    sink.close()
    _check_lines(out.read_text())
    assert sink.failures == 0


def test_a_path_that_is_not_utf8_is_written_escaped_to_stdout() -> None:
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="utf-8")  # strict, as a real stdout is
    sink = StdoutSink(text_line, stdout)
    sink.emit_many(_batch())
    _check_lines(raw.getvalue().decode())
    assert sink.failures == 0


def test_a_path_that_is_not_utf8_stays_valid_json() -> None:
    fields = orjson.loads(json_line(_not_utf8(1)))["output_fields"]
    assert fields["fd.name"] == "/etc/ev\\xffil"
    assert base64.b64decode(fields["fd.name.b64"]) == b"/etc/ev\xffil"
