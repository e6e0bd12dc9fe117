"""The chat request's pure rules: reading a request, and server-sent events."""

from __future__ import annotations

import json

import pytest

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.pipeline import sse
from typegpt_gateway.pipeline.request import parse_chat_request

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
