"""`podlock detect` over its life: SIGHUP reloads while events flow, SIGTERM writes what
it held back, SIGKILL and restart with an exec session open. Real kernel, real runc."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import start_container, stop_container

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def container(e2e_dir: Path, image: Path, detector: Any) -> Iterator[Any]:
    """This module's own container: its hundreds of writes must not use up the shared
    detector's rate-limit bucket for the container the other modules write in."""
    c = start_container(e2e_dir / "containers", image, readonly=False)
    yield c
    stop_container(c)


ROOTFS_WRITE = "Write to container root filesystem in exec session"
FLOW = 150  # files written by one exec session while the rules are reloaded

MARKER = """
- rule: Reload marker
  desc: a rule whose output says which version of this file is loaded
  condition: file_write and fd.name startswith /etc/marker
  output: "marker version {version} (file=%fd.name)"
  priority: NOTICE
"""
BAD_FILES = {
    "undefined macro": MARKER.format(version="three").replace(
        "file_write and", "file_write and no_such_macro and"
    ),
    "bad YAML": "- rule: Reload marker\n  condition: [file_write\n",
    "unknown field": MARKER.format(version="three") + "  colour: blue\n",
}


def _stderr(d: Any) -> list[str]:
    lines: list[str] = (d.stdout.parent / "stderr.txt").read_text().splitlines()
    return lines


def _wait_stderr(d: Any, count: int, needle: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in _stderr(d) if needle in line]
        if len(found) >= count:
            return found
        assert d.proc.poll() is None, "the detector died: " + "\n".join(_stderr(d))
        assert time.monotonic() < deadline, f"no {needle!r} in stderr: {_stderr(d)}"
        time.sleep(0.1)


def _hup(d: Any) -> None:
    """Falco's gesture: kill -1 $(cat PIDFILE)."""
    os.kill(int(d.pidfile.read_text()), signal.SIGHUP)


