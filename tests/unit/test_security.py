"""API keys, scopes and the token bucket, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf.settings import load_settings
from serving.security import (
    Denied,
    KeyRing,
    RateLimiter,
    TokenBucket,
    hash_key,
    new_key,
    presented_key,
    read_keys_file,
    retry_after,
    store_key,
)


def test_a_new_key_is_stored_only_as_its_hash(tmp_path: Path) -> None:
    key, record = new_key("web", ["score", "events:write"])
    assert key.startswith(f"kairos_{record.key_id}_") and len(key) == 7 + 16 + 1 + 43
    path = tmp_path / "keys.yaml"
    store_key(path, record)
    text = path.read_text()
    assert key not in text and key.split("_")[2] not in text  # neither the key nor its secret
    assert record.hash in text and (path.stat().st_mode & 0o777) == 0o600
    assert read_keys_file(path) == [record]


def test_two_keys_never_share_a_salt_or_a_secret() -> None:
    (k1, r1), (k2, r2) = new_key("a", ["score"]), new_key("b", ["score"])
    assert k1 != k2 and r1.hash.split("$")[1] != r2.hash.split("$")[1]
    assert hash_key(k1, "ab" * 16) == hash_key(k1, "ab" * 16) != hash_key(k1, "cd" * 16)


def test_a_key_of_the_same_name_replaces_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    _, old = new_key("web", ["score"])
    _, other = new_key("batch", ["events:write"])
    _, new = new_key("web", ["score", "admin"])
    for r in (old, other, new):
        store_key(path, r)
    assert read_keys_file(path) == [other, new]


def test_unknown_scopes_are_refused() -> None:
    with pytest.raises(ValueError, match="scopes must be some of events:write, score, admin; got delete"):
        new_key("x", ["delete"])  # type: ignore[list-item]


def test_authentication_checks_the_secret_and_the_scope() -> None:
    key, record = new_key("web", ["score"])
    ring = KeyRing([record])
    who = ring.authenticate(key, "score")
    assert who.name == "web" and who.key_id == record.key_id and "score" in who.scopes
    with pytest.raises(Denied) as missing:
        ring.authenticate(None, "score")
    assert missing.value.status == 401 and "API key is required" in missing.value.detail
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(Denied) as bad:
        ring.authenticate(wrong, "score")
    assert bad.value.status == 401 and bad.value.detail == "unknown API key"
    with pytest.raises(Denied) as shape:
        ring.authenticate("let-me-in", "score")
    assert shape.value.status == 401
    with pytest.raises(Denied) as scope:
        ring.authenticate(key, "admin")
    assert scope.value.status == 403 and "lacks the scope 'admin'" in scope.value.detail
    for denied in (bad.value, shape.value, scope.value):
        assert key not in denied.detail and key.split("_")[2] not in denied.detail  # no answer echoes a key


def test_keys_come_from_the_settings_and_the_keys_file(tmp_path: Path) -> None:
    k1, r1 = new_key("from-yaml", ["score"])
    k2, r2 = new_key("from-file", ["admin"])
    store_key(tmp_path / "api_keys.yaml", r2)
    settings = load_settings(data_dir=tmp_path, serving={"keys": [r1.model_dump()]})
    ring = KeyRing.from_settings(settings)
    assert len(ring) == 2
    assert ring.authenticate(k1, "score").name == "from-yaml" and ring.authenticate(k2, "admin").name == "from-file"


def test_the_key_is_read_from_either_header() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer  abc ", None) == "abc"
    assert presented_key(None, "xyz") == "xyz"
    assert presented_key("Basic abc", None) is None and presented_key(None, None) is None


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=3.0, updated=100.0)  # quarter seconds: exact in binary
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == 0.25
    assert bucket.take(100.125) == 0.125  # half a token back
    assert bucket.take(100.25) == 0.0
    assert bucket.take(200.0) == 0.0 and bucket.tokens == 2.0  # refills to the burst, no more
    assert bucket.take(50.0) == 0.0 and bucket.tokens == 1.0  # a clock stepping back adds nothing


def test_each_key_has_its_own_bucket() -> None:
    limiter = RateLimiter(load_settings().serving.rate_limit.model_copy(update={"rate": 1.0, "burst": 1}))
    assert limiter.check("a", 0.0) == 0.0 and limiter.check("b", 0.0) == 0.0
    assert limiter.check("a", 0.0) > 0 and limiter.check("b", 0.5) == pytest.approx(0.5)
    assert retry_after(0.2) == "1" and retry_after(1.01) == "2"
