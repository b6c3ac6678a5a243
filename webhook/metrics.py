"""Prometheus metrics, summed over every gunicorn worker.

Every series podlock reports has a label set known in advance (label values never come unchecked
from a request), so each one is a fixed cell in a table of float64 counters. `podlock serve`
builds the table in the master, in anonymous shared memory, before any worker is forked; every
worker then adds to its own row (its *slot*) and a scrape, answered by whichever worker gets it,
adds up all rows. A worker that gunicorn replaces hands its slot, counts included, to its
successor, so totals never drop. Counting is a lock and a few array writes per request, with no
files and no writable directory (podlock runs with a read-only root filesystem).

Exposed series:
- `podlock_admission_requests_total{endpoint,mode,operation,result,rule}`: one increment per
  rule that fired on a request (`rule="none"` when none did), so a request that breaks two rules
  counts in two series. `result` is `allowed`, `denied`, `patched` (allowed with a JSON patch)
  or `error` (the request was refused with 400/413, `operation="unknown"`). `operation` is
  CREATE/UPDATE/DELETE/CONNECT, anything else is `other`.
- `podlock_admission_duration_seconds{endpoint,mode}`: histogram of the time from reading the
  body to the answer; its `_count` is the exact number of admission requests answered.
- `podlock_tls_certificate_expiry_seconds`: seconds until notAfter of the served certificate
  (negative once expired), as seen by the worker that answers the scrape.
- `podlock_tls_reloads_total{result}`: certificate reloads that succeeded or failed (a failure
  keeps the previous certificate).
A series appears once it has counted something.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from webhook.config import MODES
from webhook.policy import EXEC_INTO_POD, LATE_EXEMPTION, RULES
from webhook.review import Endpoint

Result = Literal["allowed", "denied", "patched", "error"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_RULE = "none"
UNKNOWN_OPERATION = "unknown"
_OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
# Admission answers take well under a millisecond to a few; the API server gives up at 5 s
# (our deploy's timeoutSeconds), so that is the last bucket that matters.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
RELOAD_RESULTS = ("success", "failure")
MAX_SLOTS = 256  # rows for live workers; untouched rows of anonymous memory cost no RAM

RequestKey = tuple[str, str, str, str, str]  # endpoint, mode, operation, result, rule


class Layout:
    """Which cell of a row holds which series (the same in every process: built from constants)."""

    def __init__(self) -> None:
        requests = itertools.product(
            get_args(Endpoint),
            MODES,
            (*_OPERATIONS, "other", UNKNOWN_OPERATION),
            get_args(Result),
            (NO_RULE, *RULES, EXEC_INTO_POD, LATE_EXEMPTION),
        )
        self.requests: dict[RequestKey, int] = {key: i for i, key in enumerate(requests)}
        # Per endpoint and mode: a cell per bucket (not cumulative), one for +Inf, one for the sum.
        self.histogram_width = len(LATENCY_BUCKETS) + 2
        first = len(self.requests)
        self.durations: dict[tuple[str, str], int] = {
            key: first + i * self.histogram_width
            for i, key in enumerate(itertools.product(get_args(Endpoint), MODES))
        }
        first += len(self.durations) * self.histogram_width
        self.reloads = {result: first + i for i, result in enumerate(RELOAD_RESULTS)}
        self.width = first + len(self.reloads)


class Metrics:
    """The webhook's metrics; one instance per app.

    `slots` > 1 is for forking servers: the table lives in shared memory, and before each fork
    the master calls `use_slot` with a slot no live worker uses, which the new worker inherits
    (see `serve.WorkerSlots`).
    """

    def __init__(
        self, cert_seconds_left: Callable[[], float] | None = None, *, slots: int = 1
    ) -> None:
        self.layout = Layout()
        self.slots = slots
        # A flag per slot ("given to a process", so worth adding up), then the rows; the mapping
        # is MAP_SHARED, so forked workers share it.
        self._memory = mmap.mmap(-1, 8 * (slots + slots * self.layout.width))
        cells = memoryview(self._memory).cast("d")
        self._used = cells[:slots]
        self._rows = [
            cells[slots + i * self.layout.width : slots + (i + 1) * self.layout.width]
            for i in range(slots)
        ]
        self._lock = threading.Lock()  # this process's threads share its row
        self.use_slot(0)
        self._cert_seconds_left = cert_seconds_left
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def use_slot(self, slot: int) -> None:
        self._used[slot] = 1.0
        self._row = self._rows[slot]

    def observe(
        self,
        endpoint: str,
        mode: str,
        operation: str,
        result: Result,
        rules: Sequence[str],
        seconds: float,
    ) -> None:
        op = operation if operation in _OPERATIONS else "other"
        if result == "error":
            op = UNKNOWN_OPERATION
        layout, row = self.layout, self._row
        histogram = layout.durations.get((endpoint, mode))
        with self._lock:
            for rule in rules or (NO_RULE,):
                cell = layout.requests.get((endpoint, mode, op, result, rule))
                if cell is not None:
                    row[cell] += 1
            if histogram is not None:
                row[histogram + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                row[histogram + layout.histogram_width - 1] += seconds

    def tls_reloaded(self, result: str) -> None:
        cell = self.layout.reloads.get(result)
        if cell is not None:
            with self._lock:
                self._row[cell] += 1

    def totals(self) -> list[float]:
        """Every cell summed over the slots that have counted."""
        rows = [self._rows[i].tolist() for i in range(self.slots) if self._used[i]]
        return [sum(column) for column in zip(*rows, strict=True)]

    def cert_seconds_left(self) -> float | None:
        return self._cert_seconds_left() if self._cert_seconds_left else None

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        layout, totals = self._metrics.layout, self._metrics.totals()
        requests = CounterMetricFamily(
            "podlock_admission_requests",
            "Admission requests by endpoint, mode, operation, result and each rule that fired.",
            labels=["endpoint", "mode", "operation", "result", "rule"],
        )
        for key, cell in layout.requests.items():
            if totals[cell]:
                requests.add_metric(key, totals[cell])
        yield requests

        durations = HistogramMetricFamily(
            "podlock_admission_duration_seconds",
            "Time to answer an admission request, from reading the body to the response.",
            labels=["endpoint", "mode"],
        )
        for labels, first in layout.durations.items():
            counts = totals[first : first + len(LATENCY_BUCKETS) + 1]
            if any(counts):
                cumulative = list(itertools.accumulate(counts))
                bounds = [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
                durations.add_metric(
                    labels,
                    list(zip(bounds, cumulative, strict=True)),
                    sum_value=totals[first + layout.histogram_width - 1],
                )
        yield durations

        reloads = CounterMetricFamily(
            "podlock_tls_reloads",
            "TLS certificate reloads after the files changed on disk, by result.",
            labels=["result"],
        )
        for result, cell in layout.reloads.items():
            if totals[cell]:
                reloads.add_metric([result], totals[cell])
        yield reloads

        seconds_left = self._metrics.cert_seconds_left()
        if seconds_left is not None:
            expiry = GaugeMetricFamily(
                "podlock_tls_certificate_expiry_seconds",
                "Seconds until the served TLS certificate's notAfter (negative when expired).",
            )
            expiry.add_metric([], seconds_left)
            yield expiry
