"""``make bento`` builds the service as a bento, and the built bento serves from settings given as environment
variables, started outside the checkout (so its code and defaults come from the bento, not the source tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from kairos import jobs
from kairos.server import ROOT, ServerProcess, free_port
from serving.security import new_key, store_key
from tests.integration.conftest import Trained


def test_the_built_bento_serves_from_environment_settings(trained: Trained, tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make is not None, "make is needed to build the bento (the README's commands are make targets)"
    home = tmp_path / "bentoml"
    env = {**os.environ, "BENTOML_HOME": str(home)}
    built = subprocess.run([make, "-s", "bento"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    bento = next(d for d in (home / "bentos" / "kairos").iterdir() if d.is_dir())  # (beside a "latest" file)
    src = bento / "src"
    assert (src / "serving" / "service.py").exists() and (src / "conf" / "kairos.yaml").exists()
    assert not (src / "tests").exists() and not (src / "var").exists()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    for pinned in ("bentoml==", "feast==", "xgboost-cpu==", "mlflow=="):
        assert pinned in requirements, pinned  # the versions of uv.lock

    data = tmp_path / "data"
    settings, settings_env = trained.serving_settings(data, online_store={"type": "sqlite",
                                                                          "path": str(data / "online.db")})
    jobs.stream(settings, workers=1)
    key, record = new_key("bento", ["score"])
    store_key(settings.keys_path, record)
    elsewhere = tmp_path / "run"  # not the checkout: nothing may come from the source tree
    elsewhere.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", f"kairos:{bento.name}", "--port", str(port),
               "--host", "127.0.0.1"]
    server = ServerProcess(command, port, env={**settings_env, "BENTOML_HOME": str(home),
                                               "KAIROS_HOME": str(elsewhere), "PYTHONPATH": ""},
                           log=tmp_path / "bento.log", cwd=elsewhere)
    with server:
        server.wait_ready()
        r = httpx.post(f"{server.url}/v1/score", json={"user_id": "u00000001"}, headers={"X-API-Key": key},
                       timeout=30)
        assert r.status_code == 200, r.text
        assert set(r.json()["scores"]) == {"purchase_propensity", "churn"}
    log = (tmp_path / "bento.log").read_text()
    assert f"from {src / 'serving' / 'service.py'}" in log, log[-3000:]  # the bento's copy, not the checkout's
