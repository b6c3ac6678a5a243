"""`make image`: the OCI archive runs under runc as the webhook runs in a pod (UID 65532, a
read-only root, an emptyDir-like /tmp), with the compiled admission path; two builds of one
commit give the same digest; and the Containerfile installs what `make image` installs."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shlex
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "deploy" / "image"
VERSION = "0.1.0"
ARCHIVE = ROOT / "dist" / f"podlock-{VERSION}.oci.tar"
REVIEW = ROOT / "examples" / "admission-review-pod.json"


@dataclass(frozen=True)
class Image:
    digest: str  # of the manifest: the image's identity
    archive_sha256: str
    layout: Path  # the archive unpacked: an OCI image layout


def build_image(into: Path) -> Image:
    # -o wheel: the session's `make wheel` already built it
    subprocess.run(["make", "--no-print-directory", "-o", "wheel", "image"], cwd=ROOT, check=True)
    layout = into / "layout"
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(layout, filter="tar")
    (manifest,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"] == VERSION
    return Image(manifest["digest"], hashlib.sha256(ARCHIVE.read_bytes()).hexdigest(), layout)


@pytest.fixture(scope="module")
def image(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build_image(tmp_path_factory.mktemp("image"))


def blob(image: Image, digest: str) -> Any:
    return json.loads(
        (image.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text()
    )


def image_config(image: Image) -> dict[str, Any]:
    config: dict[str, Any] = blob(image, blob(image, image.digest)["config"]["digest"])["config"]
    return config


@pytest.fixture(scope="module")
def bundle(image: Image, root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "b"
    subprocess.run(["umoci", "unpack", "--image", f"{image.layout}:{VERSION}", path], check=True)
    return path


def run_spec(bundle: Path, args: list[str], mounts: list[dict[str, Any]]) -> Path:
    """umoci's runtime spec for the image, made like the Deployment's pod: read-only root,
    /tmp an emptyDir; the host's network, so the test can reach the port."""
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": str(bundle / "rootfs"), "readonly": True}
    spec["process"]["args"] = args
    spec["process"]["terminal"] = False
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    spec["mounts"] += [
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        *mounts,
    ]
    run_dir = bundle.parent / f"run-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(spec))
    return run_dir


