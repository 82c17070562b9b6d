"""Shared fixtures: settings pointing at a temporary data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conf.settings import Settings, load_settings


def settings_in(path: Path, **overrides: object) -> Settings:
    return load_settings(data_dir=path, online_store={"type": "sqlite", "path": str(path / "online.db")},
                         **overrides)


@pytest.fixture
def tmp_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose every path is under a fresh temporary directory (also for subprocesses via env)."""
    monkeypatch.setenv("KAIROS__DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KAIROS__ONLINE_STORE__PATH", str(tmp_path / "online.db"))
    yield settings_in(tmp_path)
