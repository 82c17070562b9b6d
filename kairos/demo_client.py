"""The demo's last step: the service in the background, used over HTTP as a client would use it.

Starts ``bentoml serve serving.service:Kairos`` on the demo's data (its champions, its online
store), creates an API key, posts events through ``POST /v1/events`` (one good batch, one bad
batch to show the 422 naming each event's field), asks ``POST /v1/score`` for the seeds' users
as of the end of the log, and prints the scores, the feature ages and the latencies. Then it
stops the service.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from conf.settings import Settings
from kairos.server import ServiceProcess, free_port
from serving.security import new_key, store_key


@dataclass
class ClientReport:
    ready_seconds: float = 0.0
    accepted: int = 0
    rejected_status: int = 0
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)  # who -> the answer
    latencies_ms: list[float] = field(default_factory=list)  # client-side, sequential requests

    def summary(self) -> str:
        lat = sorted(self.latencies_ms)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] if lat else float("nan")
        return (f"ready in {self.ready_seconds:.0f}s; events: {self.accepted} accepted, a bad batch answered "
                f"{self.rejected_status}; {len(self.scores)} users scored; {len(lat)} sequential scores p50 "
                f"{statistics.median(lat) if lat else float('nan'):.1f} ms, p99 {p99:.1f} ms")


def service_env(settings: Settings) -> dict[str, str]:
    """The demo's settings as environment variables: absolute paths, so the service finds the same data."""
    env = {"KAIROS__DATA_DIR": str(settings.data_path), "KAIROS__MLFLOW__TRACKING_URI": settings.mlflow_tracking_uri}
    if settings.online_store.type == "sqlite":
        env["KAIROS__ONLINE_STORE__PATH"] = str(settings.online_store_path)
    return env


def event(user: str, session: str, n: int, now: datetime) -> dict[str, Any]:
    return {"schema_version": 1, "event_id": f"demo-api-{user}-{n}", "user_id": user, "session_id": session,
            "event_type": "page_view", "event_time": now.isoformat(), "page": "/home", "dwell_seconds": 4.0,
            "consent_analytics": True, "consent_personalization": True, "consent_marketing": False}


def run_client(settings: Settings, moments: dict[str, tuple[str, str, datetime]], at: datetime,
               say: Callable[[str], None], *, repeats: int = 200) -> ClientReport:
    """See the module docstring. ``at``: the request time of the scores (the end of the demo's log)."""
    report = ClientReport()
    key, record = new_key("demo", ["events:write", "score"])
    store_key(settings.keys_path, record)
    log = settings.data_path / "logs" / "service.log"
    with ServiceProcess(free_port(), env=service_env(settings), log=log) as server:
        say(f"   bentoml serve serving.service:Kairos on {server.url} (log {log}) ...")
        report.ready_seconds = server.wait_ready()
        say(f"   ready in {report.ready_seconds:.1f}s: champions loaded, online store reachable; an API key 'demo' "
            f"(events:write, score) stored as a hash in {settings.keys_path}")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            now = datetime.now(UTC)
            batch = [event(u, s, i, now) for i, (u, s, _) in enumerate(moments.values())]
            r = c.post("/v1/events", json={"events": batch})
            body = r.json()
            report.accepted = int(body.get("accepted", 0))
            say(f"   POST /v1/events ({len(batch)} events) -> {r.status_code}: accepted {body.get('accepted')}, "
                f"rejected {body.get('rejected')}, no consent {body.get('no_consent')} -> {body.get('topic')}")
            bad = {k: v for k, v in batch[0].items() if k not in ("page", "dwell_seconds")}
            bad |= {"event_id": "demo-api-bad", "event_type": "purchase", "quantity": 1, "amount": -3.0}
            r = c.post("/v1/events", json={"events": [bad]})
            report.rejected_status = r.status_code
            problems = "; ".join(f"event {e['index']} ({e['event_id']}) {e['field']}: {e['problem']}"
                                 for e in r.json().get("errors", []))
            say(f"   POST /v1/events (a bad event) -> {r.status_code}: {problems}")
            for who, (user, session, _) in moments.items():
                t0 = time.perf_counter()
                r = c.post("/v1/score", json={"user_id": user, "session_id": session, "request_time": at.isoformat()})
                ms = (time.perf_counter() - t0) * 1000
                answer = r.json()
                report.scores[who] = answer
                if r.status_code != 200:
                    say(f"   POST /v1/score {who} -> {r.status_code}: {answer.get('detail')}")
                    continue
                scores = ", ".join(f"{m} {s['score']:.3f} (v{s['version']})" for m, s in answer["scores"].items())
                ages = ", ".join(f"{v} {a['state']}" + (f" {a['age_seconds']:,.0f}s" if a["age_seconds"] is not None
                                                        else "") for v, a in answer["views"].items())
                say(f"   {who:15s} {user}: {scores}; {ms:.1f} ms (server {answer['latency_ms']:.1f} ms)"
                    + (" DEGRADED: " + str(answer["reason"]) if answer["degraded"] else "") + f"; views: {ages}")
            user, session, _ = next(iter(moments.values()))
            for _ in range(repeats):
                t0 = time.perf_counter()
                c.post("/v1/score", json={"user_id": user, "session_id": session, "request_time": at.isoformat()})
                report.latencies_ms.append((time.perf_counter() - t0) * 1000)
            say(f"   {report.summary()} (closed loop, one connection; `make bench-serving` measures open-loop load)")
    say("   service stopped")
    return report