def run(bundle: Path, *args: str) -> str:
    run_dir = run_spec(bundle, list(args), [])
    result = subprocess.run(
        ["runc", "run", "--bundle", run_dir, f"podlock-test-{run_dir.name}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_the_image_config_runs_podlock_as_65532(image: Image) -> None:
    config = image_config(image)
    assert config["Entrypoint"] == ["podlock"]
    assert config["User"] == "65532:65532"


def test_version_in_the_image_says_compiled(bundle: Path) -> None:
    out = run(bundle, "podlock", "version")
    assert "admission path: compiled (webhook.hardening, webhook.podspecs" in out, out
    build_id = re.search(r"^bpf object: (sha256:[0-9a-f]{64}) ", out, re.MULTILINE)
    assert build_id, out
    site = bundle / "rootfs" / "usr/local/lib/python3.11/dist-packages"
    shipped = (site / "detector/bpf/podlock.bpf.o").read_bytes()
    assert build_id.group(1) == "sha256:" + hashlib.sha256(shipped).hexdigest()
    # as the image's user, and the detector's client imports without the trimmed kubernetes.aio
    out = run(bundle, "python3", "-c", "import os, kubernetes.watch; print(os.getuid())")
    assert out == "65532\n"


def test_every_module_has_its_bytecode_so_nothing_is_written_at_start(bundle: Path) -> None:
    tag = sys.implementation.cache_tag
    modules = [
        py
        for lib in ("usr/lib/python3.11", "usr/lib/python3", "usr/local/lib/python3.11")
        for py in (bundle / "rootfs" / lib).glob("**/*.py")
    ]
    pycs = [py.parent / "__pycache__" / f"{py.stem}.{tag}.pyc" for py in modules]
    assert len(modules) > 1000
    assert [str(p) for p in pycs if not p.exists()] == []
    # hash-based and unchecked (PEP 552 flags 0b01): no mtime to compare, nothing to rewrite
    assert {p.read_bytes()[4:8] for p in pycs} == {b"\x01\0\0\0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def serving(bundle: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    tls = tmp_path / "tls"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook.cli",
            "certs",
            "generate",
            "--out",
            tls,
            "--host",
            "127.0.0.1",
        ],
        check=True,
    )
    (tls / "tls.key").chmod(0o644)  # a Secret volume's default mode: readable by 65532
    port = free_port()
    args = ["podlock", "serve", "--bind", f"127.0.0.1:{port}"]
    args += ["--cert", "/etc/podlock/tls/tls.crt", "--key", "/etc/podlock/tls/tls.key"]
    tls_mount = {
        "destination": "/etc/podlock/tls",
        "type": "bind",
        "source": str(tls),
        "options": ["rbind", "ro"],
    }
    run_dir = run_spec(bundle, args, [tls_mount])
    name = f"podlock-test-{run_dir.name}"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        subprocess.run(
            ["runc", "run", "--detach", "--bundle", run_dir, name],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            check=True,
            timeout=60,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        state = json.loads(
            subprocess.run(["runc", "state", name], capture_output=True, check=True).stdout
        )
        uids = Path(f"/proc/{state['pid']}/status").read_text().split("Uid:")[1].split()[:2]
        assert uids == ["65532", "65532"]
        yield port, tls / "ca.crt"
    finally:
        subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)


def test_serve_in_the_image_hardens_a_pod_over_tls(serving: tuple[int, Path]) -> None:
    port, ca = serving
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    try:
        conn.request("POST", "/mutate", REVIEW.read_bytes(), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        body = json.loads(reply.read())
    finally:
        conn.close()
    assert reply.status == 200, body
    assert body["response"]["allowed"] is True
    assert body["response"]["patchType"] == "JSONPatch"  # the hardening, computed in the image


def test_two_builds_of_one_commit_give_the_same_image(image: Image, tmp_path: Path) -> None:
    again = build_image(tmp_path)
    assert again.digest == image.digest
    assert again.archive_sha256 == image.archive_sha256


def containerfile() -> str:
    return (ROOT / "Containerfile").read_text()


def test_the_containerfile_installs_what_make_image_installs(image: Image) -> None:
    text = containerfile()
    # the same package list, the same install script with the same locked wheels
    assert "$(grep -v '^#' /tmp/podlock-image/packages.txt)" in text
    assert "sh /tmp/podlock-image/install.sh /tmp/podlock-image/wheels" in text
    assert (
        "--require-hashes \\\n      --requirement /src/requirements.txt --requirement /src/pip.txt"
        in text
    )
    build = (IMAGE_DIR / "build.sh").read_text()
    assert '--include="$(grep -v \'^#\' "$here/packages.txt" | paste -sd,)"' in build
    assert "/bin/sh /tmp/podlock-image/install.sh /tmp/podlock-image/wheels" in build
    # the same run-time configuration as the image make built
    config = image_config(image)
    directives = dict(
        line.split(" ", 1) for line in text.splitlines() if line[:1].isupper() and " " in line
    )
    assert json.loads(directives["ENTRYPOINT"]) == config["Entrypoint"]
    assert directives["USER"] == config["User"]
    assert directives["WORKDIR"] == config["WorkingDir"]
    assert sorted(shlex.split(directives["ENV"])) == sorted(config["Env"])


def test_the_image_has_every_package_of_the_list(bundle: Path) -> None:
    listed = [
        line
        for line in (IMAGE_DIR / "packages.txt").read_text().splitlines()
        if line and line[0] != "#"
    ]
    status = (bundle / "rootfs/var/lib/dpkg/status").read_text()
    installed = set(
        re.findall(r"^Package: (\S+)\nStatus: install ok installed", status, re.MULTILINE)
    )
    assert set(listed) <= installed, set(listed) - installed
