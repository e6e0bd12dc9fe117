"""Client keys' pure rules: their format, hashing, bearer tokens, status and lifetimes."""

from __future__ import annotations

import dataclasses

import pytest

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore import records
from typegpt_gateway.keystore.records import (
    KeyRecord,
    authenticate,
    bearer_token,
    hash_key,
    parse_duration,
)


def _record(key: str, **fields: object) -> KeyRecord:
    return KeyRecord(name="n", key_hash=hash_key(key), prefix=key[:10], created_at=0, **fields)


def test_new_keys_are_long_random_and_prefixed():
    a, b = records.new_key(), records.new_key()
    assert a.startswith("sk-") and a != b
    assert len(a) >= 3 + 43  # 32 random bytes, base64url


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk-abc", "sk-abc"),
        ("bearer   sk-abc  ", "sk-abc"),
        ("Bearer", None),
        ("Basic sk-abc", None),
        ("sk-abc", None),
        ("Bearer a b", None),
        (None, None),
    ],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_authenticate_rules():
    good, revoked, expired = "sk-good", "sk-revoked", "sk-expired"
    lookup = {
        r.key_hash: r
        for r in (
            _record(good, expires_at=200.0),
            _record(revoked, revoked_at=50.0),
            _record(expired, expires_at=100.0),
        )
    }
    assert authenticate(f"Bearer {good}", lookup, now=150.0).name == "n"
    cases = [
        (None, 401),
        ("Bearer sk-unknown", 403),
        (f"Bearer {revoked}", 403),
        (f"Bearer {expired}", 403),
        (f"Bearer {good}", 403),
    ]
    for header, status in cases[:-1]:
        with pytest.raises(GatewayError) as caught:
            authenticate(header, lookup, now=150.0)
        assert caught.value.status == status
        assert caught.value.type == "authentication_error"
    with pytest.raises(GatewayError):
        authenticate(cases[-1][0], lookup, now=200.0)  # expiry is inclusive


def test_key_status():
    key = _record("sk-key")
    assert records.status(key, 100.0) == "active"
    assert records.status(dataclasses.replace(key, expires_at=101.0), 100.0) == "active"
    assert records.status(dataclasses.replace(key, expires_at=100.0), 100.0) == "expired"
    assert records.status(dataclasses.replace(key, revoked_at=1.0), 100.0) == "revoked"
    revoked_and_expired = dataclasses.replace(key, revoked_at=1.0, expires_at=99.0)
    assert records.status(revoked_and_expired, 100.0) == "revoked"


@pytest.mark.parametrize("revoked_at", [None, 50.0])
@pytest.mark.parametrize("expires_at", [None, 99.0, 100.0, 101.0])
def test_authenticate_refuses_exactly_the_keys_status_calls_inactive(revoked_at, expires_at):
    """One rule: the admin API shows the status that decides the key's next request."""
    record = _record("sk-key", revoked_at=revoked_at, expires_at=expires_at)
    state = records.status(record, 100.0)
    try:
        authenticate("Bearer sk-key", {record.key_hash: record}, now=100.0)
    except GatewayError as refused:
        assert refused.status == 403
        assert (
            refused.message
            == {
                "revoked": "Invalid API key: this key has been revoked",
                "expired": "Invalid API key: this key has expired",
            }[state]
        )
    else:
        assert state == "active"


def test_key_record_repr_shows_no_hash():
    record = _record("sk-secret-key")
    assert record.key_hash.hex() not in repr(record) and "sk-secret-key" not in repr(record)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 2592000), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 1209600), ("10", 10)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "-1d", "1y", "d", "1.5h"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)
