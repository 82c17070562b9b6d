"""The installed ``kairos`` executable drives the real engines: simulate, apply, backfill, stream, parity.

Each command runs as its own process, as a user runs it, on one small log in a temporary
data directory. Spark's backfill and Bytewax's replay, started by the two commands with
their defaults, must give the same change points per view (the same interval, the same
expiries), and the stream must leave the Feast online store readable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

from conf.settings import Settings
from features.registry import REGISTRY

KAIROS = shutil.which("kairos", path=str(Path(sys.executable).parent)) or "kairos"


def kairos(*args: str) -> str:
    proc = subprocess.run([KAIROS, *args], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, f"kairos {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def table_counts(out: str) -> dict[str, int]:
    return {m[0]: int(m[1].replace(",", "")) for m in re.findall(r"^│ (\w+)\s+│\s+([\d,]+) │$", out, flags=re.M)}


def test_the_commands_run_the_engines_alike(tmp_settings: Settings) -> None:
    out = kairos("simulate", "--users", "80", "--days", "2", "--seed", "3")
    assert "events for 80 users" in out

    out = kairos("apply")
    assert f"{len(REGISTRY.services)} feature services" in out and str(tmp_settings.data_path / "registry.db") in out

    arrivals = ds.dataset(tmp_settings.events_path, partitioning="hive").to_table(columns=["ingest_time"])
    last = pc.max(arrivals.column("ingest_time")).as_py()
    end = (last + timedelta(days=1)).date()  # the midnight after the last arrival: the stream's default end
    out = kairos("backfill", "--end", end.isoformat())
    spark = table_counts(out)
    assert set(spark) == {v.name for v in REGISTRY.views}, out
    assert all(n > 0 for n in spark.values())
    for view in REGISTRY.views:
        assert f"spark steps: {view.name}: {spark[view.name]:,} change points" in out
    assert "log4j" not in out and (tmp_settings.data_path / "logs" / "kairos.log").exists()

    out = kairos("stream", "--workers", "1")
    stream = table_counts(out)
    assert stream == spark, out
    events = ds.dataset(tmp_settings.events_path, partitioning="hive").count_rows()
    assert f"bytewax replay: {events:,}/{events:,} events" in out
    assert (tmp_settings.data_path / "stream.jsonl").exists()  # written from the event log for the replay

    assert table_counts(kairos("stream", "--report-only")) == stream

    from pipelines.store.online import read_online
    from pipelines.store.repo import feature_store

    user = ds.dataset(tmp_settings.events_path, partitioning="hive").to_table(columns=["user_id"]).column(0)[0]
    row = read_online(feature_store(tmp_settings), ["user_account:user_logins_7d"], [{"user_id": user.as_py()}])[0]
    assert row["user_logins_7d"] is not None


def test_parity_command_reports_zero_disagreements(tmp_settings: Settings) -> None:
    out = kairos("parity", "--users", "40", "--days", "2", "--workers", "1")
    assert "0 disagreements ->" in out, out[-3000:]
    assert "bytewax replay:" in out and "compare reference, spark, bytewax: " in out
    assert (tmp_settings.data_path / "parity-run" / "parity" / "report.json").exists()
