"""serving.predict.RowPredictor gives what Booster.inplace_predict gives, bit for bit (it mirrors XGBoost's call)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from serving.predict import RowPredictor


def _booster(objective: str, *, rounds: int = 40, depth: int = 4, seed: int = 0,
             params: dict[str, float] | None = None) -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 12))
    x[rng.random(x.shape) < 0.2] = np.nan  # missing values take the trees' default branches
    y = (np.nan_to_num(x[:, 0]) + rng.normal(size=600) > 0).astype(float)
    booster = xgb.train({"objective": objective, "max_depth": depth, "nthread": 1, "seed": seed, **(params or {})},
                        xgb.DMatrix(x, y), rounds)
    return booster, x


@pytest.mark.parametrize(("objective", "params"), [
    ("binary:logistic", {}),
    ("binary:logistic", {"base_score": 0.3, "min_child_weight": 0.5}),
    ("reg:squarederror", {}),
    ("binary:logitraw", {}),
])
def test_same_values_as_inplace_predict(objective: str, params: dict[str, float]) -> None:
    booster, x = _booster(objective, depth=7 if params else 4, params=params)
    predict = RowPredictor(booster)
    rows = np.vstack([x[:200], np.full((1, x.shape[1]), np.nan)])  # and a row of nothing but missing values
    for row in rows:
        one = np.ascontiguousarray(row[None, :], dtype=np.float64)
        assert predict(one) == float(booster.inplace_predict(one)[0])


def test_a_booster_loaded_from_json_and_one_thread(tmp_path: Path) -> None:
    """As the service loads champions: from a saved model, then set to one thread."""
    booster, x = _booster("binary:logistic", rounds=80)
    booster.save_model(tmp_path / "m.json")
    loaded = xgb.Booster(model_file=str(tmp_path / "m.json"))
    loaded.set_param({"nthread": 1})
    predict = RowPredictor(loaded)
    values = [predict(np.ascontiguousarray(r[None, :])) for r in x[:50]]
    assert values == [float(booster.inplace_predict(r[None, :])[0]) for r in x[:50]]
    assert len(set(values)) > 10  # the rows do reach different leaves


def test_rejects_a_row_of_another_shape_or_type() -> None:
    booster, _ = _booster("binary:logistic", rounds=5)
    predict = RowPredictor(booster)
    with pytest.raises(ValueError, match="12 features"):
        predict(np.zeros((1, 11)))
    with pytest.raises(ValueError, match="float64"):
        predict(np.zeros((1, 12), dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        predict(np.zeros((12, 2)).T[:1])


def test_a_multi_output_model_is_refused() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "nthread": 1}, xgb.DMatrix(
        x, rng.integers(0, 3, 300)), 5)
    with pytest.raises(RuntimeError, match="one value expected"):
        RowPredictor(booster)(np.ascontiguousarray(x[:1]))
