"""Unit tests of the pure rules: keys, request parsing, SSE, error mapping, typed conversion."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator

import grpc
import pytest

from typegpt.gateway.v1 import chat_pb2
from typegpt_gateway.api.proto_json import parse_answer, request_body
from typegpt_gateway.chat import sse
from typegpt_gateway.chat.request import parse_chat_request
from typegpt_gateway.errors import GatewayError, scrub
from typegpt_gateway.keystore import records
from typegpt_gateway.keystore.records import (
    KeyRecord,
    authenticate,
    bearer_token,
    hash_key,
    parse_duration,
)
from typegpt_gateway.upstream.client import retry_after_seconds, upstream_error

SECRET = "sk-upstream-abcdef0123456789"


# --- keys ------------------------------------------------------------------------------------


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


# --- request parsing -------------------------------------------------------------------------


def test_parse_chat_request_reads_model_and_stream():
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": true}'
    request = parse_chat_request(body)
    assert (request.model, request.stream) == ("gpt-4o", True)
    assert parse_chat_request(body.replace(b"true", b"null")).stream is False


def test_parse_chat_request_accepts_integers_beyond_64_bits():
    body = b'{"model": "m", "messages": [{"role": "user"}], "seed": 340282366920938463463374607431768211457}'
    assert parse_chat_request(body).model == "m"


def test_parse_chat_request_survives_absurd_nesting():
    body = (
        b'{"model": "m", "messages": [{"role": "user"}], "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}"
    )
    try:
        parse_chat_request(body)
    except GatewayError as error:
        assert error.status == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # A key limited to gpt-4o was admitted with gpt-5 first: upstreams may keep the first.
        (b'{"model": "gpt-5", "model": "gpt-4o", "messages": [{"role": "user"}]}', "model"),
        (b'{"model": "gpt-5", "mod\\u0065l": "gpt-4o", "messages": [{"role": "user"}]}', "model"),
        (b'{"a/b": 1, "a\\/b": 2, "model": "m", "messages": [{"role": "user"}]}', "a/b"),
        (
            b'{"stream": false, "model": "m", "messages": [{"role": "user"}], "stream": true}',
            "stream",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user"}], "stream": true,'
            b' "stream_options": {"include_usage": false, "include_usage": true}}',
            "stream_options.include_usage",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "a long prompt",'
            b' "content": "x"}]}',
            "messages[0].content",
        ),
        (
            # The estimate reads the whole body: a long first description would go uncounted.
            b'{"model": "m", "messages": [{"role": "user"}], "tools": [{"type": "function",'
            b' "function": {"name": "f", "description": "long", "description": "short"}}]}',
            "tools[0].function.description",
        ),
    ],
)
def test_parse_chat_request_refuses_a_key_given_twice(body, param):
    with pytest.raises(GatewayError) as refused:
        parse_chat_request(body)
    assert (refused.value.status, refused.value.param) == (400, param)
    assert f"'{param}'" in refused.value.message


def test_parse_chat_request_takes_the_same_names_elsewhere_once_each():
    document = {
        "model": "m",
        "messages": [
            {"role": "user", "content": 'say "model" and \\"model\\": caf\u00e9'},
            {"role": "assistant", "content": "ok"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {
                        "type": "object",
                        "properties": {"model": {"type": "string"}, "role": {}},
                    },
                },
            }
        ],
        "metadata": {"content": "x", "stream": "y"},
    }
    for body in (json.dumps(document).encode(), json.dumps(document, ensure_ascii=False).encode()):
        assert parse_chat_request(body).model == "m"


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"model": "m", "messages": [{"role": "user"}]}',
        '{"model": "m", "messages": [{"role": "user"}]}'.encode("utf-16"),
        '{"model": "m", "messages": [{"role": "user"}]}'.encode("utf-16-le"),
        b'{"model": "m", "messages": [{"role": "user"}], "temperature": NaN}',
        b'{"model": "m", "messages": [{"role": "user"}], "temperature": -Infinity}',
        b'{"model": "m", "messages": [{"role": "user"}], "temperature": 1e999999}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\\udc00x"}]}',
    ],
    ids=["bom", "utf-16", "utf-16-le", "nan", "infinity", "1e999999", "high", "low"],
)
def test_parse_chat_request_refuses_what_is_not_strict_json(body):
    with pytest.raises(GatewayError) as refused:
        parse_chat_request(body)
    assert refused.value.status == 400
    assert "could not parse the JSON body" in refused.value.message


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/jsonx", False),
    ],
)
def test_parse_chat_request_reads_json_only_when_labelled_json(content_type, accepted):
    body = b'{"model": "m", "messages": [{"role": "user"}]}'
    try:
        parse_chat_request(body, content_type)
    except GatewayError as error:
        assert not accepted
        assert error.status == 400 and "Content-Type" in error.message
    else:
        assert accepted


# --- SSE -------------------------------------------------------------------------------------


def test_event_reader_reassembles_events_split_anywhere():
    stream = (
        b'data: {"a": 1}\n\n: comment\n\nevent: x\ndata: {"b":\ndata: 2}\r\n\r\ndata: [DONE]\n\n'
    )
    for cut in range(1, len(stream)):
        reader = sse.EventReader()
        events = list(reader.feed(stream[:cut])) + list(reader.feed(stream[cut:]))
        assert events == [b'{"a": 1}', b'{"b":\n2}', b"[DONE]"], cut
        assert reader.pending() == b""


def test_event_reader_keeps_an_unterminated_tail():
    reader = sse.EventReader()
    assert list(reader.feed(b'data: {"a": 1}\n\ndata: {"b"')) == [b'{"a": 1}']
    assert reader.pending() == b'data: {"b"'


def test_event_reader_left_mid_read_goes_on_from_the_first_unread_event():
    reader = sse.EventReader()
    events = reader.feed(b"data: 1\n\ndata: 2\n\ndata: 3")
    assert next(events) == b"1"
    assert reader.pending() == b"data: 2\n\ndata: 3"
    assert list(reader.feed(b"\r\r")) == [b"2", b"3"]
    assert reader.pending() == b""


def test_frames():
    assert sse.data_frame(b"{}") == b"data: {}\n\n"
    assert sse.DONE_FRAME == b"data: [DONE]\n\n"
    assert sse.KEEPALIVE_FRAME.startswith(b":")
    assert sse.is_error_event(b' { "error" : {}}') and not sse.is_error_event(b'{"errors": 1}')


# --- errors ----------------------------------------------------------------------------------


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


# --- typed gRPC conversions ------------------------------------------------------------------


def test_request_body_from_typed_params():
    params = chat_pb2.ChatCompletionParams(
        model="gpt-4o", seed=2**60, max_tokens=5, temperature=0.5
    )
    message = params.messages.add(role="user")
    message.content.string_value = "hi"
    params.extra_body.update({"new_param": 3, "nested": {"x": [1, 2.5]}})
    body = json.loads(request_body(params, stream=True, include_usage=True))
    assert body == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
        "max_tokens": 5,
        "seed": 2**60,
        "new_param": 3,
        "nested": {"x": [1, 2.5]},
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_parse_answer_ignores_unknown_fields_and_nulls():
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "new_field": {"x": 1},
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    parsed = parse_answer(json.dumps(answer).encode(), chat_pb2.CreateChatCompletionResponse())
    assert parsed.choices[0].finish_reason == "stop" and parsed.usage.total_tokens == 3
    with pytest.raises(GatewayError) as caught:
        parse_answer(b'{"created": "yesterday"}', chat_pb2.CreateChatCompletionResponse())
    assert caught.value.status == 502


def test_a_gateway_error_passes_through_a_context_manager_unchanged():
    @contextlib.contextmanager
    def around() -> Iterator[None]:
        yield

    error = GatewayError(404, "no such model", "invalid_request_error")
    with pytest.raises(GatewayError) as caught, around():
        raise error
    assert caught.value is error


@pytest.mark.parametrize("data", [b"5", b'"text"', b"[1]", b'{"choices": [5]}', b"null"])
def test_parse_answer_refuses_any_shape_it_cannot_take_as_a_502(data):
    with pytest.raises(GatewayError) as refused:
        parse_answer(data, chat_pb2.CreateChatCompletionResponse())
    assert refused.value.status == 502
