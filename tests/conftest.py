"""Shared fixtures: the embedded policy. The helper modules in support/ are importable from
every test directory (pytest runs with --import-mode=importlib, so put it on the path here;
not tests/ itself, whose webhook/ directory would shadow the package)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from webhook.config import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(None)
