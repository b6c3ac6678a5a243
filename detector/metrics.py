"""Prometheus metrics of the detector, served on `--metrics-bind HOST:PORT` (off by default).

Nothing is counted twice: the event loop keeps plain counts (`EventCounts`), the outputs
keep theirs (`Outputs.alerts`, each output's `Stats`), and a scrape reads them all through
`Sources` at that moment, from the server's own thread. Label values come from the rules
files and the enabled outputs, never from events, so the series are bounded.

Exposed series:
- `podlock_detector_events_total{type}`: events evaluated, by type (open, rename, unlink,
  mkdir, link, symlink, chmod, exec, exit).
- `podlock_detector_alerts_total{rule,priority}`: alerts emitted.
- `podlock_detector_lost_records_total{side}`: records lost before evaluation: `kernel`
  (the ring buffer was full) or `user` (a record that could not be decoded).
- `podlock_detector_rule_evaluation_seconds` (summary: `_sum`, `_count`): time in the rule
  engine per event, over a sample of one event in 64.
- `podlock_detector_output_queue_depth{output}`, `podlock_detector_output_queue_bytes{output}`:
  alerts waiting in each output's queue, and their bytes.
- `podlock_detector_output_delivered_total{output}`, `..._dropped_total{output}`,
  `..._retries_total{output}`: per output, alerts delivered, alerts dropped (queue full,
  refused, or still queued at shutdown), and failed attempts retried.
- `podlock_detector_tracked_processes`, `podlock_detector_tracked_containers`: the size of
  the agent's process and container tables.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from detector.errors import ConfigError
from detector.fields import EVT_TYPES
from detector.outputs import Outputs

PREFIX = "podlock_detector"


def _every_type() -> dict[str, int]:
    return dict.fromkeys(EVT_TYPES, 0)


@dataclass
class EventCounts:
    """What the event loop counts per event (plain ints: a scrape only reads them)."""

    by_type: dict[str, int] = field(default_factory=_every_type)
    """Events evaluated by type; every type is a key from the start (a dict subscript
    costs ~50 ns, a Counter's ~15 times that)."""
    evaluation_ns: int = 0
    """Time in the rule engine, summed over the sampled events."""
    evaluations: int = 0
    """Events timed (one in 64: reading the clock costs more than a cheap rule)."""


@dataclass(frozen=True)
class Sources:
    """Where a scrape reads each count (callables: a reload may replace what they read)."""

    events: Callable[[], EventCounts]
    outputs: Callable[[], Outputs]
    kernel_drops: Callable[[], int]
    user_drops: Callable[[], int]
    tracked_processes: Callable[[], int]
    tracked_containers: Callable[[], int]


class DetectorCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        src = self.sources
        counts = src.events()
        events = CounterMetricFamily(
            f"{PREFIX}_events", "Events evaluated, by type.", labels=["type"]
        )
        for kind, n in sorted(dict(counts.by_type).items()):
            events.add_metric([kind], n)
        yield events
        evaluation = SummaryMetricFamily(
            f"{PREFIX}_rule_evaluation_seconds",
            "Time in the rule engine per event (one event in 64 is timed).",
        )
        evaluation.add_metric([], counts.evaluations, counts.evaluation_ns / 1e9)
        yield evaluation
        lost = CounterMetricFamily(
            f"{PREFIX}_lost_records",
            "Records lost before evaluation: kernel (ring buffer full) or user (undecodable).",
            labels=["side"],
        )
        lost.add_metric(["kernel"], src.kernel_drops())
        lost.add_metric(["user"], src.user_drops())
        yield lost

        outputs = src.outputs()
        alerts = CounterMetricFamily(
            f"{PREFIX}_alerts", "Alerts emitted, by rule and priority.", labels=["rule", "priority"]
        )
        for (rule, priority), n in sorted(dict(outputs.alerts).items()):
            alerts.add_metric([rule, priority], n)
        yield alerts
        stats = outputs.stats()
        per_output: list[
            tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str, Callable[..., int]]
        ] = [
            (GaugeMetricFamily, "output_queue_depth", "Alerts waiting in the output's queue.",
             lambda s: s.queued),
            (GaugeMetricFamily, "output_queue_bytes", "Bytes of alerts waiting in the queue.",
             lambda s: s.queued_bytes),
            (CounterMetricFamily, "output_delivered", "Alerts the output delivered.",
             lambda s: s.delivered),
            (CounterMetricFamily, "output_dropped",
             "Alerts the output dropped (queue full, refused, left at shutdown).",
             lambda s: s.dropped),
            (CounterMetricFamily, "output_retries", "Failed delivery attempts, retried.",
             lambda s: s.retries),
        ]  # fmt: skip
        for family_type, name, doc, read in per_output:
            family = family_type(f"{PREFIX}_{name}", doc, labels=["output"])
            for output, st in stats.items():
                family.add_metric([output], read(st))
            yield family
        yield GaugeMetricFamily(
            f"{PREFIX}_tracked_processes", "Processes in the agent's table.",
            value=src.tracked_processes(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            f"{PREFIX}_tracked_containers", "Containers in the agent's table.",
            value=src.tracked_containers(),
        )  # fmt: skip


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6); raises ConfigError naming --metrics-bind."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"--metrics-bind: expected HOST:PORT (e.g. 0.0.0.0:8766), not {text!r}")
    return host, int(port)


class MetricsServer:
    """The /metrics endpoint in a daemon thread (prometheus_client's WSGI server)."""

    def __init__(self, bind: str, sources: Sources) -> None:
        host, port = parse_bind(bind)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DetectorCollector(sources))
        try:
            server, thread = start_http_server(port, host, registry=self.registry)
        except OSError as err:
            raise ConfigError(f"--metrics-bind: cannot listen on {bind}: {err.strerror}") from None
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port = int(server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
