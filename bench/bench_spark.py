"""The Spark offline engine at scale: feature build rate, and training sets against Feast's offline store.

Simulates an event log (``pipelines.ingest.simulator``), builds every feature view with
:class:`pipelines.spark.backfill.SparkBackfill`, then builds one training set
(``purchase_propensity_v1``: three views and two on-demand views) twice on the same
entity rows: with the engine's Spark as-of join, and with Feast's
``get_historical_features`` on its configured (default: file/dask) offline store
over the same offline tables. Both end as a pandas frame in the driver. Peak RSS
covers this process and its children (the JVM and Python workers). Spark is
sized by the settings (``spark.master``, ``shuffle_partitions``, ``driver_memory``).

    python -m bench.bench_spark --events 200000 --rows 100000
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from bench.common import PeakRss, write_result
from conf.settings import Settings, load_settings
from features.registry import REGISTRY
from pipelines.ingest.simulator import SimulationConfig, simulate_to_dir
from pipelines.spark.backfill import SparkBackfill
from pipelines.spark.retrieval import SparkRetrieval
from pipelines.spark.schema import to_pandas
from pipelines.store.repo import apply_repo, feature_store
from pipelines.store.retrieval import FeastRetrieval

EVENTS_PER_USER_DAY = 8.74  # mean of the default simulator settings (bench/bench_simulator.py)
SERVICE = "purchase_propensity_v1"


def entity_rows(events_dir: Path, n: int, seed: int = 11) -> pd.DataFrame:
    """``n`` training rows: random (user, session) pairs seen in the log, at random moments up to 2 hours later."""
    table = ds.dataset(str(events_dir), format="parquet", partitioning="hive").to_table(
        columns=["user_id", "session_id", "event_time"])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, table.num_rows, n)
    picked = table.take(idx).to_pandas()
    stamps = pd.to_datetime(picked["event_time"], utc=True) + pd.to_timedelta(rng.uniform(0, 7200, n), unit="s")
    return pd.DataFrame({"qid": np.arange(n), "user_id": picked["user_id"], "session_id": picked["session_id"],
                         "event_timestamp": stamps.astype("datetime64[us, UTC]"), "label": rng.integers(0, 2, n)})


def _equal(x: Any, y: Any) -> bool:
    if isinstance(x, list | np.ndarray) or isinstance(y, list | np.ndarray):
        return isinstance(x, list | np.ndarray) and isinstance(y, list | np.ndarray) and list(x) == list(y)
    if pd.isna(x) or pd.isna(y):
        return bool(pd.isna(x) and pd.isna(y))
    if isinstance(x, float) or isinstance(y, float):
        return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-9)
    return bool(x == y)


def disagreements(ours: pd.DataFrame, theirs: pd.DataFrame, names: list[str], sample: int) -> int:
    """Cells that differ (floats within 1e-9) over the first ``sample`` rows by ``qid``."""
    a = ours.sort_values("qid").head(sample).reset_index(drop=True)
    b = theirs.sort_values("qid").head(sample).reset_index(drop=True)
    assert list(a["qid"]) == list(b["qid"])
    return sum(not _equal(x, y) for n in names for x, y in zip(a[n], b[n], strict=True))


def bench_settings(work: Path) -> Settings:
    """The settings (environment and YAML, then the work directory); the Feast child rebuilds the same."""
    return load_settings(data_dir=work / "data", online_store={"type": "sqlite", "path": str(work / "online.db")})


def _feast_child(work: str, entity_path: str, out_path: str) -> None:
    """Feast's training set in a child process (so a slow or out-of-memory run can be bounded and reported)."""
    settings = bench_settings(Path(work))
    store = feature_store(settings)
    theirs = FeastRetrieval(store).training_set(pd.read_parquet(entity_path), REGISTRY.service(SERVICE))
    theirs.to_parquet(out_path)


