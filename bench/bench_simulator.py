"""How fast the simulator writes a realistic event log, against a floor measured in the same run.

``python -m bench.bench_simulator [--events 10000000] [--days 14] [--workers 2]``

1. A pilot of the first blocks of users measures events per user-day, which sets
   the number of users for ``--events`` (the pilot's users are the run's first
   users, so it is a sample of the run itself).
2. The run: :func:`pipelines.ingest.simulator.simulate_to_dir` (simulation and
   day-partitioned parquet), wall time and peak RSS of the process tree.
3. Generation only: the first blocks again, in this process, without writing
   (what the simulation costs before any I/O).
4. The floor: the same events, read back one day partition at a time into a
   pre-built Arrow table (not timed) and written again with
   ``pipelines.ingest.eventlog.write_parquet`` using all cores (timed). The simulator
   cannot beat it; on a shared, noisy machine, the ratio to the floor is the figure
   to compare between runs. A day at a time keeps memory near one day of events.

Results go to ``bench/results/simulator.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import PeakRss, write_result
from pipelines.ingest.eventlog import read_parquet, write_parquet
from pipelines.ingest.simulator import SimulationConfig, simulate_blocks, simulate_to_dir

TARGET_ROWS_PER_SECOND = 150_000


def users_for(events: int, days: int, *, pilot_blocks: int = 4) -> tuple[int, float]:
    """Users that make about ``events`` events over ``days``, from a pilot run; and events per user-day."""
    pilot = SimulationConfig(users=pilot_blocks * SimulationConfig.block_users, days=days)
    per_user_day = simulate_blocks(pilot, range(pilot.blocks)).events.num_rows / (pilot.users * days)
    return max(1, round(events / (per_user_day * days))), per_user_day


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000, help="target number of events (default 10M)")
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--chunk-users", type=int, default=4000)
    p.add_argument("--gen-rows", type=int, default=1_000_000, help="about this many rows for generation-only")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    a = p.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="kairos-bench-sim-"))
    load_start = os.getloadavg()[0]
    try:
        users, per_user_day = users_for(a.events, a.days)
        cfg = SimulationConfig(users=users, days=a.days)
        print(f"{per_user_day:.2f} events per user-day -> {users:,} users x {a.days} days for ~{a.events:,} events")

        with PeakRss() as mem:
            t0 = time.perf_counter()
            summary = simulate_to_dir(cfg, work / "sim", workers=a.workers, chunk_users=a.chunk_users)
            wall = time.perf_counter() - t0
        rate = summary.rows / wall
        print(f"simulated and wrote {summary.rows:,} events in {wall:.1f}s = {rate:,.0f} events/s "
              f"({a.workers} workers), peak RSS {mem.peak_mib:,.0f} MiB")

        gen_blocks = max(1, min(cfg.blocks, round(a.gen_rows / (per_user_day * a.days * cfg.block_users))))
        t0 = time.perf_counter()
        gen_rows = simulate_blocks(cfg, range(gen_blocks)).events.num_rows
        gen_s = time.perf_counter() - t0
        print(f"generation only (1 process, no writing): {gen_rows:,} events in {gen_s:.1f}s "
              f"= {gen_rows / gen_s:,.0f} events/s")
        gc.collect()

        floor_rows, floor_s = 0, 0.0
        days = sorted(d.name.split("=", 1)[1] for d in (work / "sim" / "events").iterdir() if "=" in d.name)
        with PeakRss() as floor_mem:
            for day in days:
                table = read_parquet(work / "sim" / "events", start=date.fromisoformat(day),
                                     end=date.fromisoformat(day))
                t0 = time.perf_counter()
                write_parquet(table, work / "floor", part=f"floor-{day}")
                floor_s += time.perf_counter() - t0
                floor_rows += table.num_rows
                del table
        floor_rate = floor_rows / floor_s
        print(f"floor: write_parquet of {floor_rows:,} pre-built events (all cores): {floor_s:.1f}s "
              f"= {floor_rate:,.0f} events/s; simulator / floor = {rate / floor_rate:.2f}")
        result = {
            "rows": summary.rows, "seconds": round(wall, 2), "rows_per_second": round(rate),
            "peak_rss_mib": round(mem.peak_mib), "target_rows_per_second": TARGET_ROWS_PER_SECOND,
            "meets_target": rate >= TARGET_ROWS_PER_SECOND,
            "users": users, "days": a.days, "workers": summary.workers, "chunks": summary.chunks,
            "chunk_users": a.chunk_users, "events_per_user_day": round(per_user_day, 3),
            "sessions": summary.sessions, "by_type": summary.by_type, "anomalies": summary.anomalies,
            "generation_only": {"what": "simulate_blocks in one process, no parquet", "rows": gen_rows,
                                "seconds": round(gen_s, 2), "rows_per_second": round(gen_rows / gen_s)},
            "floor": {"what": "write_parquet of the same events, pre-built in memory a day at a time, "
                              "Arrow on all cores (write time only)",
                      "rows": floor_rows, "seconds": round(floor_s, 2), "rows_per_second": round(floor_rate),
                      "peak_rss_mib": round(floor_mem.peak_mib)},
            "ratio_to_floor": round(rate / floor_rate, 3),
            "load_average_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        }
        path = write_result("simulator", result)
        print(f"-> {path}")
        return result
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
