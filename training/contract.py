"""The model contract: what a registered model version was trained on, in one typed home.

Training writes it with every run (``features.json``, :data:`FEATURES_ARTIFACT`);
the promotion gate and serving read it back through :meth:`ModelContract.from_json`.
It names the feature service, the exact feature list (in the model's column order),
the entity keys, the label, and the fingerprint of the training set, so a consumer
can check that it feeds the model exactly what it learned from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass
from typing import Any, Final

from features.registry import REGISTRY, Registry
from features.spec import FeatureService

FEATURES_ARTIFACT: Final = "features.json"


@dataclass(frozen=True)
class ModelContract:
    model: str  # the task (purchase, churn)
    registered_model: str  # its name in the MLflow registry
    feature_service: str
    feature_refs: tuple[str, ...]  # ``view:feature`` of every stored or on-demand feature the model reads
    features: tuple[str, ...]  # the model's input columns, in order
    entity_keys: tuple[str, ...]
    label: str  # the label's definition, in words
    training_set_sha256: str  # training.datasets.fingerprint of the training frame
    dtype: str = "float64"  # what every input column is cast to

    def service(self, registry: Registry = REGISTRY) -> FeatureService:
        """The spec of the feature service the model was trained on."""
        return registry.service(self.feature_service)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelContract:
        """The contract from its artifact; a missing or malformed field is named."""
        fields = cls.__dataclass_fields__
        missing = [n for n, f in fields.items() if n not in data and f.default is MISSING]
        if missing:
            raise ValueError(f"model contract ({FEATURES_ARTIFACT}) lacks {missing}")
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"model contract ({FEATURES_ARTIFACT}) has unknown fields {unknown}")
        values: dict[str, Any] = {}
        for name in fields:
            if name not in data:
                continue
            v = data[name]
            if name in ("feature_refs", "features", "entity_keys"):
                if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
                    raise ValueError(f"model contract field {name!r} must be a list of names, got {v!r}")
                v = tuple(v)
            elif not isinstance(v, str):
                raise ValueError(f"model contract field {name!r} must be a string, got {v!r}")
            values[name] = v
        return cls(**values)
