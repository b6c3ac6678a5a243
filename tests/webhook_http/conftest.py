"""Fixtures for the HTTP/TLS edge tests; the helpers they use live in http_support.py, which
test modules import too (pytest runs with --import-mode=importlib, so put this directory on
the path once, here)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_support import bundle, cert_dir, example_raw, launch, server

__all__ = ["bundle", "cert_dir", "example_raw", "launch", "server"]
