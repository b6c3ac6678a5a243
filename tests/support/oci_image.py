"""OCI image archives built here with umoci, for `ctr images import`: nothing is pulled."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path


def oci_archive(
    work: Path,
    tag: str,
    fill_rootfs: Callable[[Path], None],
    entrypoint: Sequence[str] = (),
    user: str = "",
) -> Path:
    """work/image.tar: a one-layer image tagged `tag` whose root filesystem `fill_rootfs`
    writes into the directory it is given; `entrypoint` and `user` go into its config."""
    layout, bundle = work / "layout", work / "bundle"
    image = f"{layout}:{tag}"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", image], check=True)
    quiet = {"check": True, "capture_output": True}
    subprocess.run(["umoci", "unpack", "--image", image, str(bundle)], **quiet)
    fill_rootfs(bundle / "rootfs")
    subprocess.run(["umoci", "repack", "--image", image, str(bundle)], **quiet)
    if entrypoint or user:
        config = ["umoci", "config", "--image", image, "--clear=config.entrypoint"]
        config += [f"--config.entrypoint={part}" for part in entrypoint]
        config += [f"--config.user={user}"] if user else []
        subprocess.run(config, **quiet)
    archive = work / "image.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(layout), "."], check=True)
    return archive
