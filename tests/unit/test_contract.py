"""The model contract round-trips through its artifact and names what is wrong with a bad one."""

from __future__ import annotations

import pytest

from features.registry import REGISTRY
from training.contract import ModelContract

SERVICE = REGISTRY.service("churn_v1")
CONTRACT = ModelContract(model="churn", registered_model="kairos-churn", feature_service=SERVICE.name,
                         feature_refs=SERVICE.feature_refs[:2], features=tuple(r.split(":")[1] for r in
                                                                                 SERVICE.feature_refs[:2]),
                         entity_keys=("user_id",), label="no session within 14 days", training_set_sha256="ab" * 32)


def test_round_trip_and_service() -> None:
    data = CONTRACT.to_json()
    assert data["features"] == list(CONTRACT.features)  # JSON lists, not tuples
    assert ModelContract.from_json(data) == CONTRACT
    assert CONTRACT.service() is SERVICE


@pytest.mark.parametrize(("change", "message"), [
    ({"features": None}, "'features' must be a list of names"),
    ({"feature_service": 3}, "'feature_service' must be a string"),
    ({"surprise": "x"}, r"unknown fields \['surprise'\]"),
])
def test_bad_artifacts_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelContract.from_json({**CONTRACT.to_json(), **change})
    data = CONTRACT.to_json()
    del data["training_set_sha256"]
    with pytest.raises(ValueError, match=r"lacks \['training_set_sha256'\]"):
        ModelContract.from_json(data)
