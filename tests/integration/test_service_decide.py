"""``POST /v1/decide`` and ``POST /v1/outcomes`` on the real ``bentoml serve`` process.

One server for the module, on the trained small log streamed into a SQLite online store (as
``test_service.py`` builds it), with the decision logs written on every row so they can be read back. The
decision store is the embedded one (``<data_dir>/decisions/state.db``); the test opens it itself, as a second
worker would, to see the bandit learn.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from conf.settings import Settings
from kairos import jobs
from kairos.server import ServiceProcess, free_port
from serving.decision import in_holdout, load_policy
from serving.decision.log import decision_log_path, loads, outcome_log_path, read_decisions, read_outcomes
from serving.decision.store import SqliteDecisionStore, decision_state_path
from serving.security import new_key, store_key
from tests.integration.conftest import Trained

POLICY = load_policy()
BOTH = ["personalization", "marketing"]
FIELDS = {"decision_id", "user_id", "session_id", "request_time", "action", "channel", "propensity",
          "probabilities", "scores", "expected_values", "reasons", "policy_version", "model_versions",
          "feature_ages", "views", "bucket", "holdout", "degraded", "reason", "explored",
          "attribution_window_seconds", "latency_ms"}


@dataclass
class Server:
    url: str
    keys: dict[str, str]
    settings: Settings
    users: list[str]
    last_arrival: datetime

    def client(self, key: str = "score") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.keys[key]}"}, timeout=30)


@pytest.fixture(scope="module")
def server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("decide")
    settings, env = trained.serving_settings(data, online_store={"type": "sqlite", "path": str(data / "online.db")})
    env |= {"KAIROS__SERVING__DECISION_LOG_FLUSH_ROWS": "1", "KAIROS__SERVING__ATTRIBUTION_WINDOW": "2h",
            "BENTOML_HOME": str(data / "bentoml")}
    jobs.stream(settings, workers=1)
    keys: dict[str, str] = {}
    for name, scopes in {"score": ["score"], "events": ["events:write"]}.items():
        key, record = new_key(name, scopes)  # type: ignore[arg-type]
        store_key(settings.keys_path, record)
        keys[name] = key
    with ServiceProcess(free_port(), env=env, log=data / "bentoml.log") as process:
        process.wait_ready()
        events = ds.dataset(settings.events_path, partitioning="hive").to_table(columns=["user_id", "ingest_time"])
        users = sorted(set(events.column("user_id").to_pylist()))
        yield Server(process.url, keys, settings, users, pc.max(events.column("ingest_time")).as_py())


def _decide(server: Server, **body: Any) -> dict[str, Any]:
    with server.client() as c:
        r = c.post("/v1/decide", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert set(out) == FIELDS
    return out


def _logged(server: Server, decision_id: str) -> dict[str, Any]:
    table = read_decisions(decision_log_path(server.settings))
    rows = [r for r in table.to_pylist() if r["decision_id"] == decision_id]
    assert len(rows) == 1, f"{decision_id} logged {len(rows)} times"
    return rows[0]


def test_a_decision_answers_and_is_logged_with_every_field(server: Server) -> None:
    user = next(u for u in server.users if not in_holdout(u, POLICY.holdout))
    at = server.last_arrival + timedelta(seconds=1)
    d = _decide(server, user_id=user, trigger="cart_abandoned", page="/cart", device="mobile", consents=BOTH,
                timezone="Europe/Paris", request_time=at.isoformat(), flags={"breaking_news": False})
    assert re.fullmatch(r"[0-9a-f]{32}", d["decision_id"]) and d["user_id"] == user
    allowed = set(POLICY.triggers["cart_abandoned"].actions or ()) | {POLICY.default_action}
    assert d["action"] in allowed and d["channel"] == POLICY.actions[d["action"]].channel
    assert set(d["probabilities"]) == set(POLICY.actions) and sum(d["probabilities"].values()) == pytest.approx(1)
    assert d["propensity"] == d["probabilities"][d["action"]] > 0
    assert set(d["scores"]) == {"purchase_propensity", "churn"} and all(0 <= s <= 1 for s in d["scores"].values())
    assert d["model_versions"] == {"purchase_propensity": "1", "churn": "1"}
    assert d["policy_version"] == POLICY.version
    assert {"user_commerce", "user_account"} <= set(d["feature_ages"]) and d["views"].keys() == d["feature_ages"].keys()
    assert d["reasons"]["trigger"] == "cart_abandoned" and d["reasons"]["consent"] == ["marketing", "personalization"]
    assert d["holdout"] is False and d["degraded"] is False and d["reason"] is None
    assert d["bucket"].startswith("trigger=cart_abandoned|") and d["attribution_window_seconds"] == 7200
    assert datetime.fromisoformat(d["request_time"]) == at

    row = _logged(server, d["decision_id"])
    assert row["at"] == at and row["action"] == d["action"] and row["propensity"] == d["propensity"]
    assert dict(row["probabilities"]) == d["probabilities"] and dict(row["scores"]) == d["scores"]
    assert row["policy_version"] == d["policy_version"] and dict(row["model_versions"]) == d["model_versions"]
    assert loads(row["reasons"])["trigger"] == "cart_abandoned" and row["bucket"] == d["bucket"]
    assert len(loads(row["features"])) > 10  # the feature values the scores were computed from
    assert loads(row["request"])["page"] == "/cart" and loads(row["request"])["timezone"] == "Europe/Paris"


def test_an_outcome_joins_its_decision_and_the_bandit_learns(server: Server) -> None:
    user = next(u for u in reversed(server.users) if not in_holdout(u, POLICY.holdout))
    at = server.last_arrival + timedelta(minutes=1)
    d = _decide(server, user_id=user, trigger="churn_risk", consents=BOTH, request_time=at.isoformat())
    store = SqliteDecisionStore(decision_state_path(server.settings), window=timedelta(hours=2),
                                horizon=timedelta(days=7))  # the server's store, as another worker opens it
    before = store.state(d["bucket"]).get(d["bucket"], d["action"])
    outcome = {"decision_id": d["decision_id"], "outcome_type": "retained", "reward": 1.0,
               "time": (at + timedelta(minutes=30)).isoformat()}
    with server.client("events") as c:
        r = c.post("/v1/outcomes", json=outcome)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["action"] == d["action"] and body["bucket"] == d["bucket"] and body["propensity"] == d["propensity"]
        assert body["seconds_after_decision"] == 1800 and body["policy_version"] == POLICY.version
        after = store.state(d["bucket"]).get(d["bucket"], d["action"])
        assert after == (before[0] + 1.0, before[1]) and body["bandit"] == list(after)
        again = c.post("/v1/outcomes", json=outcome)
        assert again.status_code == 409 and again.json()["status"] == "duplicate"
        assert store.state(d["bucket"]).get(d["bucket"], d["action"]) == after  # learnt once

        unknown = c.post("/v1/outcomes", json={**outcome, "decision_id": "no-such-decision"})
        assert unknown.status_code == 404 and unknown.json()["status"] == "unknown"
        assert "decision_id: no decision 'no-such-decision'" in unknown.json()["detail"]
        late = _decide(server, user_id=user, consents=BOTH, request_time=(at + timedelta(seconds=1)).isoformat())
        expired = c.post("/v1/outcomes", json={**outcome, "decision_id": late["decision_id"],
                                               "time": (at + timedelta(hours=3)).isoformat()})
        assert expired.status_code == 410 and "attribution window" in expired.json()["detail"]
        early = c.post("/v1/outcomes", json={**outcome, "decision_id": late["decision_id"], "time": at.isoformat()})
        assert early.status_code == 422 and early.json()["detail"].startswith("time:")
        bad = c.post("/v1/outcomes", json={**outcome, "reward": 2})
        assert bad.status_code == 422 and "reward" in bad.json()["detail"]
        metrics = httpx.get(f"{server.url}/metrics").text
    store.close()
    for status in ("joined", "duplicate", "unknown", "expired", "before_decision"):
        assert re.search(rf'kairos_outcomes_total\{{status="{status}"\}} [1-9]', metrics), status
    outcomes = read_outcomes(outcome_log_path(server.settings)).to_pylist()
    mine = [o for o in outcomes if o["decision_id"] == d["decision_id"]]
    assert sorted(o["status"] for o in mine) == ["duplicate", "joined"]
    assert any(o["status"] == "unknown" and o["decision_id"] == "no-such-decision" for o in outcomes)


def test_a_holdout_user_gets_the_default_action_and_it_is_logged(server: Server) -> None:
    user = next(f"holdout-{i}" for i in range(10_000) if in_holdout(f"holdout-{i}", POLICY.holdout))
    d = _decide(server, user_id=user, trigger="cart_abandoned", consents=BOTH)
    assert d["holdout"] is True and d["action"] == POLICY.default_action and d["propensity"] == 1.0
    assert d["probabilities"][POLICY.default_action] == 1.0 and d["channel"] == "none"
    row = _logged(server, d["decision_id"])
    assert row["holdout"] is True and row["action"] == POLICY.default_action


def test_a_user_without_personalization_consent_gets_nothing_personalized(server: Server) -> None:
    user = next(u for u in server.users[1:] if not in_holdout(u, POLICY.holdout))
    d = _decide(server, user_id=user, trigger="onboarding_step", consents=["marketing"])
    on_site = {a for a, spec in POLICY.actions.items() if spec.consent == "personalization"}
    assert d["action"] == POLICY.default_action and d["channel"] == "none"
    assert all(d["probabilities"][a] == 0 for a in on_site)
    assert all("no personalization consent" in d["reasons"]["ineligible"][a] for a in on_site)
    none = _decide(server, user_id=user, trigger="cart_abandoned")  # no consent given at all
    assert none["action"] == POLICY.default_action and none["reasons"]["consent"] == []


def test_bad_input_is_a_422_naming_the_field_and_scopes_hold(server: Server) -> None:
    with server.client() as c:
        for body, field in [({"user_id": "u", "trigger": "nope"}, "trigger"),
                            ({"user_id": "u", "timezone": "Mars/Olympus"}, "timezone"),
                            ({"user_id": "u", "consents": ["telepathy"]}, "consents"),
                            ({"user_id": ""}, "user_id"), ({"user_id": "u", "extra": 1}, "extra"),
                            ({"user_id": "u", "flags": {"page": "/x"}}, "flags.page")]:
            r = c.post("/v1/decide", json=body)
            assert r.status_code == 422 and r.json()["detail"].startswith(field), (body, r.text)
        assert c.post("/v1/outcomes", json={"decision_id": "x", "outcome_type": "y", "reward": 1}).status_code == 403
    with server.client("events") as c:
        assert c.post("/v1/decide", json={"user_id": "u"}).status_code == 403
