"""Paths at any depth, end to end: the root filesystem / volume decision for operations
that carry only a path (mkdir, rename, symlink, chmod), paths longer than an event can
hold, and a 10k-file `kubectl cp`. Real kernel, real runc, the real `podlock detect`.

The kernel decides rootfs or volume from the mount the path lands on, whatever its depth;
a path too long for the event keeps its end behind a leading "…". Each test has its own
container, so that its copy alerts and rate limits are its own.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.detector.e2e.conftest import Container, start_container, stop_container

pytestmark = pytest.mark.root

CUT = "…"  # the mark before the kept end of a cut path
PATH_LEN = 256  # an event's path field, NUL included
ROOTFS_WRITE = "Write to container root filesystem in exec session"
VOLUME_WRITE = "Write to container volume in exec session"
KUBECTL_CP = "kubectl cp into container"
DEPTH = 45
DECOY = 6  # the level named like the volume's mount point in the root filesystem tree


@pytest.fixture
def own_container(e2e_dir: Path, image: Path, detector: Any) -> Iterator[Container]:
    c = start_container(e2e_dir / "containers", image, readonly=False)
    try:
        yield c
    finally:
        stop_container(c)


def file_events(detector: Any, container: Container, suffix: str) -> list[dict[str, Any]]:
    """The file events of one container whose path ends with `suffix`. (The events log
    holds every container's events on this machine: only this one's lines are parsed.)"""
    with detector.events_log.open(errors="replace") as log:
        mine = [json.loads(line) for line in log if container.id in line]
    return [
        ev
        for ev in mine
        if ev.get("type") == "FileEvent"
        and ev["proc"]["container_id"] == container.id
        and ev["path"].endswith(suffix)
    ]


def wait_events(
    detector: Any, container: Container, suffix: str, ops: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """The file events whose path ends with `suffix`, once there is one of each of `ops`
    (at least one event when `ops` is empty)."""
    found: list[dict[str, Any]] = []

    def seen(_alerts: object) -> bool:
        found[:] = file_events(detector, container, suffix)
        return bool(found) and ops <= {ev["op"] for ev in found}

    detector.wait_for(seen)
    return found


def deep_tree(container: Container, base: str, decoy: bool) -> str:
    """DEPTH levels below `base`, made from the host (no events); its path in the container."""
    names = ["vol" if decoy and i == DECOY else f"level-{i}" for i in range(1, DEPTH + 1)]
    inside = f"{base}/{'/'.join(names)}"
    host_base = container.volume if base == "/vol" else container.merged / base.lstrip("/")
    (host_base / "/".join(names)).mkdir(parents=True)
    return inside


@pytest.mark.parametrize(
    ("base", "decoy", "fs", "rule"),
    [
        ("/tmp", True, "rootfs", ROOTFS_WRITE),  # a dir named `vol` 39 levels up
        ("/vol", False, "volume", VOLUME_WRITE),
    ],
    ids=["rootfs-below-a-dir-named-vol", "volume"],
)
def test_path_only_operations_45_levels_down_are_classified_by_mount(
    detector: Any, own_container: Container, base: str, decoy: bool, fs: str, rule: str
) -> None:
    bottom_dir = deep_tree(own_container, base, decoy)
    assert len(bottom_dir) > 2 * PATH_LEN - 200  # more than an event holds
    # at the bottom, every path-only operation: relative to a cwd 45 levels down, and
    # absolute ($PWD)
    result = own_container.exec(
        f"set -e; cd {bottom_dir}; echo x > file-a; mkdir made-dir; mv file-a renamed-file; "
        'ln -s renamed-file sym-link; chmod +x renamed-file; mkdir "$PWD/abs-dir"'
    )
    assert result.returncode == 0, result.stderr
    bottom = "/level-44/level-45"
    ops = {
        "made-dir": "mkdir",
        "file-a": "rename",
        "sym-link": "symlink",
        "renamed-file": "chmod",
        "abs-dir": "mkdir",
    }
    for name, op in ops.items():
        found = wait_events(detector, own_container, f"{bottom}/{name}", frozenset({op}))
        events = [ev for ev in found if ev["op"] == op]
        assert events, (name, op)
        for ev in events:
            assert ev["fs"] == fs, (name, op, ev["path"])
            # too long for the event: the end is kept, behind the cut mark
            assert ev["path"].startswith(CUT + "/"), ev["path"]
            assert len(ev["path"].encode()) < PATH_LEN
    rename = [ev for ev in file_events(detector, own_container, "/file-a") if ev["op"] == "rename"]
    assert rename[0]["target"].endswith(f"{bottom}/renamed-file")
    alerts = detector.wait_for(
        lambda a: any(
            x["rule"] == rule and x["output_fields"]["fd.name"].endswith(f"{bottom}/made-dir")
            for x in a
        )
    )
    other = ROOTFS_WRITE if rule == VOLUME_WRITE else VOLUME_WRITE
    assert not [
        x
        for x in alerts
        if x["rule"] == other
        and "/level-45/" in str(x["output_fields"].get("fd.name"))
        and x["output_fields"]["container.full_id"] == own_container.id
    ]


def test_dot_dot_across_the_volume_mount_is_followed(
    detector: Any, own_container: Container
) -> None:
    result = own_container.exec(
        "set -e; mkdir /vol/../tmp/dd-a /tmp/../vol/dd-b /vol/./../vol/dd-c; "
        "cd /vol; mkdir ../tmp/dd-d; cd /tmp; mkdir ../vol/dd-e ../../../tmp/dd-f"
    )
    assert result.returncode == 0, result.stderr
    expected = {"dd-a": "rootfs", "dd-b": "volume", "dd-c": "volume", "dd-d": "rootfs",
                "dd-e": "volume", "dd-f": "rootfs"}  # fmt: skip
    got = {name: {ev["fs"] for ev in wait_events(detector, own_container, "/" + name)}
           for name in expected}  # fmt: skip
    assert got == {name: {fs} for name, fs in expected.items()}


@pytest.mark.parametrize(("base", "fs"), [("/tmp", "rootfs"), ("/vol", "volume")])
def test_4096_byte_paths_keep_their_end_and_their_filesystem(
    detector: Any, own_container: Container, base: str, fs: str
) -> None:
    prefix = f"{base}/long"
    levels = "/".join(f"{i:02d}" + "d" * 248 for i in range(16))
    directory = f"{prefix}/{levels}"
    name = "f" * (4095 - len(directory) - 1 - len("-end")) + "-end"
    path = f"{directory}/{name}"
    assert len(path) == 4095  # PATH_MAX with its NUL
    result = own_container.exec(
        f'set -e; mkdir -p "{directory}"; echo x > "{path}"; chmod +x "{path}"; '
        f'rm "{path}"; mkdir "{path}"'
    )
    assert result.returncode == 0, result.stderr
    ops = frozenset({"open", "chmod", "unlink", "mkdir"})
    events = wait_events(detector, own_container, "/" + name, ops)
    assert {ev["op"] for ev in events} == ops
    for ev in events:
        assert ev["fs"] == fs, ev["op"]
        assert ev["path"].startswith(CUT + "/") and len(ev["path"].encode()) < PATH_LEN


def name_of(length: int) -> str:
    """A file name of `length` bytes that starts with its length: a misplaced word shows."""
    return (f"{length}." + "abcdefghijklmnopqrstuvwxyz0123456789" * 8)[:length]


# Around the 8-byte words the kernel side copies names in, up to NAME_MAX. Under /tmp/n the
# path of a name up to 248 bytes fits; 250 keeps its whole name behind the mark; 253 and
# 255 fill the room on their own and keep their last 252 bytes.
NAME_LENGTHS = (1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200, 248, 250, 253, 255)


def expected_path(length: int) -> str:
    name = name_of(length)
    if length <= 248:
        return f"/tmp/n/{name}"
    if length == 250:
        return f"{CUT}/{name}"
    return CUT + name[-252:]


def write_every_name_length(container: Container) -> tuple[set[str], int]:
    """Files of every NAME_LENGTHS under /tmp/n, written in an exec session by a process
    named `busybox-15chars`; their expected paths, and the writer's pid in the container."""
    # busybox runs the applet in argv[1] when its own name starts with "busybox": a
    # process whose 15-character comm fills both words of the field
    script = "; ".join(f'echo x > "/tmp/n/{name_of(n)}"' for n in NAME_LENGTHS)
    result = container.exec(
        "set -e; mkdir /tmp/n; cp /bin/busybox /tmp/busybox-15chars; "
        f"/tmp/busybox-15chars sh -c 'echo $$ > /tmp/n/pid; {script}'"
    )
    assert result.returncode == 0, result.stderr
    vpid = int((container.merged / "tmp/n/pid").read_text())
    return {expected_path(n) for n in NAME_LENGTHS}, vpid


