"""The champions the service scores with: loaded from the MLflow registry by alias, swapped when it moves.

Each model of ``serving.models`` is served from the version holding its ``champion`` alias
(:mod:`training.registry`), with the contract training logged beside it
(:class:`training.contract.ModelContract`: feature service, feature list in column order,
training-set fingerprint). The XGBoost booster itself is loaded (``mlflow.xgboost``), so a
score is one in-place prediction (:mod:`serving.predict`) on a float64 row, not a pandas round trip
through pyfunc.

:meth:`Champions.refresh` asks the registry which version holds each alias and loads the
versions that changed, off to the side; only then is the new :class:`Champion` put in
place, one reference assignment, so a request in flight keeps the champion it started
with and no request sees a half-loaded model. A failed load keeps the old champion and
reports the error. The service calls ``refresh`` on a timer and on its admin endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from conf.settings import Settings
from features.registry import REGISTRY, Registry
from features.spec import FeatureService
from serving.predict import RowPredictor
from training.contract import ModelContract
from training.registry import CHAMPION, client_for, model_contract, registered_model_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """One loaded model version: what scoring needs, and what a response reports."""

    model: str
    registered_model: str
    version: str
    contract: ModelContract
    booster: Any  # xgboost.Booster
    loaded_at: datetime
    predict: RowPredictor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "predict", RowPredictor(self.booster))

    @property
    def features(self) -> tuple[str, ...]:
        return self.contract.features

    def service(self, registry: Registry = REGISTRY) -> FeatureService:
        return self.contract.service(registry)

    def row(self, values: dict[str, Any]) -> npt.NDArray[np.float64]:
        """The model's input row from a feature vector (``None`` reads as NaN, XGBoost's missing value)."""
        return np.array([[np.nan if (v := values[f]) is None else float(v) for f in self.features]],
                        dtype=np.float64)

    def score(self, values: dict[str, Any]) -> float:
        """The model's value for a feature vector: ``booster.inplace_predict(row)[0]``, by :mod:`serving.predict`."""
        return self.predict(self.row(values))


@dataclass
class Refresh:
    """What one :meth:`Champions.refresh` did."""

    loaded: dict[str, str] = field(default_factory=dict)  # model -> version newly in place
    unchanged: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # no version holds the alias
    errors: dict[str, str] = field(default_factory=dict)  # model -> why the new version could not be loaded


class Champions:
    """The champion of each model (``None`` until one is registered); thread-safe."""

    def __init__(self, settings: Settings, models: Sequence[str] | None = None, *, alias: str = CHAMPION,
                 registry: Registry = REGISTRY, on_load: Callable[[Champion], None] | None = None) -> None:
        """``on_load`` is called with each champion once it is in place (at a refresh, in the caller's thread or
        the periodic check's)."""
        self.settings = settings
        self.on_load = on_load
        self.models = tuple(models if models is not None else settings.serving.models)
        self.alias = alias
        self.registry = registry
        self._current: dict[str, Champion] = {}
        self._refresh_lock = threading.Lock()  # one refresh at a time; readers never wait for it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_refresh: Refresh | None = None

    def get(self, model: str) -> Champion | None:
        return self._current.get(model)

    def all(self) -> dict[str, Champion]:
        return dict(self._current)

    @property
    def ready(self) -> bool:
        """Every model has a champion."""
        return all(m in self._current for m in self.models)

    def refresh(self) -> Refresh:
        """Load every model whose alias now names another version; keep the rest (see the module docstring)."""
        import mlflow.xgboost
        from mlflow.exceptions import MlflowException

        out = Refresh()
        with self._refresh_lock:
            client = client_for(self.settings)
            for model in self.models:
                name = registered_model_name(self.settings, model)
                try:
                    version = client.get_model_version_by_alias(name, self.alias)
                except MlflowException:
                    out.missing.append(model)
                    continue
                current = self._current.get(model)
                if current is not None and current.version == str(version.version):
                    out.unchanged[model] = current.version
                    continue
                try:
                    contract = model_contract(client, version)
                    contract.service(self.registry)  # the feature service must exist in this build's specs
                    booster = mlflow.xgboost.load_model(f"models:/{name}/{version.version}")
                    # one row per call: an OpenMP team of all cores only waits for its threads (measured ~20 ms
                    # per prediction on 2 busy cores against 0.2 ms on one thread); requests run in parallel instead
                    booster.set_param({"nthread": 1})
                    if booster.num_features() != len(contract.features):
                        raise ValueError(f"the booster reads {booster.num_features()} features, the contract "
                                         f"lists {len(contract.features)}")
                except Exception as e:  # keep serving the previous champion; say why
                    out.errors[model] = f"{name} v{version.version}: {e}"
                    log.error("could not load %s v%s: %s", name, version.version, e)
                    continue
                champion = Champion(model=model, registered_model=name, version=str(version.version),
                                    contract=contract, booster=booster, loaded_at=datetime.now(UTC))
                self._current = {**self._current, model: champion}
                out.loaded[model] = str(version.version)
                if self.on_load is not None:
                    self.on_load(champion)
                log.info("serving %s v%s (%s)", name, version.version, self.alias)
        self.last_refresh = out
        return out

    # -- the periodic check ---------------------------------------------------------------------------------------
    def watch(self, interval: float) -> None:
        """Refresh every ``interval`` seconds in a daemon thread, until :meth:`stop`."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                t0 = time.perf_counter()
                try:
                    done = self.refresh()
                except Exception as e:  # the registry is down: keep the champions, try again next time
                    log.warning("champion refresh failed: %s", e)
                    continue
                if done.loaded:
                    log.info("champions moved: %s (%.0f ms)", done.loaded, (time.perf_counter() - t0) * 1000)

        self._thread = threading.Thread(target=loop, name="kairos-champion-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
