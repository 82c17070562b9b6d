"""How fast the simulator writes a realistic event log, against a floor measured in the same run.

The floor is the rate at which this machine, right now, writes an already-built
table of the same events to the same day-partitioned parquet layout: the
simulator cannot beat it, and the ratio says how much simulation costs on top.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import PeakRss, write_result
from pipelines.eventlog import read_parquet, write_parquet
from pipelines.simulator import SimulationConfig, simulate_to_dir

EVENTS_PER_USER_DAY = 8.74  # measured mean of the default simulator settings (users x days -> events)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=10_000_000, help="target number of events")
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--floor-rows", type=int, default=1_000_000, help="rows for the parquet-write floor")
    a = p.parse_args(argv)
    users = max(1, round(a.events / (EVENTS_PER_USER_DAY * a.days)))
    work = Path(tempfile.mkdtemp(prefix="kairos-bench-sim-"))
    try:
        cfg = SimulationConfig(users=users, days=a.days)
        with PeakRss() as mem:
            t0 = time.perf_counter()
            summary = simulate_to_dir(cfg, work / "sim", workers=a.workers, chunk_users=2000)
            wall = time.perf_counter() - t0
        print(f"simulated {summary.rows:,} events ({users:,} users x {a.days} days) in {wall:.1f}s "
              f"= {summary.rows / wall:,.0f} events/s, peak RSS {mem.peak_mib:,.0f} MiB")
        sample = read_parquet(work / "sim" / "events").slice(0, a.floor_rows)
        t0 = time.perf_counter()
        write_parquet(sample, work / "floor")
        floor_s = time.perf_counter() - t0
        floor_rate = sample.num_rows / floor_s
        print(f"floor: writing {sample.num_rows:,} pre-built events to parquet: {floor_rate:,.0f} events/s")
        path = write_result("simulator", {
            "events": summary.rows, "users": users, "days": a.days, "workers": a.workers,
            "seconds": round(wall, 2), "events_per_second": round(summary.rows / wall),
            "peak_rss_mib": round(mem.peak_mib), "by_type": summary.by_type, "anomalies": summary.anomalies,
            "floor": {"what": "write pre-built events to day-partitioned parquet", "rows": sample.num_rows,
                      "events_per_second": round(floor_rate)},
            "ratio_to_floor": round((summary.rows / wall) / floor_rate, 3),
        })
        print(f"-> {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
