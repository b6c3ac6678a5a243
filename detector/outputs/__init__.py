"""Where alerts go: one writer per sink (`base.Writer`, one module each), each behind its
own bounded queue and sender thread (`delivery.Delivery`), and `Outputs` encoding each
alert once per format and handing the lines to every enabled output. The event loop never
waits for a sink: a slow or dead one fills its own queue and drops, counted, from there."""

from __future__ import annotations

import time
from collections.abc import Sequence

from detector.alerts import Alert
from detector.config import DetectorSettings
from detector.outputs.base import Formatter, Writer, json_line, mark_json, mark_text, text_line
from detector.outputs.delivery import Delivery, Limits, Stats
from detector.outputs.file import FileWriter
from detector.outputs.http import HttpWriter
from detector.outputs.program import ProgramWriter
from detector.outputs.stdout import StdoutWriter

__all__ = ["Output", "Outputs", "Stats", "build_outputs"]

DRAIN_S = 5.0  # at shutdown, how long the outputs get to deliver what is queued


class Output:
    """One enabled output: its name, its line format and its delivery."""

    def __init__(self, name: str, writer: Writer, fmt: Formatter, limits: Limits) -> None:
        self.name, self.fmt = name, fmt
        self.delivery = Delivery(name, writer, mark_json if fmt is json_line else mark_text, limits)

    @property
    def stats(self) -> Stats:
        return self.delivery.stats


class Outputs:
    def __init__(self, outputs: Sequence[Output]) -> None:
        self.outputs = tuple(outputs)
        # (rule, priority): alerts emitted; bounded by the rules loaded
        self.alerts: dict[tuple[str, str], int] = {}
        self._formats = tuple({o.fmt: None for o in self.outputs})

    def emit(self, alert: Alert) -> None:
        self.emit_many([alert])

    def emit_many(self, alerts: list[Alert]) -> None:
        """A batch of alerts (what one poll produced): encoded once per format, queued on
        every output. Returns at once whatever the receivers do."""
        if not alerts:
            return
        counts = self.alerts
        for a in alerts:
            key = (a.rule, a.priority._value_)
            counts[key] = counts.get(key, 0) + 1
        lines = {fmt: [fmt(a) for a in alerts] for fmt in self._formats}
        for out in self.outputs:
            out.delivery.put(lines[out.fmt])

    def close(self, drain_s: float = DRAIN_S) -> None:
        """Deliver what is queued, all outputs at once, for up to `drain_s`; the rest is
        counted and logged as dropped."""
        deadline = time.monotonic() + drain_s
        for out in self.outputs:
            out.delivery.close(deadline)
        for out in self.outputs:
            out.delivery.join(deadline)

    def stats(self) -> dict[str, Stats]:
        return {o.name: o.stats for o in self.outputs}


def build_outputs(settings: DetectorSettings, json_stdout: bool) -> Outputs:
    """The outputs the settings enable; `json_stdout` (--json) or `json_output` switch
    stdout, file and program to JSON lines. HTTP always posts JSON. Raises ConfigError
    if the output file cannot be opened."""
    fmt = json_line if (json_stdout or settings.json_output) else text_line
    q = settings.outputs_queue
    limits = Limits(q.capacity, q.max_bytes, q.max_retry_interval_s)
    made: list[tuple[str, Writer, Formatter]] = []
    if settings.stdout_output.enabled:
        made.append(("stdout", StdoutWriter(), fmt))
    if settings.file_output.enabled:
        out = settings.file_output
        made.append(("file", FileWriter(out.filename, out.keep_alive), fmt))
    if settings.program_output.enabled:
        prog = settings.program_output
        made.append(("program", ProgramWriter(prog.program, prog.keep_alive), fmt))
    if settings.http_output.enabled:
        made.append(("http", HttpWriter(settings.http_output), json_line))
    return Outputs([Output(name, writer, f, limits) for name, writer, f in made])
