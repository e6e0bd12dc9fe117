"""Property-based tests (hypothesis) of the pure rules that read client and upstream bytes:
the chat request parser and the SSE reader and framer. Bounded by max_examples."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from typegpt.gateway.v1 import chat_pb2
from typegpt_gateway.api import proto_json
from typegpt_gateway.errors import GatewayError
from typegpt_gateway.pipeline.request import ChatRequest, parse_chat_request
from typegpt_gateway.pipeline.sse import DONE_FRAME, EventReader, data_frame, is_error_event
from typegpt_gateway.pipeline.usage_meter import (
    CHARS_PER_TOKEN,
    IMAGE_TOKENS,
    estimate_tokens,
    with_include_usage,
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    # JSON has no NaN or Infinity (json.dumps would write them, and they are refused).
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _parse(body: bytes) -> ChatRequest | GatewayError:
    try:
        return parse_chat_request(body)
    except GatewayError as error:
        return error


def _is_client_error(result: ChatRequest | GatewayError) -> bool:
    if isinstance(result, ChatRequest):
        return False
    assert result.status == 400 and result.type == "invalid_request_error", result
    payload = result.payload()["error"]
    assert payload["message"] and payload["code"] == 400
    return True


# --- the request parser ------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=300))
@example(b"[" * 100_000)
@example(b'{"model": "m", "messages": [{"role": "u"}], "n": ' + b"9" * 5000 + b"}")
@example(b'{"model": "\xff"}')
@example(b"\xef\xbb\xbf{}")
def test_any_bytes_give_a_request_or_a_400(body: bytes) -> None:
    result = _parse(body)
    if isinstance(result, ChatRequest):
        document = json.loads(body)
        assert result.model == document["model"]


@SETTINGS
@given(json_values)
def test_any_json_gives_a_request_or_a_400_naming_the_field(value: object) -> None:
    result = _parse(json.dumps(value).encode())
    if _is_client_error(result):
        assert result.param in (None, "model", "messages", "stream") or re.fullmatch(  # type: ignore[union-attr]
            r"messages\[\d+\](\.role)?",
            result.param or "",  # type: ignore[union-attr]
        )
    else:
        assert isinstance(value, dict)


messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.text(min_size=1, max_size=10)},
        optional={"content": json_values, "name": st.text(max_size=5)},
    ),
    min_size=1,
    max_size=4,
)
valid_documents = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=30), "messages": messages},
    optional={
        "stream": st.none() | st.booleans(),
        "stream_options": json_values
        | st.fixed_dictionaries({"include_usage": st.booleans() | json_values}),
        "temperature": st.floats(0, 2),
        "n": st.integers(min_value=-(2**70), max_value=2**70),
        "extra": json_values,
    },
)


def _chars_of(value: object) -> int:
    """The characters of every string and key in `value`, an image part at its fixed count."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars_of(item) for item in value)
    if isinstance(value, dict):
        if value.get("type") == "image_url":
            return IMAGE_TOKENS * CHARS_PER_TOKEN
        return sum(len(key) + _chars_of(member) for key, member in value.items())
    return 0


@SETTINGS
@given(valid_documents)
def test_valid_requests_are_read_exactly(document: dict) -> None:
    result = parse_chat_request(json.dumps(document).encode())
    options = document.get("stream_options")
    include_usage = None
    if "stream_options" in document:
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
    assert result == ChatRequest(
        model=document["model"],
        stream=bool(document.get("stream")),
        include_usage=include_usage,
        prompt_tokens=estimate_tokens(_chars_of(document)),
    )


@SETTINGS
@given(valid_documents, st.sampled_from(["", " ", "\n\t ", "\r\n"]), st.booleans())
def test_asking_for_usage_adds_exactly_stream_options(
    document: dict, space: str, indent: bool
) -> None:
    document.pop("stream_options", None)
    body = (space + json.dumps(document, indent=2 if indent else None)).encode()
    spliced = with_include_usage(body)
    assert spliced.endswith(body[body.index(b"{") + 1 :])  # the client's bytes, unchanged
    assert json.loads(spliced) == {**document, "stream_options": {"include_usage": True}}


@SETTINGS
@given(
    valid_documents,
    st.sampled_from(["model", "messages", "stream", "role"]),
    json_values,
)
def test_a_broken_field_is_a_400_naming_it(document: dict, field: str, bad: object) -> None:
    if field == "model":
        if isinstance(bad, str) and bad:
            return
        document["model"] = bad
        expected = "model"
    elif field == "messages":
        if (
            isinstance(bad, list)
            and bad
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in bad)
        ):
            return
        document["messages"] = bad
        expected = "messages"
    elif field == "stream":
        if bad is None or isinstance(bad, bool):
            return
        document["stream"] = bad
        expected = "stream"
    else:
        if isinstance(bad, str):
            return
        document["messages"][-1]["role"] = bad
        expected = f"messages[{len(document['messages']) - 1}].role"
    result = _parse(json.dumps(document).encode())
    assert _is_client_error(result)
    assert result.param is not None  # type: ignore[union-attr]
    assert result.param.startswith(expected) or expected.startswith(result.param)  # type: ignore[union-attr]


