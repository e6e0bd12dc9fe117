"""Client keys: their format, hashing, records, and the pure rules that accept or refuse them."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from ..errors import GatewayError

KEY_PREFIX = "sk-"
KEY_BYTES = 32
# How much of a key `keys list` shows, to tell keys apart without revealing them.
SHOWN_PREFIX_CHARS = 10


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    key_hash: bytes
    prefix: str
    created_at: float
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_tokens: int | None = None
    budget_period: str | None = None  # "day" or "month", with either budget
    budget_usd_micro: int | None = None  # micro-dollars per budget_period
    expires_at: float | None = None
    revoked_at: float | None = None

    def __repr__(self) -> str:
        # The hash is not the key, but it still has no place in logs.
        return f"KeyRecord(name={self.name!r}, prefix={self.prefix!r})"

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models


Status = Literal["active", "expired", "revoked"]


def status(record: KeyRecord, now: float) -> Status:
    """Whether the key works at `now`: the one rule behind `authenticate` and the status the
    admin API and the CLI show. A revoked key is revoked, expired or not; expiry is
    inclusive."""
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and now >= record.expires_at:
        return "expired"
    return "active"


_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def bearer_token(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None when absent or malformed.

    Envoy's Lua filter (envoy/openai_errors.lua, `lacks_key`) mirrors this rule to refuse such
    requests on their headers: change both together (tests/e2e/test_edge.py holds them equal)."""
    if not authorization:
        return None
    match = _BEARER.match(authorization)
    return match.group(1) if match else None


def missing_key_error() -> GatewayError:
    """What a request gets when bearer_token finds no key in it: from the backend, or from Envoy
    and the gRPC server on the request's headers, before its body is read."""
    return GatewayError(
        401,
        "Missing API key. Send it as 'Authorization: Bearer YOUR_CLIENT_API_KEY'.",
        "authentication_error",
    )


def authenticate(
    authorization: str | None, lookup: dict[bytes, KeyRecord], now: float
) -> KeyRecord:
    """The record of the presented key, or the error the client gets."""
    key = bearer_token(authorization)
    if key is None:
        raise missing_key_error()
    digest = hash_key(key)
    record = lookup.get(digest)
    # The dict finds the candidate by its hash; the comparison itself is constant-time.
    if record is None or not hmac.compare_digest(record.key_hash, digest):
        raise GatewayError(403, "Invalid API key", "authentication_error")
    match status(record, now):
        case "revoked":
            raise GatewayError(
                403, "Invalid API key: this key has been revoked", "authentication_error"
            )
        case "expired":
            raise GatewayError(403, "Invalid API key: this key has expired", "authentication_error")
    return record


def parse_duration(text: str) -> int:
    """Seconds in '30d', '12h', '90m', '45s', '2w' or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (try 30d, 12h, 90m)")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
