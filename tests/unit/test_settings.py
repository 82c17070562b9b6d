from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from conf.settings import REPO_ROOT, load_settings, parse_duration


def test_defaults_are_the_embedded_stack() -> None:
    s = load_settings()
    assert s.online_store.type == "sqlite"
    assert s.offline_store.type == "file"
    assert s.spark.master == "local[2]"
    assert s.mlflow.tracking_uri.startswith("sqlite:")
    assert s.events.allowed_lateness == timedelta(hours=1)
    assert s.data_path == REPO_ROOT / "var" / "data"


def test_environment_overrides_nested_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS__ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("KAIROS__ONLINE_STORE__CONNECTION_STRING", "10.0.0.5:6379")
    monkeypatch.setenv("KAIROS__SPARK__MASTER", "spark://spark-master:7077")
    monkeypatch.setenv("KAIROS__EVENTS__ALLOWED_LATENESS", "15m")
    s = load_settings()
    assert (s.online_store.type, s.online_store.connection_string) == ("redis", "10.0.0.5:6379")
    assert s.spark.master == "spark://spark-master:7077"
    assert s.events.allowed_lateness == timedelta(minutes=15)


def test_another_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "prod.yaml"
    cfg.write_text("data_dir: /srv/kairos\nstream:\n  source: kafka\n  brokers: broker:9092\n")
    monkeypatch.setenv("KAIROS_CONFIG", str(cfg))
    s = load_settings()
    assert s.data_path == Path("/srv/kairos") and s.stream.source == "kafka"
    assert s.online_store.type == "sqlite"  # untouched sections keep their defaults


def test_bad_values_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS__ONLINE_STORE__TYPE", "cassandra")
    with pytest.raises(ValidationError, match=r"online_store\.type"):
        load_settings()
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration("soon")
    monkeypatch.setenv("KAIROS__ONLINE_STORE__TYPE", "sqlite")
    monkeypatch.setenv("KAIROS__STREAM__BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match=r"stream\.batch_size"):
        load_settings()
