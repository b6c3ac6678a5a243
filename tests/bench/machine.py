"""What the benchmarks share: what they report about the machine they ran on, and the e2e
tests' runc helpers for those that run containers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" when it cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
        "unknown",
    )


def load_harness() -> Any:
    """The e2e tests' runc helpers (tests/detector/e2e/conftest.py)."""
    path = ROOT / "tests" / "detector" / "e2e" / "conftest.py"
    spec = importlib.util.spec_from_file_location("podlock_e2e_harness", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module