def test_opened_files_are_named_exactly_at_every_name_length(
    detector: Any, own_container: Container
) -> None:
    """Names, the comm and the namespace pid come from direct loads in words: every
    length comes out exact, and a cut keeps the end of the file's own name."""
    wanted, vpid = write_every_name_length(own_container)
    opens: dict[str, dict[str, Any]] = {}

    def all_seen(_alerts: object) -> bool:
        events = file_events(detector, own_container, "")
        opens.update((ev["path"], ev) for ev in events if ev["op"] == "open")
        return wanted <= opens.keys()

    try:
        detector.wait_for(all_seen)
    except AssertionError:
        raise AssertionError(f"missing {wanted - opens.keys()}; seen {sorted(opens)}") from None
    for path in wanted:
        ev = opens[path]
        assert ev["proc"]["comm"] == "busybox-15chars"
        assert ev["proc"]["vpid"] == vpid != ev["proc"]["pid"]
        assert ev["fs"] == "rootfs"
    # nothing else came out for these files (a wrong byte would be a path of its own)
    assert opens.keys() - wanted <= {"/tmp/n/pid", "/tmp/busybox-15chars"}


def test_kubectl_cp_of_10k_files_is_one_aggregated_alert(
    detector: Any, own_container: Container
) -> None:
    count = 10_000
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"many/f{i:05d}")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"x\n"))
    result = own_container.exec_argv(
        ["tar", "-xmf", "-", "-C", "/usr/share"], stdin=buf.getvalue(), timeout=120
    )
    assert result.returncode == 0, result.stderr

    def copies(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            a
            for a in alerts
            if a["rule"] == KUBECTL_CP
            and a["output_fields"]["container.full_id"] == own_container.id
        ]

    detector.wait_for(lambda a: bool(copies(a)), timeout=60)
    alerts = copies(detector.settle(own_container))
    assert len(alerts) == 1
    fields = alerts[0]["output_fields"]
    assert fields["podlock.agg.count"] >= count  # every file (and the directory)
    assert fields["podlock.fs"] == "rootfs"
    assert "/usr/share/many/f00000" in alerts[0]["output"]
