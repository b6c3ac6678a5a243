"""`podlock detect` as a program: seeding from /proc, pidfile and SIGTERM, and the
one-sentence failures."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

ROOTFS_WRITE = "Write to container root filesystem in exec session"
OWN_WRITE = "Container process wrote to its root filesystem"
PODLOCK = [sys.executable, "-c", "import sys; from webhook.cli import main; sys.exit(main())"]


def test_exec_session_opened_before_start_is_labelled_exec(
    detector_factory: Callable[[str], Any], container: Any, alerts_of: Callable[..., Any]
) -> None:
    # the session starts first; a detector started afterwards learns it from /proc. The
    # session writes once the detector is attached (a gate file), not after a fixed time.
    started, gate = container.volume / "pre-started", container.volume / "pre-go"
    script = (
        "touch /vol/pre-started; while [ ! -f /vol/pre-go ]; do sleep 0.1; done; "
        "echo pre > /etc/pre-existing"
    )
    session = subprocess.Popen(
        ["runc", "exec", container.id, "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert session.poll() is None and time.monotonic() < deadline, "no session"
            time.sleep(0.05)
        late = detector_factory("late-detector")
        gate.write_text("go")
        alerts = late.wait_for(
            lambda a: bool(alerts_of(a, ROOTFS_WRITE, container, fd__name="/etc/pre-existing"))
        )
        alert = alerts_of(alerts, ROOTFS_WRITE, container, fd__name="/etc/pre-existing")[0]
        assert alert["output_fields"]["podlock.session"] == "exec"
        assert not alerts_of(alerts, OWN_WRITE, container, fd__name="/etc/pre-existing")
    finally:
        gate.write_text("go")  # the session ends even when the detector did not start
        session.wait(timeout=30)


def test_container_tree_running_before_start_is_labelled_container(
    detector_factory: Callable[[str], Any], container: Any, alerts_of: Callable[..., Any]
) -> None:
    late = detector_factory("late-detector-2")
    (container.volume / ".own").write_text("go")
    alerts = late.wait_for(
        lambda a: bool(alerts_of(a, OWN_WRITE, container, fd__name="/etc/owned-by-init"))
    )
    assert not alerts_of(alerts, ROOTFS_WRITE, container, fd__name="/etc/owned-by-init")


def test_sigterm_detaches_and_removes_the_pidfile(
    detector_factory: Callable[[str], Any],
) -> None:
    d = detector_factory("sigterm")
    assert int(d.pidfile.read_text()) == d.proc.pid
    assert d.stop() == 0
    assert not d.pidfile.exists()


NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]


@pytest.mark.parametrize(
    ("wrapper", "args", "expected"),
    [
        # root without capabilities: the kernel refuses the BPF programs
        (NO_CAPS, [], "the kernel refused podlock's BPF programs: Operation not permitted"),
        ([], ["--rules", "/nonexistent/rules.yaml"], "/nonexistent/rules.yaml"),
    ],
    ids=["no-bpf-capability", "missing-rules-file"],
)
def test_failures_are_one_sentence(
    wrapper: list[str], args: list[str], expected: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [*wrapper, *PODLOCK, "detect", "--pidfile", str(tmp_path / "pid"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pid").exists()


def test_unopenable_output_file_is_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "detector.yaml"
    config.write_text(f"file_output: {{enabled: true, filename: {tmp_path}/nodir/alerts.log}}\n")
    result = subprocess.run(
        [*PODLOCK, "detect", "--config", str(config), "--pidfile", str(tmp_path / "pid")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"file_output.filename: cannot open {tmp_path}/nodir/alerts.log" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pid").exists()
