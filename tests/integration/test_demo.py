"""`make demo` end to end on the embedded defaults, in a temporary data directory."""

from __future__ import annotations

import pytest

from conf.settings import Settings
from kairos.demo import run


def test_demo_runs_end_to_end(tmp_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    summary = run(tmp_settings, users=120, days=5)
    out = capsys.readouterr().out
    assert summary["events"] > 1_000
    assert summary["dead_lettered"] == 3
    assert summary["online_mismatches"] == 0
    assert summary["training_mismatches"] == 0
    assert summary["parity_mismatches"] == 0
    assert set(summary["models"]) == {"purchase_propensity", "churn"}
    assert all(m["alias"] == "champion" for m in summary["models"].values())  # a fresh registry: first is champion
    for text in ("1. Simulate", "amount: must be >= 0, got -12.5", "user_total_spend_30d", "session_cart_idle_seconds",
                 "registered 2 entities, 3 feature views, 3 on-demand views, 3 feature services",
                 "spark: session_activity:", "training set: 2,003 decision points", "bytewax (1 worker)",
                 "0 disagreements between the reference, Spark, Bytewax and Feast",
                 "0 mismatches against the reference", "6. Train", "oracle"):
        assert text in out
    assert (tmp_settings.data_path / "registry.db").exists()
    assert any((tmp_settings.events_path).rglob("*.parquet"))
