"""The BPF object's branch for kernels before 6.17, which cannot cast to untyped bytes and
read names, the comm and fd slots with bpf_probe_read_kernel() instead. libbpf picks the
branch when it loads the object; here the object is built with the older branch forced,
loaded into this kernel, and must name files exactly as the default build does.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from detector import procscan
from detector.decode import RawFile, decode
from detector.loader import DEFAULT_OBJECT, Loader
from tests.detector.e2e.conftest import start_container, stop_container
from tests.detector.e2e.test_e2e_paths import write_every_name_length

pytestmark = pytest.mark.root

BPF_DIR = DEFAULT_OBJECT.parent


def build_forced_fallback(out: Path) -> Path:
    obj = out / "podlock-probe-read.bpf.o"
    subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
         "-DPODLOCK_FORCE_PROBE_READ", f"-I{BPF_DIR}", "-c", str(BPF_DIR / "podlock.bpf.c"),
         "-o", str(obj)],
        check=True,
    )  # fmt: skip
    return obj


def test_the_probe_read_branch_names_files_exactly(e2e_dir: Path, image: Path) -> None:
    loader = Loader(procscan.host_mnt_ns(), obj_path=build_forced_fallback(e2e_dir))
    loader.start()
    container = None
    try:
        # started after the probes: its cgroup and its exec session are labelled in the kernel
        container = start_container(e2e_dir / "containers", image, readonly=False)
        wanted, vpid = write_every_name_length(container)
        seen: dict[str, RawFile] = {}
        deadline = time.monotonic() + 60
        while not wanted <= seen.keys() and time.monotonic() < deadline:
            for data in loader.poll(100):
                raw = decode(data)
                if isinstance(raw, RawFile):
                    seen[raw.path] = raw
        assert wanted <= seen.keys(), f"missing {wanted - seen.keys()}"
        for path in wanted:
            assert seen[path].hdr.comm == "busybox-15chars"
            assert seen[path].hdr.vpid == vpid != seen[path].hdr.pid
    finally:
        if container is not None:
            stop_container(container)
        loader.close()
