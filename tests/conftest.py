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


@pytest.fixture(scope="session")
def core_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The embedded policy with `profile: core`: podlock as it was before the strict rules."""
    path = tmp_path_factory.mktemp("policy") / "core.yaml"
    path.write_text("profile: core\n")
    return load_settings(str(path))
