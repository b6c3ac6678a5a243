"""The integration cluster, one per run of this package: tests anywhere under tests/cluster/ that
take the `cluster` fixture share it, and it stops after the last of them (so it does not load
the machine while the rest of the suite runs). A failed test's report ends with the
components' logs."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from k8s_cluster import Cluster, ClusterError

_running: list[Cluster] = []
_reported: list[str] = []  # the test whose report carries the logs' ends


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        # a failure, not a skip: a skipped cluster test would pass CI while proving nothing
        pytest.fail("the integration cluster needs root (containerd, kubelet): run as root")
    # SIGTERM (a timeout) ends the run through KeyboardInterrupt, so the teardown still runs
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        try:
            started = Cluster.start(tmp_path_factory.mktemp("cluster"))
        except ClusterError as err:
            pytest.fail(f"the test cluster did not start: {err}", pytrace=False)
        _running.append(started)
        try:
            yield started
        finally:
            _running.remove(started)
            started.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _running and "cluster" in getattr(item, "fixturenames", ()):
        cluster = _running[0]
        if _reported:  # the logs' ends once per session; later failures name the directory
            tail = f"see {cluster.workdir / 'logs'}"
        else:
            tail = cluster.failure_report()
            _reported.append(item.nodeid)
        report.sections.append(("cluster component logs", tail))
    return report
