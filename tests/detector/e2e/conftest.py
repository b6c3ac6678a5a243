"""Real kernel, real runc: a running `podlock detect --json` and busybox containers
on overlayfs with a bind-mounted volume, cgroups laid out like a kubelet's.

Everything expensive is session-scoped: one detector, one image, and one
writable and one read-only container serve every scenario; each test looks for
its own alerts by container id and path.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

Alert = dict[str, Any]

APPLETS = (
    "sh", "cat", "echo", "sleep", "setsid", "chmod", "cp", "mkdir", "touch", "ls", "rm", "mv",
    "ln", "true", "tar", "test", "[", "printf", "head", "seq", "dd",
)  # fmt: skip


def _need_root() -> None:
    if os.geteuid() != 0:
        # A failure, not a skip: a skipped end-to-end test would pass CI while proving nothing.
        pytest.fail("end-to-end detector tests need root (eBPF, runc): run make test as root")


def build_image(lower: Path) -> Path:
    """A busybox-static root filesystem: the image's (read-only) layer."""
    for d in ("bin", "etc", "usr/share", "usr/local/bin", "tmp", "proc", "dev", "sys", "vol"):
        (lower / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", lower / "bin" / "busybox")
    for applet in APPLETS:
        (lower / "bin" / applet).symlink_to("busybox")
    (lower / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (lower / "etc" / "hostname").write_text("podlock-e2e\n")
    return lower


INIT_SCRIPT = (
    # the container's own process: writes its rootfs when the test drops a trigger file
    "while true; do if [ -f /vol/.own ]; then rm -f /vol/.own; "
    "echo own > /etc/owned-by-init; fi; sleep 0.2; done"
)


@dataclass
class Container:
    id: str
    pod_uid: str
    bundle: Path
    volume: Path
    readonly: bool
    merged: Path

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def exec(
        self, script: str, stdin: bytes | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        """`runc exec <id> sh -c script`: what `kubectl exec` does on the node."""
        return self.exec_argv(["sh", "-c", script], stdin=stdin, timeout=timeout)

    def exec_argv(
        self, argv: list[str], stdin: bytes | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["runc", "exec", self.id, *argv],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
            check=False,
        )


def runc_config(
    merged: Path, volume: Path, cgroups_path: str, readonly: bool, args: list[str]
) -> dict[str, Any]:
    tmp = merged.parent / "spec"
    tmp.mkdir(exist_ok=True)
    subprocess.run(["runc", "spec"], cwd=tmp, check=True)
    config: dict[str, Any] = json.loads((tmp / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"] = {"path": str(merged), "readonly": readonly}
    config["hostname"] = "podlock-e2e"
    config["linux"]["cgroupsPath"] = cgroups_path
    config["mounts"].append(
        {"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind", "rw"]}
    )
    return config


def start_container(base: Path, image: Path, readonly: bool) -> Container:
    """`runc run -d` on an overlay of the image, like a kubelet-created container."""
    cid = secrets.token_hex(32)
    pod_uid = str(uuid.uuid4())
    root = base / cid[:12]
    upper, work, merged, volume, bundle = (
        root / n for n in ("upper", "work", "merged", "vol", "b")
    )
    for d in (upper, work, merged, volume, bundle):
        d.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={image},upperdir={upper},workdir={work}", str(merged)],
        check=True,
    )  # fmt: skip
    config = runc_config(
        merged,
        volume,
        f"kubepods/besteffort/pod{pod_uid}/{cid}",
        readonly,
        ["sh", "-c", INIT_SCRIPT],
    )
    (bundle / "config.json").write_text(json.dumps(config))
    # the container keeps runc's stdio: a file, never a pipe someone waits on
    with (root / "runc.log").open("wb") as log:
        subprocess.run(
            ["runc", "run", "-d", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            check=True,
            timeout=30,
        )
    # `runc run -d` returns before the init execs its program: an exec right away would be
    # the cgroup's first process and be taken for the container's own tree
    state = subprocess.run(["runc", "state", cid], capture_output=True, check=True)
    comm = Path(f"/proc/{json.loads(state.stdout)['pid']}/comm")
    deadline = time.monotonic() + 60
    while comm.read_text().strip() != "sh":
        assert time.monotonic() < deadline, "the container's init did not start"
        time.sleep(0.02)
    return Container(cid, pod_uid, bundle, volume, readonly, merged)


def stop_container(c: Container) -> None:
    subprocess.run(["runc", "kill", c.id, "KILL"], capture_output=True, check=False)
    for _ in range(50):
        state = subprocess.run(["runc", "state", c.id], capture_output=True, check=False)
        if b'"stopped"' in state.stdout or state.returncode != 0:
            break
        time.sleep(0.1)
    subprocess.run(["runc", "delete", "--force", c.id], capture_output=True, check=False)
    subprocess.run(["umount", "-l", str(c.merged)], capture_output=True, check=False)


@dataclass
class Detector:
    proc: subprocess.Popen[bytes]
    stdout: Path
    events_log: Path
    pidfile: Path

    def alerts(self) -> list[Alert]:
        lines = self.stdout.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def events(self) -> list[dict[str, Any]]:
        lines = self.events_log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_for(
        self, predicate: Callable[[list[Alert]], bool], timeout: float = 60
    ) -> list[Alert]:
        """Alerts once predicate(alerts) holds; fails the test after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "the detector died"
            alerts = self.alerts()
            if predicate(alerts):
                return alerts
            if time.monotonic() > deadline:
                rules = sorted({(a["rule"], a["output_fields"].get("fd.name")) for a in alerts})
                raise AssertionError(f"timed out; alerts so far: {rules}")
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM, as a DaemonSet's pod deletion sends; returns the exit status."""
        return stop_detector(self)

    def settle(self, container: Container) -> list[Alert]:
        """Every alert of what happened so far (for asserting that something did NOT
        happen): a write in `container` now is evaluated after every event before it, and
        its alert comes out after theirs."""
        marker = f"/etc/settled-{secrets.token_hex(8)}"
        result = container.exec(f": > {marker}")
        assert result.returncode == 0, result.stderr
        return self.wait_for(lambda a: any(x["output_fields"].get("fd.name") == marker for x in a))


def podlock_cmd() -> list[str]:
    return [sys.executable, "-c", "import sys; from webhook.cli import main; sys.exit(main())"]


def start_detector(workdir: Path, extra: list[str] | None = None) -> Detector:
    workdir.mkdir(parents=True, exist_ok=True)
    stdout, log, pidfile = workdir / "alerts.jsonl", workdir / "events.jsonl", workdir / "pid"
    for p in (stdout, log, pidfile):
        p.unlink(missing_ok=True)
    log.touch()
    env = {**os.environ, "PODLOCK_EVENTS_LOG": str(log)}
    env.pop("NODE_NAME", None)
    with stdout.open("wb") as out, (workdir / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(
            [*podlock_cmd(), "detect", "--json", "--pidfile", str(pidfile), *(extra or [])],
            stdout=out,
            stderr=err,
            env=env,
        )
    deadline = time.monotonic() + 90
    while not pidfile.exists():
        if proc.poll() is not None:
            raise AssertionError(
                "detector exited: " + (workdir / "stderr.txt").read_text(errors="replace")
            )
        assert time.monotonic() < deadline, "detector did not attach within 90 s"
        time.sleep(0.05)
    return Detector(proc, stdout, log, pidfile)


def stop_detector(d: Detector) -> int:
    d.proc.send_signal(signal.SIGTERM)
    try:
        return d.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        d.proc.kill()
        return d.proc.wait()


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need_root()
    return tmp_path_factory.mktemp("podlock-e2e")


@pytest.fixture(scope="session")
def image(e2e_dir: Path) -> Path:
    return build_image(e2e_dir / "image")


@pytest.fixture(scope="session")
def detector(e2e_dir: Path) -> Iterator[Detector]:
    # One detector watches every module's writes into the shared containers: a per-container
    # rate limit would make what a test sees depend on the tests before it. The rate limit is
    # tested on its own (test_engine_state, and the SIGTERM test with a detector of its own).
    config = e2e_dir / "shared-detector.yaml"
    config.write_text("rate_limit: {enabled: false}\n")
    d = start_detector(e2e_dir / "detector", ["--config", str(config)])
    yield d
    stop_detector(d)


@pytest.fixture
def detector_factory(e2e_dir: Path) -> Iterator[Callable[..., Detector]]:
    """Starts extra detectors (by work-directory name); stops whatever is left running."""
    started: list[Detector] = []

    def start(name: str, extra: list[str] | None = None) -> Detector:
        started.append(start_detector(e2e_dir / name, extra))
        return started[-1]

    yield start
    for d in started:
        if d.proc.poll() is None:
            stop_detector(d)


@pytest.fixture(scope="session")
def container(e2e_dir: Path, image: Path, detector: Detector) -> Iterator[Container]:
    c = start_container(e2e_dir / "containers", image, readonly=False)
    yield c
    stop_container(c)


@pytest.fixture(scope="session")
def ro_container(e2e_dir: Path, image: Path, detector: Detector) -> Iterator[Container]:
    c = start_container(e2e_dir / "containers", image, readonly=True)
    yield c
    stop_container(c)


def of(alerts: list[Alert], rule: str, container: Container, **fields: Any) -> list[Alert]:
    """The alerts of one rule for one container whose output_fields match `fields`
    (keys with dots written with __, e.g. fd__name)."""
    out = []
    for a in alerts:
        f = a.get("output_fields", {})
        if a.get("rule") != rule or f.get("container.full_id", f.get("container.id")) not in (
            container.id,
            container.short_id,
        ):
            continue
        if all(f.get(k.replace("__", ".")) == v for k, v in fields.items()):
            out.append(a)
    return out


@pytest.fixture
def alerts_of() -> Callable[..., list[Alert]]:
    return of
