"""One typed settings object for jobs, DAGs and services.

Loaded from ``conf/kairos.yaml`` (or the file named by ``KAIROS_CONFIG``), then
overridden by environment variables ``KAIROS__SECTION__KEY``. Nothing else in
Kairos reads connection strings or paths from anywhere.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "kairos.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration like '15m', '1h' or '7d'")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSettings(_Section):
    allowed_lateness: timedelta = timedelta(hours=1)

    @field_validator("allowed_lateness", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class OnlineStoreSettings(_Section):
    type: Literal["sqlite", "redis"] = "sqlite"
    path: str = "var/data/online.db"
    connection_string: str = ""


class OfflineStoreSettings(_Section):
    type: Literal["file", "spark"] = "file"


class SparkSettings(_Section):
    master: str = "local[2]"
    app_name: str = "kairos"
    shuffle_partitions: int = 4
    driver_memory: str = "4g"
    conf: dict[str, str] = Field(default_factory=dict)


class StreamSettings(_Section):
    source: Literal["file", "kafka"] = "file"
    brokers: str = ""
    topic: str = "kairos.events"
    workers: int = 1


class MlflowSettings(_Section):
    tracking_uri: str = "sqlite:///var/data/mlflow.db"
    registry_uri: str = ""


class SimulatorSettings(_Section):
    seed: int = 7
    users: int = 2000
    days: int = 14
    start: datetime = datetime(2026, 10, 1, tzinfo=UTC)
    duplicate_rate: float = Field(default=0.01, ge=0, le=1)
    out_of_order_rate: float = Field(default=0.05, ge=0, le=1)
    late_rate: float = Field(default=0.01, ge=0, le=1)

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("start must carry a timezone (UTC)")
        return v.astimezone(UTC)


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not self.path.exists():
            raise FileNotFoundError(f"settings file {self.path} does not exist")
        data = yaml.safe_load(self.path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"settings file {self.path} must hold a mapping")
        return data


class Settings(BaseSettings):
    """Kairos settings. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix="KAIROS__", env_nested_delimiter="__", extra="forbid",
                                      frozen=True)

    project: str = "kairos"
    data_dir: Path = Path("var/data")
    events: EventSettings = EventSettings()
    online_store: OnlineStoreSettings = OnlineStoreSettings()
    offline_store: OfflineStoreSettings = OfflineStoreSettings()
    spark: SparkSettings = SparkSettings()
    stream: StreamSettings = StreamSettings()
    mlflow: MlflowSettings = MlflowSettings()
    simulator: SimulatorSettings = SimulatorSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("KAIROS_CONFIG", DEFAULT_CONFIG))
        return (init_settings, env_settings, _YamlSource(settings_cls, path))

    # -- derived paths -------------------------------------------------------------------
    def resolve(self, p: str | Path) -> Path:
        path = Path(p)
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def events_path(self) -> Path:
        return self.data_path / "events"

    @property
    def dead_letter_path(self) -> Path:
        return self.data_path / "dead_letter"

    @property
    def offline_path(self) -> Path:
        return self.data_path / "offline"

    @property
    def feature_repo_path(self) -> Path:
        return self.data_path / "feature_repo"

    @property
    def online_store_path(self) -> Path:
        return self.resolve(self.online_store.path)


def load_settings(**overrides: Any) -> Settings:
    """Settings from YAML, then environment, then explicit keyword overrides."""
    return Settings(**overrides)
