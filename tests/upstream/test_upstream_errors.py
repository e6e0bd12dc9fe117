"""An upstream's error answer as the client gets it: which status and type, its Retry-After,
and never a secret it echoed. Pure rules."""

from __future__ import annotations

import json

import pytest

from typegpt_gateway.upstream.client import retry_after_seconds, upstream_error

SECRET = "sk-upstream-abcdef0123456789"


def test_upstream_error_mapping():
    body = json.dumps({"error": {"message": f"Incorrect API key {SECRET}", "type": "x"}}).encode()
    for status in (401, 403):
        mapped = upstream_error(status, body, {}, (SECRET,))
        assert mapped.status == 502 and SECRET not in mapped.message
    limited = upstream_error(429, b"", {"Retry-After": "12"}, ())
    assert (limited.status, limited.type, limited.headers) == (
        429,
        "rate_limit_error",
        (("retry-after", "12"),),
    )
    failed = upstream_error(500, b"<html>Traceback ...</html>", {}, ())
    assert failed.status == 502 and "Traceback" not in failed.message
    passed = upstream_error(
        422,
        b'{"error": {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature"}}',
        {},
        (),
    )
    assert (passed.status, passed.message, passed.param) == (422, "bad temperature", "temperature")
    assert upstream_error(408, b"", {}, ()).status == 504


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "3"}, 3),
        ({"Retry-After-Ms": "1500"}, 2),
        ({}, 1),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0),
        ({"retry-after": "soon"}, 1),
    ],
)
def test_retry_after_seconds(headers, seconds):
    assert retry_after_seconds(headers) == seconds
