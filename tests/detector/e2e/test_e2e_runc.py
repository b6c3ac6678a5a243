"""The drift detector end to end: real eBPF probes, real runc containers, the real
`podlock detect --json`, asserting on the alerts it writes (and, for labels no
rule shows directly, on the decoded events it logs with PODLOCK_EVENTS_LOG).

Fixtures (conftest.py): `detector` (running), `container` (writable root),
`ro_container` (root.readonly), `alerts_of(alerts, rule, container, **fields)`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

ROOTFS_WRITE = "Write to container root filesystem in exec session"
REFUSED = "Write attempt refused by read-only root filesystem"
SHELL = "Shell in container exec session"
DROPPED = "Dropped executable launched in container"
OWN_WRITE = "Container process wrote to its root filesystem"
KUBECTL_CP = "kubectl cp into container"
ERROR_OR_WORSE = {"Error", "Critical", "Alert", "Emergency"}

Alerts = list[dict[str, Any]]
Of = Callable[..., Alerts]


def tar_of(files: dict[str, bytes]) -> bytes:
    """What `kubectl cp` streams into `tar -xmf -`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def events_for(detector: Any, container: Any, **match: Any) -> list[dict[str, Any]]:
    out = []
    for ev in detector.events():
        proc = ev.get("proc") or {}
        if proc.get("container_id") != container.id:
            continue
        if all(ev.get(k) == v for k, v in match.items()):
            out.append(ev)
    return out


def test_exec_shell_writing_rootfs_alerts_with_ids_and_path(
    detector: Any, container: Any, alerts_of: Of
) -> None:
    result = container.exec("echo evil > /etc/evil")
    assert result.returncode == 0, result.stderr
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, ROOTFS_WRITE, container, fd__name="/etc/evil"))
    )
    alert = alerts_of(alerts, ROOTFS_WRITE, container, fd__name="/etc/evil")[0]
    fields = alert["output_fields"]
    assert alert["priority"] == "Error"
    assert alert["source"] == "podlock"
    assert fields["container.id"] == container.short_id
    assert fields["container.full_id"] == container.id
    assert fields["podlock.session"] == "exec"
    assert fields["podlock.fs"] == "rootfs"
    assert fields["proc.name"] == "sh"
    # busybox sh -c runs its last command in place: the shell is the writer
    assert alerts_of(alerts, SHELL, container)


def test_exec_shell_writing_volume_is_volume_not_rootfs(
    detector: Any, container: Any, alerts_of: Of
) -> None:
    result = container.exec("echo data > /vol/data.txt; echo marker > /etc/after-volume")
    assert result.returncode == 0, result.stderr
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, ROOTFS_WRITE, container, fd__name="/etc/after-volume"))
    )
    assert not alerts_of(alerts, ROOTFS_WRITE, container, fd__name="/vol/data.txt")
    volume_writes = [
        ev for ev in events_for(detector, container, path="/vol/data.txt") if ev["op"] == "open"
    ]
    assert volume_writes and all(ev["fs"] == "volume" for ev in volume_writes)
    assert volume_writes[0]["proc"]["session"] == "exec"


def test_kubectl_cp_gives_one_alert_listing_the_files(
    detector: Any, container: Any, alerts_of: Of
) -> None:
    files = {f"cp-{i}.txt": f"file {i}\n".encode() for i in range(3)}
    result = container.exec_argv(["tar", "-xmf", "-", "-C", "/usr/share"], stdin=tar_of(files))
    assert result.returncode == 0, result.stderr
    detector.wait_for(lambda a: bool(alerts_of(a, KUBECTL_CP, container)))
    alerts = detector.settle(container)  # everything, including what came after the copy alert
    cps = alerts_of(alerts, KUBECTL_CP, container)
    assert len(cps) == 1
    output = cps[0]["output"]
    for name in files:
        assert f"/usr/share/{name}" in output
    assert cps[0]["output_fields"]["podlock.fs"] == "rootfs"
    # the per-file alerts are folded into the copy alert
    for name in files:
        assert not alerts_of(alerts, ROOTFS_WRITE, container, fd__name=f"/usr/share/{name}")


def test_container_process_writing_rootfs_is_only_a_notice(
    detector: Any, container: Any, alerts_of: Of
) -> None:
    (container.volume / ".own").write_text("go")
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, OWN_WRITE, container, fd__name="/etc/owned-by-init"))
    )
    own = alerts_of(alerts, OWN_WRITE, container, fd__name="/etc/owned-by-init")
    assert own[0]["priority"] == "Notice"
    assert own[0]["output_fields"]["podlock.session"] == "container"
    others = [
        a
        for a in alerts
        if a["output_fields"].get("fd.name") == "/etc/owned-by-init"
        and a["output_fields"].get("container.id") == container.short_id
        and a["rule"] != OWN_WRITE
    ]
    assert others == []


