"""The wheel, installed into a fresh virtualenv outside the checkout, is a whole podlock: the
admission path compiled, the BPF object inside, and `podlock detect` attaching with it."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

BPF_OBJECT = "detector/bpf/podlock.bpf.o"
COMPILED = ("webhook.hardening", "webhook.podspecs", "webhook.policy", "webhook.review")


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
        check=True,
    )
    return venv


def test_the_wheel_is_a_platform_wheel_with_its_native_parts(wheel: Path) -> None:
    assert wheel.name.endswith("-linux_x86_64.whl"), wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    assert BPF_OBJECT in names
    for module in COMPILED:
        path = module.replace(".", "/")
        assert any(n.startswith(path + ".cpython-") and n.endswith(".so") for n in names), module
        # no source beside a compiled module: nothing for the staleness guard to compare
        assert path + ".py" not in names


def test_version_says_compiled_and_names_the_objects_build_id(installed: Path) -> None:
    out = subprocess.run(
        [installed / "bin" / "podlock", "version"],
        cwd=installed.parent,  # outside the checkout: nothing of it can be imported
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = dict(line.split(": ", 1) for line in out.splitlines()[1:])
    assert out.startswith("podlock 0.1.0\n"), out
    assert lines["admission path"] == f"compiled ({', '.join(COMPILED)})", out
    (site,) = installed.glob("lib/python3*/site-packages")
    shipped = site / BPF_OBJECT
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert lines["bpf object"] == f"sha256:{digest} ({shipped})", out


@pytest.mark.root
def test_detect_attaches_with_the_shipped_object_and_writes_its_pidfile(
    installed: Path, root: None
) -> None:
    pidfile = installed.parent / "detect.pid"
    log = installed.parent / "detect.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [installed / "bin" / "podlock", "detect", "--json", "--pidfile", pidfile],
            cwd=installed.parent,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while "probes attached" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        assert pidfile.read_text() == f"{proc.pid}\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    assert not pidfile.exists()