_TWIN = "twin-key-placeholder"


def _spellings(key: str) -> st.SearchStrategy[str]:
    """JSON spellings of `key`: as json.dumps writes it, or every character escaped."""
    code_units = key.encode("utf-16-le")
    escaped = "".join(
        f"\\u{int.from_bytes(code_units[i : i + 2], 'little'):04x}"
        for i in range(0, len(code_units), 2)
    )
    return st.sampled_from([json.dumps(key), f'"{escaped}"'])


@SETTINGS
@given(valid_documents, st.data())
def test_a_key_given_twice_is_a_400_naming_it(document: dict, data: st.DataObject) -> None:
    places: list[tuple[str, dict]] = [("", document)]
    if isinstance(document.get("stream_options"), dict) and document["stream_options"]:
        places.append(("stream_options", document["stream_options"]))
    places += [(f"messages[{i}]", message) for i, message in enumerate(document["messages"])]
    path, target = data.draw(st.sampled_from(places))
    key = data.draw(st.sampled_from(sorted(target)))
    # The twin comes first: the parser keeps the last, the one the document holds.
    twin = {_TWIN: data.draw(json_values), **target}
    target.clear()
    target.update(twin)
    body = json.dumps(document).replace(json.dumps(_TWIN), data.draw(_spellings(key)), 1)
    result = _parse(body.encode())
    assert _is_client_error(result)
    assert result.param == (f"{path}.{key}" if path else key)  # type: ignore[union-attr]


# --- typed gRPC params to JSON ---------------------------------------------------------------


@SETTINGS
@given(
    st.floats(allow_nan=True, allow_infinity=True),
    # extra_body merges into the top level by design, so it must not name the checked fields.
    st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("model", "stream", "temperature")),
        json_values,
        max_size=4,
    ),
)
@example(1e300, {})  # integral, but past what JSON encoders take as an integer
def test_typed_params_become_json_or_a_400(temperature: float, extra: dict) -> None:
    params = chat_pb2.ChatCompletionParams(model="gpt-4o", temperature=temperature)
    params.extra_body.update(extra)
    try:
        body = proto_json.request_body(params, stream=False)
    except GatewayError as error:
        assert error.status == 400
        return
    document = json.loads(body)
    assert document["model"] == "gpt-4o" and document["stream"] is False
    if math.isfinite(temperature):
        assert document["temperature"] == temperature
    else:  # proto3 JSON spells them as strings; the upstream judges them
        assert document["temperature"] in ("Infinity", "-Infinity", "NaN")


# --- the SSE reader and framer -----------------------------------------------------------------

# Payloads as upstreams send them: one line of anything but CR and LF.
payloads = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def _chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    pieces, last = [], 0
    for point in [*points, len(stream)]:
        pieces.append(stream[last:point])
        last = point
    return pieces


def _read(chunks: list[bytes]) -> list[bytes]:
    reader = EventReader()
    return [data for chunk in chunks for data in reader.feed(chunk)]


@SETTINGS
@given(st.lists(payloads, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_framed_events_read_back_exactly_however_the_bytes_are_cut(events, cuts) -> None:
    stream = b"".join(map(data_frame, events)) + DONE_FRAME
    assert _read(_chunked(stream, cuts)) == [*events, b"[DONE]"]


def _reference(stream: bytes) -> list[bytes]:
    """The WHATWG event-stream rules for `data`, line by line, over the whole stream at once."""
    events, data = [], []
    lines = re.split(rb"\r\n|\r|\n", stream)
    for line in lines[:-1]:  # the last piece has no line end yet
        if line == b"":
            if data:
                events.append(b"\n".join(data))
            data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    return events


line_kinds = st.one_of(
    payloads.map(lambda p: b"data: " + p),
    payloads.map(lambda p: b"data:" + p),
    payloads.map(lambda p: b": " + p),  # a comment
    st.sampled_from([b"event: message", b"id: 7", b"retry: 1000", b""]),
)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])


@SETTINGS
@given(
    st.lists(st.tuples(line_kinds, line_ends), max_size=12),
    line_ends,
    st.lists(st.integers(0, 10_000), max_size=12),
)
@example([(b"data: a", b"\n"), (b"", b"\r\n")], b"\n", [])  # mixed line ends
@example([(b"data: a", b"\r"), (b"data: b", b"\r")], b"\r", [8])  # CR alone, cut after CR
def test_reader_agrees_with_the_event_stream_rules(lines, end, cuts) -> None:
    stream = b"".join(line + ending for line, ending in lines) + end + end
    expected = _reference(stream)
    assert _read(_chunked(stream, cuts)) == expected, (stream, cuts)
    assert _read([stream]) == expected


@SETTINGS
@given(json_values)
def test_error_events_are_recognised_only_by_a_top_level_error_key(value: object) -> None:
    data = json.dumps(value).encode()
    assert is_error_event(data) == (isinstance(value, dict) and next(iter(value), None) == "error")


@pytest.mark.parametrize("data", [b' {"error": 1}', b'{ "error" :{}}', b'{"error":null}'])
def test_error_event_spacing(data: bytes) -> None:
    assert is_error_event(data)
