"""``kairos demo`` (``make demo``) end to end on the embedded defaults, in a temporary data directory."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from conf.settings import Settings
from features.registry import REGISTRY
from kairos.cli import app


def test_demo_runs_end_to_end(tmp_settings: Settings) -> None:
    result = CliRunner().invoke(app, ["demo", "--users", "120", "--days", "5"])
    out = result.output
    assert result.exit_code == 0, out[-3000:]
    for text in ("1. Simulate 120 users over 5 days", "amount: must be >= 0, got -12.5", "user_total_spend_30d",
                 "session_cart_idle_seconds",
                 f"registered {len(REGISTRY.entities)} entities, {len(REGISTRY.views)} feature views, "
                 f"{len(REGISTRY.on_demand_views)} on-demand views, {len(REGISTRY.services)} feature services",
                 "spark steps: session_activity:", "training set: 2,003 decision points", "bytewax (1 worker)",
                 "bytewax replay:", "purchase_propensity cross-validation:",
                 "0 disagreements between the reference, Spark, Bytewax and Feast",
                 "0 mismatches against the reference", "6. Train", "oracle",
                 "Kairos demo: every engine agrees with the reference",
                 "7. Serve: bentoml serve in the background", "champions loaded, online store reachable",
                 "POST /v1/events (3 events) -> 202: accepted 3", "POST /v1/events (a bad event) -> 422: event 0 "
                 "(demo-api-bad) amount: must be >= 0, got -3", "service stopped"):
        assert text in out, text
    # the closing table: one row per step, each with its time
    rows = re.findall(r"^│ (\d)\. ([^│]+?)\s*│.*│\s+([\d.]+)s │$", out, flags=re.M)
    assert [int(n) for n, _, _ in rows] == [1, 2, 3, 4, 5, 6, 7], out[-3000:]
    assert "3 dead-lettered" in out and "-> champion" in out  # a fresh registry: the first model is champion
    for who in ("buyer", "abandoned cart", "help-seeker"):  # each seed user scored by both champions, over HTTP
        assert re.search(rf"^   {who}\s+u\d+: purchase_propensity 0\.\d{{3}} \(v1\), churn 0\.\d{{3}} \(v1\); ",
                         out, flags=re.M), who
    # Spark's and MLflow's own logs went to the log file, not to the user
    log = tmp_settings.data_path / "logs" / "kairos.log"
    assert log.exists() and "log4j" not in out and "WARN" not in out
    assert (tmp_settings.data_path / "registry.db").exists()
    assert any((tmp_settings.events_path).rglob("*.parquet"))
