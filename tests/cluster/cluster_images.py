"""The cluster's images, built here from Debian's busybox-static and packed with umoci into OCI
archives for `ctr images import`: nothing is pulled from a registry.

- pause: the sandbox image containerd's CRI plugin starts for every pod.
- busybox: a shell and coreutils, user 1000 (a non-root numeric user, as podlock's policy
  wants); pods give their own command.
- nginx: named like the real image so podlock's `nginx` image profile applies, user 101 like
  the real one, busybox httpd serving on 8080 and writing to the paths real nginx writes to.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import oci_image

APPLETS = (
    "sh", "cat", "echo", "sleep", "chmod", "cp", "mkdir", "touch", "ls", "rm", "mv", "ln",
    "true", "false", "tar", "test", "[", "printf", "head", "id", "httpd", "wget", "dd", "find",
    "stat", "grep", "mount", "ps", "env", "hostname", "nc",
)  # fmt: skip


@dataclass(frozen=True)
class Image:
    ref: str  # what pods name, e.g. localhost/nginx:1.27
    user: str  # uid:gid in the image config, "" for root
    entrypoint: tuple[str, ...]
    dirs: tuple[str, ...] = ()  # extra directories, owned by the image's user


PAUSE = Image("localhost/pause:3.10", "", ("/bin/sleep", "2147483647"))
BUSYBOX = Image("localhost/podlock-busybox:1.0", "1000:1000", ("/bin/sh",))
NGINX = Image(
    "localhost/nginx:1.27",
    "101:101",
    ("/bin/httpd", "-f", "-p", "8080", "-h", "/usr/share/nginx/html"),
    dirs=("/var/cache/nginx", "/var/run", "/usr/share/nginx/html"),
)
ALL = (PAUSE, BUSYBOX, NGINX)


def _rootfs(root: Path, image: Image) -> None:
    for d in ("bin", "etc", "tmp", "proc", "dev", "sys", "root", "home/app"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
        "nginx:x:101:101:nginx:/var/cache/nginx:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nnginx:x:101:\n")
    uid, _, gid = image.user.partition(":")
    for d in image.dirs:
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        if uid:
            shutil.chown(root / d.lstrip("/"), int(uid), int(gid or uid))
    if "/usr/share/nginx/html" in image.dirs:
        (root / "usr/share/nginx/html/index.html").write_text("podlock\n")


def oci_archive(image: Image, work: Path) -> Path:
    """An OCI image archive (tagged with the ref's tag) of a fresh busybox root filesystem."""
    tag = image.ref.rsplit(":", 1)[1]
    return oci_image.oci_archive(
        work, tag, lambda root: _rootfs(root, image), image.entrypoint, image.user
    )


def repository(image: Image) -> str:
    return image.ref.rsplit(":", 1)[0]
