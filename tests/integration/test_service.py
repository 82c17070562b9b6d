"""The real ``bentoml serve serving.service:Kairos`` process, over HTTP, on a trained and streamed small log.

The fixtures build what the service needs the way a user does (``kairos`` job steps): a
simulated log with both models trained and promoted in MLflow (``trained``, once per run),
then the Feast repo and the Bytewax replay into this module's SQLite online store. Then
``bentoml serve`` starts from the repository root with the settings as environment
variables (:class:`kairos.server.ServiceProcess`), is awaited on ``/readyz``, and is stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
import schemathesis

from conf.settings import Settings
from kairos import jobs
from kairos.server import ServiceProcess, free_port
from pipelines.store.online import read_online
from pipelines.store.repo import feature_store
from serving.security import new_key, store_key
from tests.integration.conftest import Trained

ROOT = Path(__file__).resolve().parents[2]




@dataclass
class Server:
    url: str
    keys: dict[str, str]  # scope set name -> key
    settings: Settings
    process: ServiceProcess
    log: Path
    users: list[str]
    last_arrival: datetime

    def client(self, key: str | None = "score") -> httpx.Client:
        headers = {} if key is None else {"Authorization": f"Bearer {self.keys[key]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("service")
    settings, env = trained.serving_settings(data, online_store={"type": "sqlite", "path": str(data / "online.db")})
    env |= {"KAIROS__SERVING__RATE_LIMIT__RATE": "30", "KAIROS__SERVING__RATE_LIMIT__BURST": "60",
            "KAIROS__SERVING__RELOAD_INTERVAL": "2s",
            "BENTOML_HOME": str(data / "bentoml")}
    jobs.stream(settings, workers=1)  # applies the Feast repo, replays the log into the online store
    keys: dict[str, str] = {}
    for name, scopes in {"score": ["score"], "events": ["events:write"], "admin": ["admin", "score"],
                         "limited": ["score"], "fuzz": ["score", "events:write", "admin"]}.items():
        key, record = new_key(name, scopes)  # type: ignore[arg-type]
        store_key(settings.keys_path, record)
        keys[name] = key
    log = data / "bentoml.log"
    with ServiceProcess(free_port(), env=env, log=log) as process:
        process.wait_ready()
        events = ds.dataset(settings.events_path, partitioning="hive").to_table(columns=["user_id", "ingest_time"])
        users = sorted(set(events.column("user_id").to_pylist()))
        last = pc.max(events.column("ingest_time")).as_py()
        yield Server(process.url, keys, settings, process, log, users, last)


def test_health_probes_and_metrics_need_no_key(server: Server) -> None:
    with server.client(None) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/livez").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/openapi.json").json()["info"]["title"] == "Kairos"


def test_score_answers_with_both_champions_and_the_feature_ages(server: Server) -> None:
    user = server.users[0]
    at = server.last_arrival + timedelta(seconds=1)
    with server.client() as c:
        r = c.post("/v1/score", json={"user_id": user, "request_time": at.isoformat()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["scores"]) == {"purchase_propensity", "churn"}
    for name, s in body["scores"].items():
        assert 0 <= s["score"] <= 1 and s["version"] == "1" and s["registered_model"] == f"kairos-{name}"
    assert body["degraded"] is False and body["reason"] is None, body["reason"]
    assert {"user_commerce", "user_account", "session_activity"} <= set(body["views"])
    assert body["views"]["session_activity"]["state"] == "cold_start"  # no session given
    assert all(v["state"] in {"fresh", "cold_start", "stale"} for v in body["views"].values())


def test_the_feature_vector_equals_feasts_online_read(server: Server) -> None:
    store = feature_store(server.settings)
    user = server.users[1]
    with server.client() as c:
        r = c.get(f"/v1/users/{user}/features", params={"service": "churn_v1"})
    assert r.status_code == 200, r.text
    body = r.json()
    at = datetime.fromisoformat(body["request_time"])
    from features.registry import REGISTRY

    service = REGISTRY.service("churn_v1")
    feast = read_online(store, service, [{"user_id": user, "request_time": at}])[0]
    fresh = all(v["state"] == "fresh" for v in body["views"].values())
    if fresh:  # a view past its TTL reads as cold start in the service, and (feast-dev/feast#6821) not in Feast
        assert body["values"].keys() == feast.keys()
        for name, value in feast.items():
            got = body["values"][name]
            if isinstance(value, datetime):
                assert datetime.fromisoformat(got) == value, name
            elif isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-12, abs=1e-12), name
            else:
                assert got == value, name
    for view in body["views"].values():
        assert view["age_seconds"] is None or view["age_seconds"] >= 0


def test_events_are_validated_appended_and_dead_lettered(server: Server) -> None:
    now = datetime.now(UTC).isoformat()
    base: dict[str, Any] = {"schema_version": 1, "user_id": "api-user-1", "session_id": "api-s1",
                            "event_type": "page_view", "event_time": now, "consent_analytics": True,
                            "consent_personalization": True, "consent_marketing": False, "page": "/home",
                            "dwell_seconds": 3.0}
    purchase = {k: v for k, v in base.items() if k not in ("page", "dwell_seconds")}
    batch = [{**base, "event_id": "api-e1"},
             {**purchase, "event_id": "api-e2", "event_type": "purchase", "quantity": 1, "amount": -5.0},
             {**base, "event_id": "api-e3", "consent_analytics": False}]
    log = server.settings.events_log_path
    before = log.read_text().count("\n")
    with server.client("events") as c:
        r = c.post("/v1/events", json={"events": batch})
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["accepted"], body["rejected"], body["no_consent"]) == (1, 1, 1)
        assert [(e["index"], e["event_id"], e["field"]) for e in body["errors"]] == [(1, "api-e2", "amount")]
        assert body["errors"][0]["problem"] == "must be >= 0, got -5"
        assert log.read_text().count("\n") == before + 1 and "api-e1" in log.read_text()
        assert "api-e3" not in log.read_text()  # no consent: stored nowhere
        bad = c.post("/v1/events", json={"events": [{**base, "event_id": "api-e4", "event_time": "yesterday"}]})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "event_time" and bad.json()["errors"][0]["index"] == 0
    dead = (server.settings.dead_letter_path / "api.jsonl").read_text()
    assert "api-e2" in dead and "api-e4" in dead


def test_keys_scopes_and_clear_errors(server: Server) -> None:
    with server.client(None) as anonymous:
        r = anonymous.post("/v1/score", json={"user_id": "u"})
        assert r.status_code == 401 and "API key is required" in r.json()["detail"]
        r = anonymous.post("/v1/score", json={"user_id": "u"}, headers={"X-API-Key": "kairos_0123456789abcdef_x"})
        assert r.status_code == 401
    with server.client("events") as c:
        r = c.post("/v1/score", json={"user_id": "u"})
        assert r.status_code == 403 and "lacks the scope 'score'" in r.json()["detail"]
        assert server.keys["events"] not in r.text
    with server.client() as c:
        r = c.post("/v1/score", json={"user": "u"})
        assert r.status_code == 422 and "user_id" in r.json()["detail"]
        r = c.get("/v1/users/u/features", params={"service": "nope"})
        assert r.status_code == 422 and "service: 'nope' is not a feature service" in r.json()["detail"]
        r = c.post("/v1/score", content=b"x" * 1_000_001, headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post("/v1/admin/reload")
        assert r.status_code == 403
    with server.client("admin") as c:
        r = c.post("/v1/admin/reload")
        assert r.status_code == 200 and r.json()["unchanged"] == {"purchase_propensity": "1", "churn": "1"}
    assert server.keys["score"] not in server.log.read_text()


def test_over_the_rate_limit_is_a_429_with_retry_after(server: Server) -> None:
    with server.client("limited") as c:
        codes = [c.post("/v1/score", json={"user_id": "u"}).status_code for _ in range(100)]
    assert codes[:60].count(200) == 60 and 429 in codes[60:]  # a burst of 60, then 30 a second
    with server.client("limited") as c:
        r = next(r for r in (c.post("/v1/score", json={"user_id": "u"}) for _ in range(20)) if r.status_code == 429)
    assert int(r.headers["Retry-After"]) >= 1 and "rate limit" in r.json()["detail"]


def test_metrics_count_requests_reads_and_events(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("kairos_request_seconds_bucket", "kairos_feature_read_seconds_bucket", "kairos_model_seconds_bucket",
                 'kairos_events_total{outcome="accepted"}'):
        assert name in text, name
    assert 'endpoint="/v1/score",status="200"' in text


def test_a_moved_champion_alias_is_served_without_a_restart(server: Server) -> None:
    """The admin call loads a new champion at once, the periodic check by itself; no request in flight fails."""
    from training.registry import CHAMPION, client_for, registered_model_name

    client = client_for(server.settings)
    name = registered_model_name(server.settings, "purchase_propensity")
    v1 = client.get_model_version_by_alias(name, CHAMPION)
    v2 = client.create_model_version(name, source=v1.source, run_id=v1.run_id)
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with server.client("admin") as c:
            while not stop.is_set():
                r = c.post("/v1/score", json={"user_id": server.users[2]})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["scores"]["purchase_propensity"]["version"])
                time.sleep(0.1)  # under the key's 30 requests a second

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        client.set_registered_model_alias(name, CHAMPION, v2.version)
        with server.client("admin") as c:
            r = c.post("/v1/admin/reload")
        assert r.status_code == 200 and r.json()["loaded"] == {"purchase_propensity": str(v2.version)}, r.text
        time.sleep(0.5)
        assert versions[-1] == str(v2.version)
        client.set_registered_model_alias(name, CHAMPION, v1.version)  # back, found by the periodic check
        deadline = time.monotonic() + 30
        while versions[-1] != str(v1.version):
            assert time.monotonic() < deadline, "the periodic check did not pick up the moved alias"
            time.sleep(0.2)
    finally:
        stop.set()
        sender.join(timeout=30)
        client.set_registered_model_alias(name, CHAMPION, v1.version)
    assert set(statuses) == {200}, statuses
    assert str(v2.version) in versions and versions[-1] == str(v1.version)


def test_no_input_gets_a_5xx(server: Server) -> None:
    """Schemathesis over every operation of the service's own OpenAPI document, as the server serves it: whatever
    the input (generated from the schema, valid or not), a 2xx or a 4xx, never a 5xx."""
    schema = schemathesis.openapi.from_url(f"{server.url}/v1/openapi.json")
    headers = {"Authorization": f"Bearer {server.keys['fuzz']}"}
    seen: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck),
                             database=None)
        def no_5xx(case: Any) -> None:
            response = case.call(base_url=server.url, headers=headers)
            time.sleep(0.04)  # under the key's rate limit, so the inputs reach the endpoints
            seen.setdefault(f"{case.method} {case.path}", []).append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.status_code,
                                                response.text[:500])

        no_5xx()
    expected = {"POST /v1/events", "POST /v1/score", "GET /v1/users/{user_id}/features", "POST /v1/admin/reload"}
    assert expected <= set(seen), seen.keys()
    assert all(codes for codes in seen.values())
