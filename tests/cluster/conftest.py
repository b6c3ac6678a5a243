"""The integration cluster, one per test session: tests anywhere under tests/cluster/ that take
the `cluster` fixture share it. A failed test's report ends with every component's log."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster, ClusterError

_running: list[Cluster] = []
_reported: list[str] = []  # the test whose report carries the logs' ends


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        # a failure, not a skip: a skipped cluster test would pass CI while proving nothing
        pytest.fail("the integration cluster needs root (containerd, kubelet): run as root")
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
