"""Crash and resume: a SIGKILLed stream worker restarts from its Bytewax recovery snapshots.

The dataflow runs as a real ``python -m bytewax.run`` process over a paced JSON-lines
replay, with a SQLite recovery directory (``python -m bytewax.recovery DIR 1``) and a
one-second snapshot interval. It is killed with SIGKILL mid-stream, after some
snapshots, and started again with the same arguments. Afterwards nothing may be lost
and nothing counted twice: the changelog holds every change point exactly once with the
reference's values, the drops log counts exactly the reference's drops, the trigger log
holds every firing of the trigger reference exactly once (as written: no line repeats a
``fire_id``, before any deduplication on read), and the run really resumed (from a later
line of the file than the first).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from conf.settings import Settings
from features.trigger_reference import TriggerReference
from pipelines.ingest.eventlog import write_jsonl
from pipelines.stream.changelog import read_changelog, read_drops
from pipelines.stream.triggers import decode_fire, read_trigger_lines
from tests.adversarial import adversarial_log
from tests.parity.test_stream_reference import RULES, assert_drops_match, assert_matches_reference, in_arrival_order

REPO = Path(__file__).resolve().parents[2]


def with_resent_copies(events: list[dict[str, Any]], rate: float, seed: int) -> list[dict[str, Any]]:
    """Many more duplicates, re-sent 1-30 minutes later (within the allowed lateness): whatever line the
    restart resumes at, copies of events from before it arrive after it, so admission state must survive."""
    rng = random.Random(seed)
    copies = [dict(e, ingest_time=e["ingest_time"] + timedelta(seconds=rng.uniform(60, 1800)))
              for e in events if rng.random() < rate]
    return in_arrival_order([*events, *copies])


def changelog_lines(directory: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in directory.glob("part-*.jsonl"))


def test_sigkill_mid_stream_then_resume_loses_nothing_and_counts_nothing_twice(tmp_settings: Settings,
                                                                               tmp_path: Path) -> None:
    events = with_resent_copies([e for seed in (31, 32, 33) for e in adversarial_log(seed, users=4, events=600)],
                                0.25, seed=3)
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True, timeout=60)
    changelog = tmp_settings.data_path / "stream" / "changelog"

    def start(rate: float | None) -> subprocess.Popen[str]:
        flow = f"pipelines.stream.flow:build_flow(path={str(path)!r}, rate={rate!r})"
        return subprocess.Popen([sys.executable, "-m", "bytewax.run", flow, "-r", str(recovery), "-s", "1", "-b", "0"],
                                cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    first = start(rate=400.0)  # ~5 s of input: killed well before the end
    deadline = time.monotonic() + 60
    while changelog_lines(changelog) < 1500 if changelog.exists() else True:
        assert first.poll() is None, f"the first run ended before it was killed: {first.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the first run wrote too little in 60 s"
        time.sleep(0.1)
    time.sleep(1.5)  # at least one more snapshot
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    written_before = changelog_lines(changelog)
    fired_before = len(read_trigger_lines(tmp_settings.trigger_log_path))
    assert fired_before > 0, "no trigger fired before the kill: the trigger log's recovery was not put to the test"

    second = start(rate=None)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]
    resumed = [int(n) for n in re.findall(r"resumes at line (\d+)", err)]
    assert resumed and 0 < resumed[0] < len(events), f"the restart did not resume mid-file: {err[-2000:]}"
    line = {e["event_id"]: i for i, e in reversed(list(enumerate(events, 1)))}  # first arrival of each id
    crossing = [i for i, e in enumerate(events, 1) if line[e["event_id"]] <= resumed[0] < i]
    assert crossing, "no duplicate straddles the resume point: admission state was not put to the test"

    rows = read_changelog(changelog)
    points = Counter((r.view, r.key, r.event_timestamp) for r in rows)
    assert max(points.values()) == 1, "a change point was written twice"
    assert len(rows) > written_before
    checked = assert_matches_reference(rows, events, oracle=False)
    assert checked == len(rows)
    assert_drops_match(read_drops(tmp_settings.data_path / "stream" / "drops"), events)
    drop_lines = sum(len(p.read_bytes().splitlines()) for p in (tmp_settings.data_path / "stream" / "drops").glob("*"))
    assert drop_lines == sum(read_drops(tmp_settings.data_path / "stream" / "drops").values()), "a drop logged twice"

    lines = read_trigger_lines(tmp_settings.trigger_log_path)
    fires = [decode_fire(line) for line in lines]
    ids = Counter(f.fire_id for f in fires)
    assert max(ids.values()) == 1, f"a firing was written twice: {[i for i, n in ids.items() if n > 1][:3]}"
    assert len(fires) > fired_before
    want = TriggerReference(events, rules=RULES).fire_set()
    got = {f.identity for f in fires}
    assert got == want, f"missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]}"
