"""Shared fixtures: the embedded policy."""

from __future__ import annotations

import pytest

from webhook.config import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings(None)