def feast_in_child(work: Path, entity_df: pd.DataFrame, out: Path, timeout: float
                   ) -> tuple[pd.DataFrame | None, str | None]:
    """(Feast's frame, None), or (None, what went wrong: an exception, a kill, the time limit)."""
    entity_path = out.with_name("feast_entities.parquet")
    entity_df.to_parquet(entity_path)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_feast_child, args=(str(work), str(entity_path), str(out)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None, f"did not finish within {timeout:.0f}s (killed)"
    if proc.exitcode != 0:
        return None, f"child process exited with {proc.exitcode} (negative: killed by signal, e.g. -9 out of memory)"
    return pd.read_parquet(out), None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000, help="target number of events")
    p.add_argument("--rows", type=int, default=1_000_000, help="training-set rows")
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--sim-workers", type=int, default=2)
    p.add_argument("--feast-rows", type=int, default=None,
                   help="run Feast on only the first N training rows (default: all; it may not fit at scale)")
    p.add_argument("--skip-feast", action="store_true")
    p.add_argument("--feast-timeout", type=float, default=1800.0,
                   help="seconds Feast's store gets (a child process, killed after it; the result says so)")
    p.add_argument("--check-rows", type=int, default=5000, help="rows compared between the two training sets")
    p.add_argument("--result-name", default="spark", help="bench/results/<name>.json")
    p.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one, removed)")
    a = p.parse_args(argv)

    work = a.work or Path(tempfile.mkdtemp(prefix="kairos-bench-spark-"))
    settings = bench_settings(work)
    result: dict[str, Any] = {"spark": settings.spark.model_dump(), "service": SERVICE,
                              "load_average_1m_at_start": round(os.getloadavg()[0], 2)}
    try:
        users = max(1, round(a.events / (EVENTS_PER_USER_DAY * a.days)))
        events_dir = work / "sim" / "events"
        if not events_dir.exists():
            t0 = time.perf_counter()
            sim = simulate_to_dir(SimulationConfig(users=users, days=a.days), work / "sim", workers=a.sim_workers,
                                  chunk_users=2000)
            print(f"simulated {sim.rows:,} events ({users:,} users x {a.days} days) in "
                  f"{time.perf_counter() - t0:.1f}s")
        n_events = ds.dataset(str(events_dir), format="parquet", partitioning="hive").count_rows()
        result |= {"events": n_events, "users": users, "days": a.days}

        # ---- feature build
        builder = SparkBackfill(settings)
        with PeakRss() as mem:
            report = builder.backfill(events_path=events_dir)
        rows_out = sum(report.views.values())
        result["build"] = {
            "seconds": round(report.seconds, 2), "events_per_second": round(n_events / report.seconds),
            "rows_written": report.views, "rows_written_per_second": round(rows_out / report.seconds),
            "dropped": report.dropped, "peak_rss_mib": round(mem.peak_mib)}
        print(f"build: {n_events:,} events in {report.seconds:.1f}s = {n_events / report.seconds:,.0f} events/s; "
              f"{rows_out:,} rows; peak RSS {mem.peak_mib:,.0f} MiB; dropped {report.dropped}", flush=True)

        # ---- training set: ours
        service = REGISTRY.service(SERVICE)
        names = [r.split(":")[1] for r in service.feature_refs]
        entity_df = entity_rows(events_dir, a.rows)
        with PeakRss() as mem:
            t0 = time.perf_counter()
            ours = to_pandas(SparkRetrieval(settings, spark=builder.spark).training_set(entity_df, service))
            ours_s = time.perf_counter() - t0
        assert len(ours) == len(entity_df)
        result["training_set"] = {"rows": len(entity_df), "features": len(names), "ours": {
            "engine": "SparkRetrieval.training_set (Spark union + window last(ignorenulls) as-of join) "
                      "+ toPandas",
            "seconds": round(ours_s, 2), "rows_per_second": round(len(entity_df) / ours_s),
            "peak_rss_mib": round(mem.peak_mib)}}
        print(f"training set (ours): {len(entity_df):,} rows x {len(names)} features in {ours_s:.1f}s = "
              f"{len(entity_df) / ours_s:,.0f} rows/s; peak RSS {mem.peak_mib:,.0f} MiB", flush=True)
        write_result(a.result_name, result)  # kept if Feast's store below runs out of memory or is killed

        # ---- training set: Feast's offline store
        if not a.skip_feast:
            apply_repo(settings)
            subset = entity_df.head(a.feast_rows) if a.feast_rows else entity_df
            with PeakRss() as mem:
                t0 = time.perf_counter()
                theirs, error = feast_in_child(work, subset, work / "feast_out.parquet", a.feast_timeout)
                feast_s = time.perf_counter() - t0
            feast: dict[str, Any] = {
                "engine": f"Feast get_historical_features, offline store {settings.offline_store.type!r} "
                          "(one call per view; see pipelines.store.retrieval.FeastRetrieval)",
                "rows": len(subset), "seconds": round(feast_s, 2), "timeout_s": a.feast_timeout,
                "rows_per_second": round(len(subset) / feast_s) if error is None else None,
                "rows_per_second_at_most": round(len(subset) / feast_s, 2),
                "peak_rss_mib": round(mem.peak_mib), "error": error}
            if theirs is not None:
                check = min(a.check_rows, len(subset))
                feast["cells_compared"] = check * len(names)
                feast["cells_disagreeing"] = disagreements(ours[ours["qid"] < len(subset)], theirs, names, check)
            timed_out = error is not None and error.startswith("did not finish")
            if error is None or timed_out:  # a timed-out Feast run still bounds the speed-up from below
                ours_rate = len(entity_df) / ours_s
                result["speedup_rows_per_second"] = round(ours_rate / (len(subset) / feast_s), 2)
                result["speedup_is_lower_bound"] = timed_out
            result["training_set"]["feast"] = feast
            print(f"training set (Feast): {len(subset):,} rows in {feast_s:.1f}s = "
                  f"{len(subset) / feast_s:,.0f} rows/s; peak RSS {mem.peak_mib:,.0f} MiB; error={error}; "
                  f"disagreeing cells={feast.get('cells_disagreeing')}; "
                  f"speedup={result.get('speedup_rows_per_second')}")
        result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
        result["chosen"] = (
            "SparkRetrieval.training_set: a sort-based as-of join whose cost grows with (queries + table rows) "
            "and which runs where the offline tables live (local or a cluster). Feast's file store merges every "
            "query with all rows of its key and sorts in pandas/dask in one process, needs the workarounds listed "
            "in FeastRetrieval to be point-in-time correct, and is the slower and hungrier of the two here.")
        path = write_result(a.result_name, result)
        print(f"-> {path}")
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
