"""The release artefacts, built the way a release is: `make wheel` once per session.

The tests install and run what was built outside the checkout, as a user would.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def root() -> None:
    if os.geteuid() != 0:
        # A failure, not a skip: a skipped release test would pass CI while proving nothing.
        pytest.fail("this release test runs eBPF or containers, which need root: run it as root")


@pytest.fixture(scope="session")
def wheel() -> Path:
    subprocess.run(["make", "--no-print-directory", "wheel"], cwd=ROOT, check=True)
    (built,) = (ROOT / "dist").glob("podlock-*.whl")
    return built
