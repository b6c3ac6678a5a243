"""`podlock version`: which podlock this is, and whether its native parts are in place.

The admission path is compiled when its modules were imported from mypyc extensions (a wheel,
the image, or `make compile`); the BPF object's build id is the SHA-256 of its bytes, so two
installations load the same probes exactly when their ids match.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import sys
from importlib import metadata
from pathlib import Path

from detector.loader import DEFAULT_OBJECT


def compiled_modules() -> list[str]:
    """The admission modules that run as compiled code, after importing the whole path."""
    importlib.import_module("webhook.review")  # the hub: imports every admission module
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if name.startswith("webhook.")
        and not name.startswith("webhook._")  # mypyc's shared library, not a module of ours
        and (getattr(module, "__file__", None) or "").endswith(suffixes)
    )


def bpf_build_id(path: Path = DEFAULT_OBJECT) -> str | None:
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def run(args: argparse.Namespace) -> int:
    del args  # no options
    compiled = compiled_modules()
    build_id = bpf_build_id()
    print(f"podlock {metadata.version('podlock')}")
    if compiled:
        print(f"admission path: compiled ({', '.join(compiled)})")
    else:
        print("admission path: interpreted (no mypyc build; `make compile` makes one)")
    if build_id:
        print(f"bpf object: {build_id} ({DEFAULT_OBJECT})")
    else:
        print(f"bpf object: missing ({DEFAULT_OBJECT}; `make bpf` builds it)")
    print(f"python: {sys.version.split()[0]} ({sys.executable})")
    return 0
