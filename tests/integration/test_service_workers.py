"""Two workers of the real service: each loads the champions, and /metrics adds up both workers' counts."""

from __future__ import annotations

import re
from collections import defaultdict

import httpx
import pytest

from kairos import jobs
from kairos.server import ServiceProcess, free_port
from serving.security import new_key, store_key
from tests.integration.conftest import Trained


def test_two_workers_share_one_metrics_registry(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("workers")
    settings, env = trained.serving_settings(data, online_store={"type": "sqlite", "path": str(data / "online.db")})
    env |= {"BENTOML_HOME": str(data / "bentoml")}
    jobs.stream(settings, workers=1)
    key, record = new_key("workers-test", ["score"])
    store_key(settings.keys_path, record)
    requests = 60
    with ServiceProcess(free_port(), env=env, log=data / "bentoml.log", workers=2) as process:
        process.wait_ready()
        for i in range(requests):  # a new connection each: the workers take turns accepting them
            r = httpx.post(f"{process.url}/v1/score", json={"user_id": f"u{i:08d}"},
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert r.status_code == 200, r.text
        text = httpx.get(f"{process.url}/metrics", timeout=30).text
    count = re.search(r'^kairos_request_seconds_count\{endpoint="/v1/score",status="200"\} (\S+)$', text, re.M)
    assert count is not None, text[:2000]
    assert float(count.group(1)) == requests, "every answer counted once, whichever worker gave it"
    served: dict[str, set[str]] = defaultdict(set)  # model -> the pids of the workers serving it
    for model, pid in re.findall(r'^kairos_champion_version\{model="(\w+)",pid="(\d+)"\}', text, re.M) + [
            (m, p) for p, m in re.findall(r'^kairos_champion_version\{pid="(\d+)",model="(\w+)"\}', text, re.M)]:
        served[model].add(pid)
    assert set(served) == set(settings.serving.models), text[:2000]
    assert all(len(pids) == 2 for pids in served.values()), served