def test_dropped_executable_is_critical(detector: Any, container: Any, alerts_of: Of) -> None:
    binary = Path("/bin/busybox").read_bytes()
    result = container.exec(
        "cat > /tmp/busybox && chmod +x /tmp/busybox && /tmp/busybox echo dropped-ran", stdin=binary
    )
    assert b"dropped-ran" in result.stdout, result.stderr
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, DROPPED, container, proc__exepath="/tmp/busybox"))
    )
    alert = alerts_of(alerts, DROPPED, container, proc__exepath="/tmp/busybox")[0]
    assert alert["priority"] == "Critical"
    execs = events_for(detector, container, type="ExecEvent")
    assert any(ev["proc"]["exepath"] == "/tmp/busybox" and ev["origin"] == "upper" for ev in execs)


def test_setsid_background_process_stays_in_the_exec_session(
    detector: Any, container: Any, alerts_of: Of
) -> None:
    # the shell returns at once; the detached grandchild writes later, reparented
    result = container.exec('(setsid sh -c "sleep 0.5; echo bg > /etc/from-setsid" &)')
    assert result.returncode == 0, result.stderr
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, ROOTFS_WRITE, container, fd__name="/etc/from-setsid"))
    )
    alert = alerts_of(alerts, ROOTFS_WRITE, container, fd__name="/etc/from-setsid")[0]
    assert alert["output_fields"]["podlock.session"] == "exec"
    assert not alerts_of(alerts, OWN_WRITE, container, fd__name="/etc/from-setsid")


# ---- the same on a read-only root filesystem --------------------------------------


def test_readonly_root_exec_write_is_a_refused_attempt(
    detector: Any, ro_container: Any, alerts_of: Of
) -> None:
    result = ro_container.exec("echo evil > /etc/evil")
    assert result.returncode != 0  # EROFS
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, REFUSED, ro_container, fd__name="/etc/evil"))
    )
    alert = alerts_of(alerts, REFUSED, ro_container, fd__name="/etc/evil")[0]
    assert alert["priority"] == "Warning"
    assert alert["output_fields"]["podlock.session"] == "exec"
    assert not alerts_of(alerts, ROOTFS_WRITE, ro_container, fd__name="/etc/evil")


def test_readonly_root_container_process_write_is_a_refused_attempt(
    detector: Any, ro_container: Any, alerts_of: Of
) -> None:
    (ro_container.volume / ".own").write_text("go")
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, REFUSED, ro_container, fd__name="/etc/owned-by-init"))
    )
    alert = alerts_of(alerts, REFUSED, ro_container, fd__name="/etc/owned-by-init")[0]
    assert alert["output_fields"]["podlock.session"] == "container"


def test_readonly_root_kubectl_cp_attempt_is_reported(
    detector: Any, ro_container: Any, alerts_of: Of
) -> None:
    result = ro_container.exec_argv(
        ["tar", "-xmf", "-", "-C", "/usr/share"], stdin=tar_of({"ro-cp.txt": b"x\n"})
    )
    assert result.returncode != 0
    alerts = detector.wait_for(lambda a: bool(alerts_of(a, KUBECTL_CP, ro_container)))
    assert "/usr/share/ro-cp.txt" in alerts_of(alerts, KUBECTL_CP, ro_container)[0]["output"]
    refused = events_for(detector, ro_container, path="/usr/share/ro-cp.txt")
    assert refused and all(ev["result"] == -30 for ev in refused)  # EROFS


def test_readonly_root_dropped_executable_from_volume(
    detector: Any, ro_container: Any, alerts_of: Of
) -> None:
    binary = Path("/bin/busybox").read_bytes()
    result = ro_container.exec(
        "cat > /vol/busybox && chmod +x /vol/busybox && /vol/busybox echo dropped-ran", stdin=binary
    )
    assert b"dropped-ran" in result.stdout, result.stderr
    alerts = detector.wait_for(
        lambda a: bool(alerts_of(a, DROPPED, ro_container, proc__exepath="/vol/busybox"))
    )
    assert alerts_of(alerts, DROPPED, ro_container, proc__exepath="/vol/busybox")
    execs = events_for(detector, ro_container, type="ExecEvent")
    assert any(ev["proc"]["exepath"] == "/vol/busybox" and ev["origin"] == "volume" for ev in execs)
