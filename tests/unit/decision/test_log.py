"""The decision and outcome logs: day-partitioned parquet, microsecond UTC times, every field of a decision."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.decision import DecisionContext, PolicyConfig, decide
from serving.decision.log import (
    DECISION_SCHEMA,
    OUTCOME_SCHEMA,
    PartitionedLog,
    decision_record,
    decisions_with_outcomes,
    loads,
    read_decisions,
    read_outcomes,
)

NOON = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
Make = Callable[..., DecisionContext]
FEATURES = {"cart_items": 3, "last_purchase_time": datetime(2026, 9, 30, 8, 0, 0, 123456, tzinfo=UTC),
            "device_mobile": True, "avg_dwell": 12.5, "missing": None}


def test_one_row_per_decision_with_every_field_in_day_partitions(tmp_path: Path, policy: PolicyConfig,
                                                                 make_ctx: Make) -> None:
    log = PartitionedLog(tmp_path / "log", DECISION_SCHEMA, "at", flush_rows=3)
    made = [decide(make_ctx(decision_id=f"d{i}", now=NOON + timedelta(hours=8 * i, microseconds=7)), policy)
            for i in range(4)]  # 12:00 on day 1, 20:00 on day 1, 04:00 and 12:00 on day 2
    for d in made:
        log.append(decision_record(d, features=FEATURES, session_id="s1", request={"page": "/cart", "device": "ios"}))
    assert log.written == 3 and log.buffered == 1  # a file per 3 rows
    log.close()
    assert log.written == 4 and log.buffered == 0
    days = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert days == ["dt=2026-10-01", "dt=2026-10-02"]
    files = sorted((tmp_path / "log").rglob("*.parquet"))
    assert len(files) == 3  # the first flush wrote one file per day, the second one
    ts = pq.read_schema(files[0]).field("at").type
    assert ts == pa.timestamp("us", tz="UTC")  # Spark 4 rejects nanoseconds

    table = read_decisions(tmp_path / "log")
    assert table.num_rows == 4 and table.schema.names == DECISION_SCHEMA.names
    rows = {r["decision_id"]: r for r in table.to_pylist()}
    for d in made:
        r = rows[d.decision_id]
        assert set(d.log_row()) <= set(r)  # every field of the decision is a column
        assert r["at"] == d.at and r["at"].tzinfo is not None and r["at"].microsecond == 7
        assert r["action"] == d.action and r["propensity"] == d.propensity
        assert dict(r["probabilities"]) == dict(d.probabilities)
        assert abs(sum(dict(r["probabilities"]).values()) - 1) < 1e-12
        assert dict(r["scores"]) == dict(d.scores) and dict(r["model_versions"]) == dict(d.model_versions)
        assert dict(r["feature_ages"]) == dict(d.feature_ages)
        assert loads(r["reasons"])["ineligible"] == {k: list(v) for k, v in d.reasons.ineligible.items()}
        assert r["policy_version"] == policy.version and r["bucket"] == d.bucket
        assert r["holdout"] is d.holdout and r["degraded"] is d.degraded and r["explored"] is d.explored
        feats = loads(r["features"])
        assert feats["cart_items"] == 3 and feats["device_mobile"] is True and feats["avg_dwell"] == 12.5
        assert datetime.fromisoformat(feats["last_purchase_time"]) == FEATURES["last_purchase_time"]
        assert "missing" not in feats  # the event log's codec: a null is left out
        assert loads(r["request"]) == {"page": "/cart", "device": "ios"} and r["session_id"] == "s1"
        assert r["trigger"] == "cart_abandoned"
    assert read_decisions(tmp_path / "log", start=NOON.date() + timedelta(days=1)).num_rows == 2


def test_outcomes_join_their_decisions_by_id(tmp_path: Path, policy: PolicyConfig, make_ctx: Make) -> None:
    dlog = PartitionedLog(tmp_path / "log", DECISION_SCHEMA, "at")
    olog = PartitionedLog(tmp_path / "outcomes", OUTCOME_SCHEMA, "time")
    for i in range(3):
        dlog.append(decision_record(decide(make_ctx(decision_id=f"d{i}"), policy), features={}))
    olog.append({"decision_id": "d0", "outcome_type": "purchase", "reward": 1.0, "time": NOON + timedelta(minutes=5),
                 "received_at": NOON + timedelta(minutes=6), "status": "joined", "detail": "joined"})
    olog.append({"decision_id": "d1", "outcome_type": "purchase", "reward": 1.0, "time": NOON + timedelta(days=3),
                 "received_at": NOON + timedelta(days=3), "status": "expired", "detail": "too late"})
    olog.append({"decision_id": "zz", "outcome_type": "click", "reward": 0.0, "time": NOON,
                 "received_at": NOON, "status": "unknown", "detail": "no such decision"})
    dlog.close()
    olog.close()
    outcomes = read_outcomes(tmp_path / "outcomes")
    assert sorted(outcomes.column("status").to_pylist()) == ["expired", "joined", "unknown"]
    assert outcomes.schema.field("time").type == pa.timestamp("us", tz="UTC")
    joined = {r["decision_id"]: r for r in decisions_with_outcomes(read_decisions(tmp_path / "log"),
                                                                   outcomes).to_pylist()}
    assert set(joined) == {"d0", "d1", "d2"}  # every decision, once
    assert joined["d0"]["reward"] == 1.0 and joined["d0"]["outcome_time"] == NOON + timedelta(minutes=5)
    assert joined["d1"]["reward"] is None and joined["d2"]["outcome_type"] is None  # refused outcomes do not join


def test_naive_times_are_refused_and_an_absent_log_reads_empty(tmp_path: Path) -> None:
    log = PartitionedLog(tmp_path / "o", OUTCOME_SCHEMA, "time")
    with pytest.raises(ValueError, match="timezone-aware"):
        log.append({"decision_id": "d", "time": datetime(2026, 10, 1, 12)})
    assert read_outcomes(tmp_path / "nothing").num_rows == 0
    assert read_decisions(tmp_path / "nothing").schema == DECISION_SCHEMA


def test_a_buffered_row_is_written_once_it_is_old_enough(tmp_path: Path) -> None:
    log = PartitionedLog(tmp_path / "o", OUTCOME_SCHEMA, "time", flush_rows=1000, flush_interval=timedelta(0))
    log.append({"decision_id": "d", "outcome_type": "x", "reward": 0.5, "time": NOON, "received_at": NOON,
                "status": "joined", "detail": ""})
    assert log.buffered == 0 and read_outcomes(tmp_path / "o").column("reward").to_pylist() == [0.5]
