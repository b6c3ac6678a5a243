"""Shared fixtures: the repository root and the embedded policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(None)
