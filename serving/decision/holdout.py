"""The control holdout: a sticky, versioned, deterministic hash of a salt and the user id.

``u = int(sha256("<salt>:v<version>:<user_id>")[:8 bytes], big-endian) / 2**64`` is uniform on [0, 1);
the user is in the holdout when ``u < fraction``. The same user is in the same group on every call, in
every process and language; changing the salt or the version re-draws the groups, and raising the
fraction only adds users (those already held out stay held out).
"""

from __future__ import annotations

import hashlib

from serving.decision.config import Holdout


def holdout_unit(user_id: str, salt: str, version: int) -> float:
    """The user's position on [0, 1) for this salt and version."""
    digest = hashlib.sha256(f"{salt}:v{version}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_holdout(user_id: str, holdout: Holdout) -> bool:
    return holdout_unit(user_id, holdout.salt, holdout.version) < holdout.fraction
