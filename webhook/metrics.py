"""Prometheus metrics, summed over every gunicorn worker.

Counters and the histogram use prometheus_client: under `podlock serve` its multiprocess mode
(chosen when `PROMETHEUS_MULTIPROC_DIR` is set before prometheus_client is imported) keeps each
worker's values in a memory-mapped file in that directory, and a scrape, answered by whichever
worker gets it, adds up all the files — dead workers' counters included, so totals never drop
when gunicorn replaces a worker. Without the variable (tests, `create_app` on its own) values
live in the process.

Exposed series:
- `podlock_admission_requests_total{endpoint,mode,operation,result,rule}`: one increment per
  rule that fired on a request (`rule="none"` when none did), so a request that breaks two rules
  counts in two series. `result` is `allowed`, `denied`, `patched` (allowed with a JSON patch)
  or `error` (the request was refused with 400/413, `operation="unknown"`). `operation` is
  CREATE/UPDATE/DELETE/CONNECT, anything else is `other`: label values never come unchecked
  from a request, so a caller cannot blow up the number of series.
- `podlock_admission_duration_seconds{endpoint,mode}`: histogram of the time from reading the
  body to the answer; its `_count` is the exact number of admission requests answered.
- `podlock_tls_certificate_expiry_seconds`: seconds until notAfter of the served certificate
  (negative once expired), as seen by the worker that answers the scrape.
- `podlock_tls_reloads_total{result}`: certificate reloads that succeeded or failed (a failure
  keeps the previous certificate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

Result = Literal["allowed", "denied", "patched", "error"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_RULE = "none"
UNKNOWN_OPERATION = "unknown"
_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
# Admission answers take well under a millisecond to a few; the API server gives up at 5 s
# (our deploy's timeoutSeconds), so that is the last bucket that matters.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


def multiprocess_enabled() -> bool:
    """Whether prometheus_client was imported in multiprocess mode (decided at its import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _CertExpiry(Collector):
    def __init__(self, seconds_left: Callable[[], float]) -> None:
        self._seconds_left = seconds_left

    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily(
            "podlock_tls_certificate_expiry_seconds",
            "Seconds until the served TLS certificate's notAfter (negative when expired).",
        )
        g.add_metric([], self._seconds_left())
        yield g


class Metrics:
    """The webhook's metrics; one instance per app."""

    def __init__(self, cert_seconds_left: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        shared = multiprocess_enabled()
        # In multiprocess mode values go to the per-worker files; the registry only collects.
        target = None if shared else self.registry
        self._requests = Counter(
            "podlock_admission_requests",
            "Admission requests by endpoint, mode, operation, result and each rule that fired.",
            ["endpoint", "mode", "operation", "result", "rule"],
            registry=target,
        )
        self._duration = Histogram(
            "podlock_admission_duration_seconds",
            "Time to answer an admission request, from reading the body to the response.",
            ["endpoint", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=target,
        )
        self._reloads = Counter(
            "podlock_tls_reloads",
            "TLS certificate reloads after the files changed on disk, by result.",
            ["result"],
            registry=target,
        )
        # Label lookups cost more than the increment itself; the label sets are few (bounded
        # by the checks in observe()), so keep the children.
        self._request_children: dict[tuple[str, str, str, str, str], Counter] = {}
        self._duration_children: dict[tuple[str, str], Histogram] = {}
        if shared:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        if cert_seconds_left is not None:
            self.registry.register(_CertExpiry(cert_seconds_left))

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
        for rule in rules or (NO_RULE,):
            key = (endpoint, mode, op, result, rule)
            counter = self._request_children.get(key)
            if counter is None:
                counter = self._request_children[key] = self._requests.labels(*key)
            counter.inc()
        histogram = self._duration_children.get((endpoint, mode))
        if histogram is None:
            histogram = self._duration_children[(endpoint, mode)] = self._duration.labels(
                endpoint, mode
            )
        histogram.observe(seconds)

    def tls_reloaded(self, result: str) -> None:
        self._reloads.labels(result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
