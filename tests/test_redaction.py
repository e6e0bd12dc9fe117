"""Keys stay out of reprs, exception messages, tracebacks and log lines. In process, no server."""

from __future__ import annotations

import asyncio
import io
import logging
import traceback

import pytest
from gateway_process import free_port

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keys import KeyRecord, hash_key, new_key
from typegpt_gateway.redaction import install_log_redaction, redact, redact_bytes, register_secret
from typegpt_gateway.settings import Settings
from typegpt_gateway.upstream import Upstream, upstream_error

# Not shaped like a key: only registration can catch it.
SECRET = "tgp-unit-R4nd0mLooking7Secret9Zq"


def test_settings_repr_and_dump_hide_the_upstream_key(monkeypatch) -> None:
    monkeypatch.setenv("TYPEGPT_API_KEY", SECRET)
    settings = Settings()
    assert settings.upstream_key == SECRET
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(vars(settings))):
        assert SECRET not in text


def test_key_record_repr_shows_neither_key_nor_hash() -> None:
    key = new_key()
    record = KeyRecord(name="alice", key_hash=hash_key(key), prefix=key[:10], created_at=0.0)
    text = repr(record) + str(record)
    assert key not in text and hash_key(key).hex() not in text and repr(hash_key(key)) not in text
    assert "alice" in text


def test_upstream_repr_and_connection_errors_hide_the_key() -> None:
    async def scenario() -> GatewayError:
        upstream = Upstream(
            f"http://127.0.0.1:{free_port()}/v1", SECRET, connect_timeout=2, read_timeout=2
        )
        assert SECRET not in repr(upstream) + str(upstream)
        try:
            with pytest.raises(GatewayError) as caught:
                await upstream.open_chat(b'{"model": "m", "messages": []}', stream=False)
        finally:
            await upstream.aclose()
        return caught.value

    error = asyncio.run(scenario())
    assert error.status == 502
    cause = error.__cause__
    assert cause is not None  # the httpx exception, with its request
    texts = [str(error), repr(error), error.to_json(), str(cause), repr(cause)]
    texts.append("".join(traceback.format_exception(error)))
    texts.append(repr(cause.request) + repr(cause.request.headers))  # type: ignore[attr-defined]
    assert cause.request.headers["authorization"] == f"Bearer {SECRET}"  # type: ignore[attr-defined]
    for text in texts:
        assert SECRET not in text


def test_gateway_error_redacts_registered_secrets_and_key_shapes() -> None:
    register_secret(SECRET)
    client_key = new_key()
    error = GatewayError(
        400, f"bad {SECRET} and {client_key} and Bearer abc123def456", f"t {SECRET}", SECRET
    )
    text = str(error) + repr(error) + error.to_json()
    assert SECRET not in text and client_key not in text and "abc123def456" not in text
    # The guide's placeholder is not a key.
    assert "Bearer YOUR_CLIENT_API_KEY" in GatewayError(401, "Bearer YOUR_CLIENT_API_KEY").message


def test_upstream_error_echo_is_scrubbed() -> None:
    body = f'{{"error": {{"message": "key {SECRET}", "param": "{SECRET}"}}}}'.encode()
    for status in (400, 401, 422, 429, 500):
        error = upstream_error(status, body, {}, secrets=(SECRET,))
        assert SECRET not in error.to_json()


def test_redact_bytes_replaces_only_registered_secrets() -> None:
    register_secret(SECRET)
    data = f'{{"content": "{SECRET} sk-abcdefghijkl"}}'.encode()
    assert redact_bytes(data) == b'{"content": "[redacted] sk-abcdefghijkl"}'
    assert redact_bytes(b"nothing here") == b"nothing here"


def test_short_secrets_are_not_registered() -> None:
    register_secret("abc")
    assert redact("abc abc") == "abc abc"


def test_log_lines_and_tracebacks_are_redacted() -> None:
    register_secret(SECRET)
    client_key = new_key()
    stream = io.StringIO()
    logger = logging.getLogger("test_redaction")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        install_log_redaction(logger)
        install_log_redaction(logger)  # idempotent
        logger.warning("upstream key %s, client key %s", SECRET, client_key)
        try:
            raise RuntimeError(f"header was Bearer {SECRET}")
        except RuntimeError:
            logger.exception("failed with %r", {"authorization": f"Bearer {client_key}"})
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "WARNING upstream key [redacted], client key sk-[redacted]" in output
    assert "Traceback" in output and "RuntimeError" in output
    assert SECRET not in output and client_key not in output


def test_words_that_merely_contain_sk_dash_are_left_alone() -> None:
    assert redact("model task-manager-v2") == "model task-manager-v2"
    assert redact("key sk-proj-abc123def456") == "key sk-[redacted]"
