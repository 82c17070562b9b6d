from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from conf.settings import PACKAGED_CONFIG, config_path, load_settings, parse_duration


def test_defaults_are_the_embedded_stack() -> None:
    s = load_settings()
    assert s.online_store.type == "sqlite"
    assert s.offline_store.type == "file"
    assert s.spark.master == "local[2]"
    assert s.mlflow.tracking_uri.startswith("sqlite:")
    assert s.events.allowed_lateness == timedelta(hours=1)
    assert s.data_path == Path.cwd() / "var" / "data"


def test_relative_paths_resolve_against_kairos_home_not_the_source_tree(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed wheel or a bento runs outside the checkout: its data is under KAIROS_HOME (or the working
    directory), and the packaged defaults are found without a conf/ folder there."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("KAIROS_HOME", str(home))
    assert config_path() == PACKAGED_CONFIG  # no conf/kairos.yaml under home: the shipped defaults
    s = load_settings()
    assert s.data_path == home / "var" / "data"
    assert s.online_store_path == home / "var" / "data" / "online.db"
    assert s.mlflow_tracking_uri.startswith(f"sqlite:///{home}/")
    monkeypatch.delenv("KAIROS_HOME")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no KAIROS_HOME: the working directory
    assert load_settings().data_path == elsewhere / "var" / "data"
    (elsewhere / "conf").mkdir()
    (elsewhere / "conf" / "kairos.yaml").write_text("data_dir: mine\n")
    assert config_path() == elsewhere / "conf" / "kairos.yaml"  # a local conf/ wins over the packaged one
    assert load_settings().data_path == elsewhere / "mine"


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
