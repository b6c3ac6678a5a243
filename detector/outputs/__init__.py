"""Where alerts go: one interface (`base.Sink`), one module per sink, and `Outputs`
fanning each alert out to the enabled ones. A failing sink never stops the others."""

from __future__ import annotations

from collections.abc import Sequence

from detector.alerts import Alert
from detector.config import DetectorSettings
from detector.outputs.base import Sink, json_line, text_line
from detector.outputs.file import FileSink
from detector.outputs.http import HttpSink
from detector.outputs.program import ProgramSink
from detector.outputs.stdout import StdoutSink

__all__ = ["Outputs", "Sink", "build_outputs"]


class Outputs:
    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = tuple(sinks)

    def emit(self, alert: Alert) -> None:
        for sink in self.sinks:
            sink.emit(alert)

    def emit_many(self, alerts: list[Alert]) -> None:
        """A batch of alerts (what one poll produced): one write per sink, not per alert."""
        if alerts:
            for sink in self.sinks:
                sink.emit_many(alerts)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def failures(self) -> dict[str, int]:
        return {sink.name: sink.failures for sink in self.sinks}


def build_outputs(settings: DetectorSettings, json_stdout: bool) -> Outputs:
    """The sinks the settings enable; `json_stdout` (--json) or `json_output` switch
    stdout, file and program to JSON lines. HTTP always posts JSON. Raises
    ConfigError if the output file cannot be opened."""
    fmt = json_line if (json_stdout or settings.json_output) else text_line
    sinks: list[Sink] = []
    if settings.stdout_output.enabled:
        sinks.append(StdoutSink(fmt))
    if settings.file_output.enabled:
        out = settings.file_output
        sinks.append(FileSink(out.filename, out.keep_alive, fmt))
    if settings.program_output.enabled:
        prog = settings.program_output
        sinks.append(ProgramSink(prog.program, prog.keep_alive, fmt))
    if settings.http_output.enabled:
        sinks.append(HttpSink(settings.http_output.url, settings.http_output.timeout_s))
    return Outputs(sinks)
