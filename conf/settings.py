"""One typed settings object for jobs, DAGs and services.

Loaded from a YAML file, then overridden by environment variables
``KAIROS__SECTION__KEY``. Nothing else in Kairos reads connection strings or paths
from anywhere.

Where things are, so that a checkout, an installed wheel and a built bento behave alike:

* **home**: ``KAIROS_HOME`` if set, else the working directory. Relative paths in
  settings (``data_dir``, ``online_store.path``, a relative sqlite MLflow URI) are
  resolved against it, never against the source tree.
* **the YAML file**: ``KAIROS_CONFIG`` if set; else ``<home>/conf/kairos.yaml`` if
  it exists (a checkout run from its root); else the defaults shipped inside this
  package (``conf/kairos.yaml``, which a wheel and a bento carry).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PACKAGED_CONFIG = Path(__file__).resolve().parent / "kairos.yaml"  # the embedded defaults, shipped with the package


def kairos_home() -> Path:
    """Where relative paths in settings point: ``KAIROS_HOME``, else the working directory."""
    return Path(os.environ.get("KAIROS_HOME") or Path.cwd()).resolve()


def config_path() -> Path:
    """The settings file: ``KAIROS_CONFIG``, else ``<home>/conf/kairos.yaml``, else the packaged defaults."""
    named = os.environ.get("KAIROS_CONFIG")
    if named:
        return Path(named)
    local = kairos_home() / "conf" / "kairos.yaml"
    return local if local.exists() else PACKAGED_CONFIG

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
    # Events per source read (the replay file; at most per Kafka poll, which returns what is there). A big
    # batch holds many events of each active key, so each key's per-call costs in the keyed step are shared:
    # 5,000 -> 50,000 took a 1,000-user replay from 11.8 to 9.0 s. A live stream still moves in small batches.
    batch_size: int = Field(default=50_000, gt=0)
    # Where the stream writes trigger firings (features/trigger_catalog.py): ``log``, the embedded trigger log
    # (JSON lines under :attr:`Settings.trigger_log_path`, beside the changelog), or ``kafka``, the topic
    # ``trigger_topic`` on ``brokers`` (keyed by ``fire_id``: consumers deduplicate by it).
    trigger_output: Literal["log", "kafka"] = "log"
    trigger_topic: str = "kairos.triggers"


class MlflowSettings(_Section):
    """Where runs, artifacts and registered models live.

    ``tracking_uri`` is a database URI (``sqlite:///...``, ``postgresql://...``) or an
    MLflow server URL (``http(s)://...``). ``{data_dir}`` in ``tracking_uri``,
    ``registry_uri`` and ``artifact_location`` stands for :attr:`Settings.data_path`,
    and a relative ``sqlite:///`` path is resolved against the repository root, like
    every other relative path (see :meth:`Settings.mlflow_tracking_uri`).
    """

    tracking_uri: str = "sqlite:///var/data/mlflow.db"
    registry_uri: str = ""
    # Artifact root of new experiments. Empty: ``<data_path>/mlartifacts`` for a local
    # (sqlite/file) store, the server's own default for an MLflow server.
    artifact_location: str = ""
    experiment_prefix: str = "kairos"  # experiments are named <prefix>/<model>
    registered_model_prefix: str = "kairos"  # registered models are named <prefix>-<model>


class ModelTrainingSettings(_Section):
    """One model: its feature service, label horizon, label-rate band and validation limits."""

    feature_service: str
    horizon: timedelta
    # train rows end this long before the first test row, so no train label looks into the test period
    embargo: timedelta
    label_rate_min: float = Field(ge=0, le=1)
    label_rate_max: float = Field(ge=0, le=1)
    max_null_rate: float = Field(default=0.0, ge=0, le=1)
    # features of the service the model leaves out, each with the reason (recorded in the run)
    exclude_features: dict[str, str] = Field(default_factory=dict)

    @field_validator("horizon", "embargo", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)


class ChurnTrainingSettings(ModelTrainingSettings):
    # "simulator": the user stops for good within the horizon (the simulator's churn_stop, from the truth);
    # "inactivity": no activity for ``inactivity`` after the session of the decision point (from the log)
    label: Literal["simulator", "inactivity"] = "simulator"
    inactivity: timedelta = timedelta(days=14)

    @field_validator("inactivity", mode="before")
    @classmethod
    def _inactivity(cls, v: Any) -> timedelta:
        return parse_duration(v)


class XGBoostSettings(_Section):
    max_rounds: int = Field(default=600, ge=1)
    early_stopping_rounds: int = Field(default=40, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    max_depth: list[int] = Field(default_factory=lambda: [2, 3, 4])  # a small grid, chosen by cross-validation
    min_child_weight: list[float] = Field(default_factory=lambda: [10.0, 50.0])
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.5, gt=0, le=1)
    reg_lambda: float = Field(default=5.0, ge=0)
    nthread: int = Field(default=2, ge=1)


class TrainingTaskSettings(_Section):
    """A training task a user configures for their own log (``training.tasks.<name>``), with no code change.

    * ``decision_points``: ``in_session`` (moments inside sessions, as serving asks: today's purchase model) or
      ``cutoffs``: every customer seen before each cutoff date, on ``schedule`` (monthly: the 1st of each month,
      UTC), from ``first_cutoff`` or the first schedule date at least ``min_history`` after the log's first event,
      as a CRM trains a churn or repurchase model;
    * ``target``: ``purchase`` (the customer buys within ``horizon`` after the decision point) or ``churn`` (no
      event of the customer within ``horizon``);
    * the split: with cutoffs, the latest ``test_cutoffs`` cutoffs are the holdout and a train cutoff's label window
      ends by the first test cutoff (``cutoff + horizon <= first test cutoff``), so no training label looks into
      the test period; in session, ``training.test_fraction`` and ``embargo``;
    * ``baselines``: besides logistic regression, ``bgnbd`` fits the classical BG/NBD model on the same train
      period (it reads frequency, recency and age from the feature service: ``customer_value_v1`` has them).
    """

    feature_service: str
    decision_points: Literal["in_session", "cutoffs"] = "cutoffs"
    target: Literal["purchase", "churn"] = "purchase"
    horizon: timedelta
    schedule: Literal["daily", "weekly", "monthly"] = "monthly"
    first_cutoff: datetime | None = None
    min_history: timedelta = timedelta(days=90)
    test_cutoffs: int = Field(default=3, ge=1)
    embargo: timedelta = timedelta(0)  # in session only: the gap between the last train and the first test point
    baselines: tuple[Literal["bgnbd"], ...] = ("bgnbd",)
    label_rate_min: float = Field(default=0.01, ge=0, le=1)
    label_rate_max: float = Field(default=0.99, ge=0, le=1)
    max_null_rate: float = Field(default=0.0, ge=0, le=1)
    exclude_features: dict[str, str] = Field(default_factory=dict)

    @field_validator("horizon", "min_history", "embargo", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @field_validator("first_cutoff")
    @classmethod
    def _midnight(cls, v: datetime | None) -> datetime | None:
        if v is not None and (v.tzinfo is None or v.utcoffset() != timedelta(0)
                              or v != v.replace(hour=0, minute=0, second=0, microsecond=0)):
            raise ValueError(f"first_cutoff must be a UTC midnight, got {v!r}")
        return v


BUILTIN_TASKS = ("purchase_propensity", "churn")  # trained from training.purchase and training.churn


class TrainingSettings(_Section):
    seed: int = 7
    # decision points sampled per session, at the moments of its events (0: every event of the session)
    decision_points_per_session: int = Field(default=4, ge=0)
    test_fraction: float = Field(default=0.3, gt=0, lt=1)  # the latest share of decision time is the holdout
    cv_folds: int = Field(default=3, ge=2)  # forward-chaining folds inside the train period
    promotion_metric: Literal["auc", "pr_auc"] = "auc"
    promotion_margin: float = Field(default=0.002, ge=0)  # a challenger must beat the champion by this much
    calibration_bins: int = Field(default=10, ge=2)
    # calendar features are left out while the train period is shorter than this (each weekday seen too rarely)
    calendar_features: list[str] = Field(default_factory=lambda: ["request_day_of_week"])
    calendar_min_span: timedelta = timedelta(days=21)
    purchase: ModelTrainingSettings = ModelTrainingSettings(
        feature_service="purchase_propensity_v1", horizon=timedelta(hours=24), embargo=timedelta(hours=24),
        label_rate_min=0.01, label_rate_max=0.5)
    churn: ChurnTrainingSettings = ChurnTrainingSettings(
        feature_service="churn_v1", horizon=timedelta(days=7), embargo=timedelta(days=1),
        label_rate_min=0.01, label_rate_max=0.6)
    xgboost: XGBoostSettings = XGBoostSettings()
    # the tasks `kairos train` runs: the built-in two and/or names under ``tasks``
    run: tuple[str, ...] = BUILTIN_TASKS
    tasks: dict[str, TrainingTaskSettings] = Field(default_factory=dict)

    @field_validator("calendar_min_span", mode="before")
    @classmethod
    def _span(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @model_validator(mode="after")
    def _known_tasks(self) -> TrainingSettings:
        clash = sorted(set(self.tasks) & set(BUILTIN_TASKS))
        if clash:
            raise ValueError(f"training.tasks {clash} reuse a built-in task's name")
        unknown = [t for t in self.run if t not in BUILTIN_TASKS and t not in self.tasks]
        if unknown:
            raise ValueError(f"training.run names {unknown}, which are neither built-in tasks {list(BUILTIN_TASKS)} "
                             f"nor under training.tasks ({sorted(self.tasks)})")
        return self


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


Scope = Literal["events:write", "score", "admin"]
SCOPES: tuple[Scope, ...] = ("events:write", "score", "admin")


class ApiKeySettings(_Section):
    """One API key, stored as its salted hash (``kairos keys create`` prints the key once, never stores it)."""

    name: str = Field(min_length=1)
    key_id: str = Field(pattern=r"^[0-9a-f]{8,32}$")  # the public part of the key, to find its record
    hash: str = Field(pattern=r"^sha256\$[0-9a-f]{32}\$[0-9a-f]{64}$")  # sha256$<salt>$<hmac-sha256(salt, key)>
    scopes: tuple[Scope, ...] = Field(min_length=1)


class RateLimitSettings(_Section):
    """A token bucket per API key: ``rate`` requests per second on average, bursts up to ``burst``."""

    rate: float = Field(default=500.0, gt=0)
    burst: int = Field(default=1000, ge=1)


class ServingSettings(_Section):
    """The BentoML service (``serving/service.py``)."""

    models: tuple[str, ...] = ("purchase_propensity", "churn")  # each served from its ``champion`` alias
    workers: int = Field(default=1, ge=1)  # processes; each loads the champions and its own connections
    threads: int = Field(default=4, ge=1)  # per worker, for blocking I/O (event appends, model loads)
    feature_budget: timedelta = timedelta(milliseconds=15)  # past this, answer with cold-start defaults, degraded
    reload_interval: timedelta = timedelta(seconds=30)  # how often to look for a moved champion alias
    max_request_bytes: int = Field(default=1_000_000, ge=1)
    max_events_per_batch: int = Field(default=1000, ge=1)
    keys: tuple[ApiKeySettings, ...] = ()  # keys given in configuration (hashes only)
    keys_file: str = ""  # keys created by ``kairos keys create`` (hashes only); empty: data_dir/api_keys.yaml
    rate_limit: RateLimitSettings = RateLimitSettings()
    access_log: bool = False  # BentoML's line per request (its cost shows at hundreds of requests a second)
    # OpenTelemetry spans for /v1/ requests (BentoML's ASGI middleware; its cost shows too): on with an exporter
    tracing: bool = False
    events_log: str = ""  # the embedded event topic (the stream's replay file); empty: data_dir/stream.jsonl
    # the decision layer (POST /v1/decide, /v1/outcomes): its policy (empty: the packaged conf/policy.yaml), how long
    # after a decision its outcome is attributed to it, and how the decision and outcome logs are buffered
    policy_file: str = ""
    attribution_window: timedelta = timedelta(hours=24)
    decision_log_flush_rows: int = Field(default=500, ge=1)
    decision_log_flush_interval: timedelta = timedelta(seconds=5)

    @field_validator("feature_budget", "reload_interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @field_validator("attribution_window", "decision_log_flush_interval", mode="before")
    @classmethod
    def _decision_duration(cls, v: Any) -> timedelta:
        return parse_duration(v)


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
    # relative paths resolve against this (KAIROS_HOME or the working directory when the settings were loaded)
    home: Path = Field(default_factory=kairos_home)
    data_dir: Path = Path("var/data")
    events: EventSettings = EventSettings()
    online_store: OnlineStoreSettings = OnlineStoreSettings()
    offline_store: OfflineStoreSettings = OfflineStoreSettings()
    spark: SparkSettings = SparkSettings()
    stream: StreamSettings = StreamSettings()
    mlflow: MlflowSettings = MlflowSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    training: TrainingSettings = TrainingSettings()
    serving: ServingSettings = ServingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, config_path()))

    # -- derived paths -------------------------------------------------------------------
    def resolve(self, p: str | Path) -> Path:
        """``p`` if absolute, else under :attr:`home`."""
        path = Path(p)
        return path if path.is_absolute() else self.home / path

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
    def trigger_log_path(self) -> Path:
        """The stream's embedded trigger log (JSON lines, one firing a line), beside its changelog."""
        return self.data_path / "stream" / "triggers"

    @property
    def trigger_table_path(self) -> Path:
        """The offline table of trigger firings Spark computes from the event log (parquet by ``fire_date``)."""
        return self.data_path / "offline_triggers"

    @property
    def feature_repo_path(self) -> Path:
        return self.data_path / "feature_repo"

    @property
    def online_store_path(self) -> Path:
        return self.resolve(self.online_store.path)

    @property
    def truth_path(self) -> Path:
        """The simulator's latent truth, written beside the events."""
        return self.data_path / "truth"

    @property
    def keys_path(self) -> Path:
        """Where ``kairos keys create`` stores API key hashes."""
        return self.resolve(self.serving.keys_file) if self.serving.keys_file else self.data_path / "api_keys.yaml"

    @property
    def events_log_path(self) -> Path:
        """The embedded event topic, which the stream replays and the service appends accepted events to when
        ``stream.source`` is ``file``."""
        return self.resolve(self.serving.events_log) if self.serving.events_log else self.data_path / "stream.jsonl"

    @property
    def validation_docs_path(self) -> Path:
        """Great Expectations Data Docs (HTML)."""
        return self.data_path / "validation" / "docs"

    def _mlflow_uri(self, uri: str) -> str:
        uri = uri.replace("{data_dir}", str(self.data_path))
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/") and not uri.endswith(":memory:"):
            uri = prefix + str(self.resolve(uri[len(prefix):]))
        return uri

    @property
    def mlflow_tracking_uri(self) -> str:
        """``mlflow.tracking_uri`` with ``{data_dir}`` filled in and a relative sqlite path made absolute."""
        return self._mlflow_uri(self.mlflow.tracking_uri)

    @property
    def mlflow_registry_uri(self) -> str:
        """``mlflow.registry_uri`` resolved the same way; empty means the tracking URI."""
        return self._mlflow_uri(self.mlflow.registry_uri) if self.mlflow.registry_uri else self.mlflow_tracking_uri

    @property
    def mlflow_artifact_location(self) -> str | None:
        """Artifact root for new experiments, or ``None`` to leave it to an MLflow server."""
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location.replace("{data_dir}", str(self.data_path))
        if self.mlflow_tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.mlflow_tracking_uri:
            return (self.data_path / "mlartifacts").as_uri()
        return None


def load_settings(**overrides: Any) -> Settings:
    """Settings from YAML, then environment, then explicit keyword overrides."""
    return Settings(**overrides)
