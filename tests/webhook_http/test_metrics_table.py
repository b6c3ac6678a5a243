"""The shared metrics table (webhook/metrics.py): cells, buckets, and sums over forked workers."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import pytest
from prometheus_samples import Samples, samples

from webhook.metrics import LATENCY_BUCKETS, Layout, Metrics
from webhook.policy import EXEC_INTO_POD, LATE_EXEMPTION, RULES
from webhook.serve import WorkerSlots


def _samples(metrics: Metrics) -> Samples:
    return samples(metrics.render().decode())


def _requests(samples: Samples, endpoint: str, op: str, result: str, rule: str) -> float:
    labels = {"endpoint": endpoint, "mode": "enforce", "operation": op, "result": result}
    key = ("podlock_admission_requests_total", tuple(sorted((labels | {"rule": rule}).items())))
    return samples.get(key, 0.0)


def test_every_series_has_its_own_cell_and_every_rule_a_series() -> None:
    layout = Layout()
    cells = [*layout.requests.values(), *layout.reloads.values()]
    for first in layout.durations.values():
        cells += range(first, first + layout.histogram_width)
    assert sorted(cells) == list(range(layout.width))
    rules = {key[4] for key in layout.requests}
    assert rules == {"none", *RULES, EXEC_INTO_POD, LATE_EXEMPTION}


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    metrics = Metrics()
    for seconds in (0.0001, 0.00025, 0.0003, 0.002, 7.0):
        metrics.observe("mutate", "enforce", "CREATE", "patched", (), seconds)
    samples = _samples(metrics)
    labels = (("endpoint", "mutate"), ("mode", "enforce"))

    def bucket(le: str) -> float:
        key = tuple(sorted((*labels, ("le", le))))
        return samples[("podlock_admission_duration_seconds_bucket", key)]

    assert bucket("0.00025") == 2  # a bound is inclusive, as Prometheus defines `le`
    assert bucket("0.0005") == 3
    assert bucket("0.0025") == 4
    assert bucket(str(float(LATENCY_BUCKETS[-1]))) == 4
    assert bucket("+Inf") == 5
    assert samples[("podlock_admission_duration_seconds_count", labels)] == 5
    assert abs(samples[("podlock_admission_duration_seconds_sum", labels)] - 7.00265) < 1e-9


def test_threads_of_one_worker_lose_no_count() -> None:
    metrics = Metrics()

    def hammer() -> None:
        for _ in range(5000):
            metrics.observe("validate", "enforce", "CREATE", "allowed", (), 0.001)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _requests(_samples(metrics), "validate", "CREATE", "allowed", "none") == 20000


def test_a_scrape_adds_up_every_forked_worker() -> None:
    metrics = Metrics(slots=4)
    metrics.observe("mutate", "enforce", "CREATE", "patched", ("writable-root-filesystem",), 0.01)
    children = []
    for slot, count in ((1, 300), (2, 500)):
        pid = os.fork()
        if pid == 0:  # a worker: counts in its own slot of the shared table, then exits
            try:
                metrics.use_slot(slot)
                for _ in range(count):
                    metrics.observe("validate", "enforce", "UPDATE", "denied", ("root-user",), 0.01)
                metrics.tls_reloaded("failure")
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    samples = _samples(metrics)
    assert _requests(samples, "validate", "UPDATE", "denied", "root-user") == 800
    assert _requests(samples, "mutate", "CREATE", "patched", "writable-root-filesystem") == 1
    assert samples[("podlock_tls_reloads_total", (("result", "failure"),))] == 2
    # A series appears once it has counted something.
    assert _requests(samples, "validate", "CREATE", "allowed", "none") == 0
    assert not any(labels == (("result", "success"),) for _, labels in samples)


def test_unknown_label_values_are_not_counted_and_do_not_fail() -> None:
    metrics = Metrics()
    metrics.observe("mutate", "bogus", "CREATE", "allowed", ("no-such-rule",), 0.001)
    metrics.tls_reloaded("maybe")
    names = {name for name, _ in _samples(metrics)}
    assert not any(name.startswith("podlock_admission") for name in names)


def test_a_new_worker_takes_a_free_slot_and_a_dead_workers_slot_is_reused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(slots=2)
    hook = WorkerSlots(metrics).pre_fork
    arbiter = SimpleNamespace(WORKERS={})  # gunicorn's arbiter, as far as the hook reads it
    first, second, successor, extra = (SimpleNamespace() for _ in range(4))
    for pid, worker in ((1, first), (2, second)):
        hook(arbiter, worker)
        arbiter.WORKERS[pid] = worker
    assert (first.podlock_slot, second.podlock_slot) == (0, 1)
    del arbiter.WORKERS[1]  # the first worker died: its successor continues its counts
    hook(arbiter, successor)
    arbiter.WORKERS[3] = successor
    assert successor.podlock_slot == 0
    hook(arbiter, extra)  # none free: the worker still starts, and says what it costs
    assert extra.podlock_slot == 0
    assert "no free metrics slot" in caplog.text
