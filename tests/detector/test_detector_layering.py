"""Layering: rule matching and outputs never import the BPF loader, libbpf, the
kubernetes client or Flask; the engine works on a machine without any of them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

DETECTOR = Path(__file__).resolve().parents[2] / "detector"
PURE = [
    "detector.alerts",
    "detector.condition.compiler",
    "detector.config",
    "detector.engine",
    "detector.fields",
    "detector.k8s",
    "detector.metrics",
    "detector.outputs",
    "detector.rules",
]
FORBIDDEN = ("detector.loader", "detector.libbpf", "kubernetes", "flask", "ctypes")


def test_importing_the_engine_side_loads_no_forbidden_module() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {PURE!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if m.startswith(FORBIDDEN)]
    assert bad == []


@pytest.mark.parametrize(
    "path",
    sorted(
        str(p.relative_to(DETECTOR))
        for pattern in ("condition/*.py", "outputs/*.py", "engine.py", "rules.py", "fields.py",
                        "config.py", "alerts.py", "ratelimit.py", "sessions.py", "k8s.py",
                        "metrics.py")
        for p in DETECTOR.glob(pattern)
    ),
)  # fmt: skip
def test_no_static_import_of_the_loader(path: str) -> None:
    tree = ast.parse((DETECTOR / path).read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    assert [n for n in names if n.startswith(("detector.loader", "detector.libbpf"))] == []
