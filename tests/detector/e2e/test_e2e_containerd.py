"""The shim path: a container run by containerd (Debian's, started here with its own
config, root, state and socket) from an image built with umoci and imported with
`ctr`. Its processes are children of containerd-shim, not of runc.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import oci_image
import pytest

pytestmark = pytest.mark.root

IMAGE_REF = "localhost/podlock-e2e:latest"
ROOTFS_WRITE = "Write to container root filesystem in exec session"
OWN_WRITE = "Container process wrote to its root filesystem"

CONFIG = """version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd-ttrpc.sock"
"""


def oci_archive(image_dir: Path, work: Path) -> Path:
    """An OCI image archive of the busybox root filesystem."""

    def fill(root: Path) -> None:
        shutil.copytree(image_dir, root, symlinks=True, dirs_exist_ok=True)

    return oci_image.oci_archive(work, "latest", fill)


class Containerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        (base / "config.toml").write_text(CONFIG.format(base=base))
        with (base / "containerd.log").open("wb") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(base / "config.toml")],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None, (base / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.2)

    def ctr(
        self, *args: str, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ctr", "-a", str(self.socket), *args],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            check=check,
            timeout=60,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # containerd leaves its snapshot mounts behind; nothing else uses them
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith(str(self.base)):
                subprocess.run(["umount", "-l", target], check=False)


@pytest.fixture(scope="module")
def containerd(e2e_dir: Path, image: Path) -> Iterator[Containerd]:
    base = e2e_dir / "containerd"
    base.mkdir()
    daemon = Containerd(base)
    try:
        archive = oci_archive(image, base)
        daemon.ctr("images", "import", "--base-name", "localhost/podlock-e2e", str(archive))
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def ctd_container(containerd: Containerd, detector: Any) -> Iterator[Any]:
    cid = secrets.token_hex(32)
    cgroup = f"kubepods/besteffort/pod{uuid.uuid4()}/{cid}"
    script = (
        "while true; do if [ -f /tmp/.own ]; then rm -f /tmp/.own; "
        "echo own > /etc/owned-by-init; fi; sleep 0.2; done"
    )
    containerd.ctr("run", "-d", "--cgroup", cgroup, IMAGE_REF, cid, "sh", "-c", script)

    class Ref:
        id = cid
        short_id = cid[:12]

    try:
        yield Ref
    finally:
        containerd.ctr("tasks", "kill", "-s", "KILL", cid, check=False)
        for _ in range(50):
            if containerd.ctr("tasks", "delete", cid, check=False).returncode == 0:
                break
            time.sleep(0.1)
        containerd.ctr("containers", "rm", cid, check=False)


def test_exec_through_the_shim_is_an_exec_session(
    detector: Any, containerd: Containerd, ctd_container: Any, alerts_of: Callable[..., Any]
) -> None:
    containerd.ctr(
        "tasks", "exec", "--exec-id", "e2e-1", ctd_container.id,
        "sh", "-c", "echo evil > /etc/evil-containerd",
    )  # fmt: skip
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, ROOTFS_WRITE, ctd_container, fd__name="/etc/evil-containerd"))
    )
    alert = alerts_of(alerts, ROOTFS_WRITE, ctd_container, fd__name="/etc/evil-containerd")[0]
    assert alert["output_fields"]["podlock.session"] == "exec"
    assert alert["output_fields"]["container.full_id"] == ctd_container.id


def test_shim_child_init_is_the_container_session(
    detector: Any, containerd: Containerd, ctd_container: Any, alerts_of: Callable[..., Any]
) -> None:
    # the trigger is written from an exec session; the write it causes is the init's
    containerd.ctr("tasks", "exec", "--exec-id", "e2e-2", ctd_container.id, "touch", "/tmp/.own")
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, OWN_WRITE, ctd_container, fd__name="/etc/owned-by-init"))
    )
    own = alerts_of(alerts, OWN_WRITE, ctd_container, fd__name="/etc/owned-by-init")[0]
    assert own["output_fields"]["podlock.session"] == "container"
    assert not alerts_of(alerts, ROOTFS_WRITE, ctd_container, fd__name="/etc/owned-by-init")
