"""API keys, scopes and rate limits: pure functions and small classes, testable without a server.

Keys
----
A key reads ``kairos_<key id>_<secret>``: the key id (16 hex digits) is public and finds the
key's record; the secret (32 random bytes, URL-safe base64) is never stored. A record holds
``sha256$<salt>$<HMAC-SHA256(salt, key)>``, and a presented key is checked against it with
:func:`hmac.compare_digest` (constant time). A key of 256 random bits needs no slow hash
(argon2 exists for guessable passwords); a salted HMAC keeps stored hashes useless to an
attacker and keeps the check in microseconds, on every request.

Records come from ``serving.keys`` in the settings and from ``serving.keys_file``, which
``kairos keys create NAME --scopes ...`` appends to (it prints the key once). Nothing here
logs or returns a key: errors name the key id at most.

Scopes: ``events:write`` (``POST /v1/events``), ``score`` (scores and feature vectors),
``admin`` (reloading models).

Rate limits
-----------
A token bucket per key (:class:`TokenBucket`): ``rate`` tokens a second, at most ``burst``
saved. A request takes one token; without one it is refused with the seconds until the
next token (``Retry-After``). Buckets live in each worker process: with ``W`` workers a
key's ceiling is ``W x rate`` at most, as with any per-process limiter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml

from conf.settings import SCOPES, ApiKeySettings, RateLimitSettings, Scope, Settings

PREFIX: Final = "kairos"
_KEY = re.compile(r"^kairos_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def _digest(salt: str, key: str) -> str:
    return hmac.new(bytes.fromhex(salt), key.encode(), hashlib.sha256).hexdigest()


def hash_key(key: str, salt: str | None = None) -> str:
    """``sha256$<salt>$<HMAC-SHA256(salt, key)>`` for a key (a fresh 16-byte salt unless given)."""
    salt = salt or secrets.token_hex(16)
    return f"sha256${salt}${_digest(salt, key)}"


def new_key(name: str, scopes: Sequence[Scope]) -> tuple[str, ApiKeySettings]:
    """A new key and its record (the record holds only the hash): print the key once, store the record."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    key_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    key = f"{PREFIX}_{key_id}_{secret}"
    return key, ApiKeySettings(name=name, key_id=key_id, hash=hash_key(key), scopes=tuple(dict.fromkeys(scopes)))


def read_keys_file(path: Path) -> list[ApiKeySettings]:
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    return [ApiKeySettings(**k) for k in data.get("keys", [])]


def store_key(path: Path, record: ApiKeySettings) -> None:
    """Append a key record to the keys file (names are unique: a second key of a name replaces the first)."""
    keys = [k for k in read_keys_file(path) if k.name != record.name] + [record]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"keys": [k.model_dump(mode="json") for k in keys]}, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)


class Denied(Exception):
    """A request the key does not allow: ``status`` 401 (no or unknown key) or 403 (a missing scope)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and scopes (never the key)."""

    name: str
    key_id: str
    scopes: frozenset[str]


class KeyRing:
    """The known keys, by key id; :meth:`authenticate` checks a presented key and a required scope."""

    def __init__(self, records: Iterable[ApiKeySettings]) -> None:
        self._by_id: dict[str, ApiKeySettings] = {}
        for r in records:
            self._by_id[r.key_id] = r

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls([*settings.serving.keys, *read_keys_file(settings.keys_path)])

    def __len__(self) -> int:
        return len(self._by_id)

    def authenticate(self, presented: str | None, scope: Scope) -> Principal:
        if not presented:
            raise Denied(401, "an API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key'")
        m = _KEY.match(presented)
        record = self._by_id.get(m.group(1)) if m else None
        if record is None:
            # a wrong shape or an unknown id: still run one comparison, so both take as long as a wrong secret
            hmac.compare_digest(_digest("00" * 16, presented), "0" * 64)
            raise Denied(401, "unknown API key")
        _, salt, digest = record.hash.split("$")
        if not hmac.compare_digest(_digest(salt, presented), digest):
            raise Denied(401, "unknown API key")
        if scope not in record.scopes:
            raise Denied(403, f"API key {record.name!r} lacks the scope {scope!r} (it has {', '.join(record.scopes)})")
        return Principal(record.name, record.key_id, frozenset(record.scopes))


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; thread-safe."""

    rate: float
    burst: float
    tokens: float = -1.0
    updated: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is available."""
        with self.lock:
            t = time.monotonic() if now is None else now
            self.tokens = min(self.burst, self.tokens + max(0.0, t - self.updated) * self.rate)
            self.updated = max(t, self.updated)  # a clock that steps back gives no tokens and takes none
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per key id."""

    def __init__(self, limits: RateLimitSettings) -> None:
        self.limits = limits
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str, now: float | None = None) -> float:
        """0.0 if the request may go ahead, else the seconds to wait."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            with self._lock:
                bucket = self._buckets.setdefault(key_id, TokenBucket(
                    self.limits.rate, float(self.limits.burst), updated=time.monotonic() if now is None else now))
        return bucket.take(now)


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` header: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
