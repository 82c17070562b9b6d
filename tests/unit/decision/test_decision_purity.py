"""The decision layer is pure: it imports no server, no store and no other part of serving/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import serving.decision

PACKAGE = Path(serving.decision.__file__).parent


def test_importing_the_decision_layer_loads_no_server_and_no_store() -> None:
    code = ("import sys, serving.decision, serving.decision.simulator\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('bentoml', 'redis', 'feast', 'mlflow', "
            "'pyspark', 'bytewax', 'sqlite3') or (m.startswith('serving.') and not m.startswith('serving.decision')))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parents[1])
    assert out.stdout.strip() == "[]"


def test_every_module_has_one_concern_and_stays_small() -> None:
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) < 600, path.name
