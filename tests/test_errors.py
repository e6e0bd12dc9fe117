"""The gateway's errors: statuses, types and gRPC codes, bounded messages, scrubbed secrets."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import grpc
import pytest

from typegpt_gateway.errors import GatewayError, scrub

SECRET = "sk-upstream-abcdef0123456789"


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
        (401, grpc.StatusCode.UNAUTHENTICATED, "authentication_error"),
        (403, grpc.StatusCode.PERMISSION_DENIED, "authentication_error"),
        (404, grpc.StatusCode.NOT_FOUND, "invalid_request_error"),
        (405, grpc.StatusCode.FAILED_PRECONDITION, "invalid_request_error"),
        (408, grpc.StatusCode.DEADLINE_EXCEEDED, "timeout_error"),
        (409, grpc.StatusCode.ABORTED, "invalid_request_error"),
        (413, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
        (422, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_error"),
        (431, grpc.StatusCode.FAILED_PRECONDITION, "invalid_request_error"),
        (500, grpc.StatusCode.INTERNAL, "api_error"),
        (501, grpc.StatusCode.UNIMPLEMENTED, "api_error"),
        (502, grpc.StatusCode.UNAVAILABLE, "api_error"),
        (503, grpc.StatusCode.UNAVAILABLE, "api_error"),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED, "timeout_error"),
    ],
)
def test_error_statuses(status, code, error_type):
    error = GatewayError(status, "msg ✓")
    assert error.grpc_code == code and error.type == error_type
    payload = json.loads(error.to_json())
    assert payload == {
        "error": {"message": "msg ✓", "type": error_type, "param": None, "code": status}
    }
    assert error.to_json().isascii()


def test_long_messages_are_cut():
    assert len(GatewayError(400, "x" * 10_000).message) <= 2001


def test_scrub_removes_keys_and_bearer_tokens():
    text = f"bad key {SECRET}; Authorization: Bearer abc.def-123; other sk-live-0123456789"
    cleaned = scrub(text, (SECRET,))
    assert (
        SECRET not in cleaned
        and "abc.def-123" not in cleaned
        and "sk-live-0123456789" not in cleaned
    )
    assert cleaned.startswith("bad key ")


def test_a_gateway_error_passes_through_a_context_manager_unchanged():
    @contextlib.contextmanager
    def around() -> Iterator[None]:
        yield

    error = GatewayError(404, "no such model", "invalid_request_error")
    with pytest.raises(GatewayError) as caught, around():
        raise error
    assert caught.value is error