def test_sighup_reloads_rules_while_events_flow_and_a_bad_file_keeps_the_running_ones(
    detector_factory: Callable[..., Any],
    container: Any,
    alerts_of: Callable[..., Any],
    tmp_path: Path,
) -> None:
    extra = tmp_path / "marker.yaml"
    extra.write_text(MARKER.format(version="one"))
    config = tmp_path / "detector.yaml"
    config.write_text(f"rules_file: [builtin, {extra}]\nrate_limit: {{enabled: false}}\n")
    d = detector_factory("reload", ["--config", str(config)])

    # an exec session writes FLOW files, one every few ms, across all the reloads
    flow = subprocess.Popen(
        ["runc", "exec", container.id, "sh", "-c",
         f"i=0; while [ $i -lt {FLOW} ]; do echo x > /etc/flow-$i; i=$((i+1)); "
         "[ $((i % 10)) = 0 ] && sleep 0.1; done"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        extra.write_text(MARKER.format(version="two"))
        _hup(d)
        _wait_stderr(d, 1, "reloaded")
        for n, text in enumerate(BAD_FILES.values(), start=1):
            extra.write_text(text)
            _hup(d)
            _wait_stderr(d, n, "reload failed")
    finally:
        assert flow.wait(timeout=60) == 0

    # every write was evaluated once, by the old rules or the new, none dropped
    def flow_alerts(alerts: list[Any]) -> list[str]:
        return [
            a["output_fields"]["fd.name"]
            for a in alerts_of(alerts, ROOTFS_WRITE, container)
            if a["output_fields"]["fd.name"].startswith("/etc/flow-")
        ]

    alerts = d.wait_for(lambda a: len(flow_alerts(a)) >= FLOW, timeout=60)
    assert sorted(flow_alerts(alerts)) == sorted(f"/etc/flow-{i}" for i in range(FLOW))

    # each failed reload is one line naming the file, the line and the problem
    failures = _wait_stderr(d, len(BAD_FILES), "reload failed")
    assert len(failures) == len(BAD_FILES)
    for line, problem in zip(failures, ("unknown macro", "not valid YAML", "colour"), strict=True):
        assert "the running configuration and rules stay" in line
        assert f"rules file {extra}, line" in line and problem in line, line
    assert not any("Traceback" in line for line in _stderr(d))

    # version two is in force: the failed reloads changed nothing
    assert container.exec("echo m > /etc/marker-after").returncode == 0

    def markers(alerts: list[Any]) -> list[Any]:
        return [a for a in alerts if a["rule"] == "Reload marker" and "marker-after" in a["output"]]

    (marker,) = markers(d.wait_for(lambda a: bool(markers(a))))
    assert "marker version two (file=/etc/marker-after)" in marker["output"]
    assert d.pidfile.exists() and d.proc.poll() is None

    # a changed output setting: the outputs are rebuilt, alerts go to the new file too
    extra.write_text(MARKER.format(version="two"))
    log = tmp_path / "alerts.log"
    config.write_text(config.read_text() + f"file_output: {{enabled: true, filename: {log}}}\n")
    _hup(d)
    _wait_stderr(d, 2, "reloaded")
    assert container.exec("echo m > /etc/marker-file").returncode == 0
    deadline = time.monotonic() + 60
    while "marker-file" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "no alert in the file output after the reload"
        time.sleep(0.2)
    d.wait_for(lambda a: any("marker-file" in x["output"] for x in a))  # stdout still too


def test_sigterm_writes_the_alerts_the_rate_limit_held_back(
    detector_factory: Callable[..., Any], container: Any, alerts_of: Callable[..., Any]
) -> None:
    d = detector_factory("held-back")  # the default rate limit: a burst of 20
    result = container.exec("i=0; while [ $i -lt 30 ]; do echo x > /etc/held-$i; i=$((i+1)); done")
    assert result.returncode == 0

    def held(alerts: list[Any]) -> list[Any]:
        return [
            a
            for a in alerts_of(alerts, ROOTFS_WRITE, container)
            if a["output_fields"]["fd.name"].startswith("/etc/held-")
        ]

    d.wait_for(lambda a: len(held(a)) >= 20)
    assert d.stop() == 0
    alerts = held(d.alerts())
    # 20 at once, and at exit the latest held back, carrying the count of the other nine
    assert len(alerts) == 21
    assert alerts[-1]["output_fields"]["fd.name"] == "/etc/held-29"
    assert sum(a["output_fields"]["podlock.suppressed"] for a in alerts) + len(alerts) == 30
    assert not d.pidfile.exists()


def test_sigkill_and_restart_keeps_an_open_exec_session_labelled_exec(
    detector_factory: Callable[..., Any], container: Any, alerts_of: Callable[..., Any]
) -> None:
    script = (
        "echo a > /etc/restart-before; "
        "while [ ! -f /vol/go-restart ]; do sleep 0.1; done; "
        "echo b > /etc/restart-after; touch /etc/restart-child"
    )
    first = detector_factory("before-kill")
    session = subprocess.Popen(
        ["runc", "exec", container.id, "sh", "-c", script], stdin=subprocess.DEVNULL
    )
    try:
        first.wait_for(
            lambda a: bool(alerts_of(a, ROOTFS_WRITE, container, fd__name="/etc/restart-before"))
        )
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=15)
        assert first.pidfile.exists()  # nothing ran to remove it

        second = detector_factory("after-kill")  # seeds from /proc, over the stale pidfile
        (container.volume / "go-restart").write_text("go")
        alerts = second.wait_for(
            lambda a: all(
                alerts_of(a, ROOTFS_WRITE, container, fd__name=f"/etc/restart-{n}")
                for n in ("after", "child")
            )
        )
    finally:
        assert session.wait(timeout=30) == 0
        (container.volume / "go-restart").unlink(missing_ok=True)
    for name, process in (("after", "sh"), ("child", "touch")):
        (alert,) = alerts_of(alerts, ROOTFS_WRITE, container, fd__name=f"/etc/restart-{name}")
        fields = alert["output_fields"]
        assert fields["podlock.session"] == "exec"
        assert fields["proc.name"] == process
        # the session's command, known only from the leader seeded out of /proc
        assert fields["podlock.session_cmdline"] == f"sh -c {script}"
