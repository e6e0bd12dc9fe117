"""The fake upstream must look like the OpenAI API on the wire, or gateway tests prove nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import openapi_schema
import pytest
from fake_upstream import DEFAULT_CONTENT, WEATHER_TOOL, FakeUpstream, Reply

CHAT: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ],
}
TOOLS: list[dict[str, Any]] = [
    WEATHER_TOOL,
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]

Validate = Callable[[Any, str], None]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.base_url, timeout=5) as http:
        yield http


@pytest.fixture
def schema() -> Validate:
    if not openapi_schema.spec_available():
        pytest.skip(f"OpenAI OpenAPI description not found at {openapi_schema.SPEC_PATH}")
    return openapi_schema.validate


def sse_data(lines: Iterator[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def stream_chunks(client: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, list[str]]:
    with client.stream("POST", "/chat/completions", json=body) as response:
        return response, sse_data(response.iter_lines())


@contextmanager
def scripted(
    client: httpx.Client,
    upstream: FakeUpstream,
    reply: Reply,
    body: dict[str, Any],
) -> Iterator[httpx.Response]:
    """Enqueue `reply`, send one chat request and yield the (streaming) response."""
    upstream.enqueue(reply)
    with client.stream("POST", "/chat/completions", json=body) as response:
        yield response


# --- default behaviour ------------------------------------------------------


def test_default_completion_is_a_valid_openai_response(
    client: httpx.Client, upstream: FakeUpstream, schema: Validate
) -> None:
    response = client.post("/chat/completions", json=CHAT)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    schema(body, "CreateChatCompletionResponse")
    assert body["id"] == "chatcmpl-fake1"
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"]["content"] == DEFAULT_CONTENT
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert upstream.last_request().json() == CHAT


def test_default_stream_is_valid_chunked_sse(client: httpx.Client, schema: Validate) -> None:
    response, data = stream_chunks(client, {**CHAT, "stream": True})

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["transfer-encoding"] == "chunked"
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    for chunk in chunks:
        schema(chunk, "CreateChatCompletionStreamResponse")
        assert "usage" not in chunk
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-fake1"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == DEFAULT_CONTENT


def test_each_stream_event_is_its_own_http_chunk(upstream: FakeUpstream) -> None:
    body = json.dumps({**CHAT, "stream": True}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        sock.sendall(request)
        raw = b""
        while data := sock.recv(65536):
            raw += data
    payload = raw.split(b"\r\n\r\n", 1)[1]
    chunks: list[bytes] = []
    while True:
        size_line, payload = payload.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(payload[:size])
        payload = payload[size + 2 :]
    # role chunk + five content pieces + finish chunk + [DONE]
    assert len(chunks) == 8
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"


def test_stream_usage_comes_last_when_asked_for(client: httpx.Client, schema: Validate) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    _, data = stream_chunks(client, body)

    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    for chunk in chunks:
        schema(chunk, "CreateChatCompletionStreamResponse")
    *regular, last = chunks
    assert all(chunk["usage"] is None and len(chunk["choices"]) == 1 for chunk in regular)
    assert regular[-1]["choices"][0]["finish_reason"] == "stop"
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == 10 + last["usage"]["completion_tokens"]


def test_tools_give_a_tool_call(client: httpx.Client, schema: Validate) -> None:
    body = client.post("/chat/completions", json={**CHAT, "tools": TOOLS}).json()

    schema(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "call_fake1"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Paris"}


def test_tool_choice_none_gives_text(client: httpx.Client) -> None:
    body = client.post("/chat/completions", json={**CHAT, "tools": TOOLS, "tool_choice": "none"})

    assert body.json()["choices"][0]["message"]["content"] == DEFAULT_CONTENT


def test_streamed_tool_call_uses_openai_fragments(client: httpx.Client, schema: Validate) -> None:
    _, data = stream_chunks(client, {**CHAT, "tools": TOOLS, "stream": True})

    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    for chunk in chunks:
        schema(chunk, "CreateChatCompletionStreamResponse")
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0] == {"role": "assistant", "content": None}
    first_call = deltas[1]["tool_calls"][0]
    assert first_call == {
        "index": 0,
        "id": "call_fake1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    fragments = [delta["tool_calls"][0]["function"]["arguments"] for delta in deltas[2:-1]]
    assert len(fragments) > 1
    assert json.loads("".join(fragments)) == {"location": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_models_list_and_unknown_routes(client: httpx.Client, schema: Validate) -> None:
    models = client.get("/models")
    missing = client.get("/nothing-here")

    assert models.status_code == 200
    schema(models.json(), "ListModelsResponse")
    assert len(models.json()["data"]) >= 2
    assert missing.status_code == 404
    schema(missing.json(), "ErrorResponse")


def test_body_that_is_not_json_is_a_400(client: httpx.Client, schema: Validate) -> None:
    response = client.post("/chat/completions", content=b"{not json")

    assert response.status_code == 400
    schema(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None and error["code"] is None


def test_openai_sdk_understands_the_fake(upstream: FakeUpstream) -> None:
    sdk = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0, timeout=5)

    completion = sdk.chat.completions.create(**CHAT)
    stream = sdk.chat.completions.create(**CHAT, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert completion.choices[0].message.content == DEFAULT_CONTENT
    assert streamed == DEFAULT_CONTENT
    assert upstream.last_request().headers["authorization"] == "Bearer sk-test"


# --- recording ---------------------------------------------------------------


def test_recorded_body_is_the_exact_bytes_sent(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    raw = '{ "model":"gpt-4o-mini",\n  "messages": [],  "note": "café \\u00e9" }\n'.encode()

    client.post(
        "/chat/completions?trace=1",
        content=raw,
        headers={"Content-Type": "application/json", "X-Custom-Header": "Yes"},
    )

    recorded = upstream.last_request()
    assert recorded.body == raw
    assert recorded.method == "POST"
    assert recorded.path == "/v1/chat/completions?trace=1"
    assert recorded.headers["x-custom-header"] == "Yes"
    assert recorded.headers["content-length"] == str(len(raw))


def test_chunked_request_bodies_are_reassembled(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    parts = [b'{"model": "gpt-4o-mini", ', b'"messages": []}']

    response = client.post("/chat/completions", content=iter(parts))

    assert response.status_code == 200
    assert upstream.last_request().headers["transfer-encoding"] == "chunked"
    assert upstream.last_request().body == b"".join(parts)


def test_reset_state_forgets_everything(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply.json(500))
    client.get("/models")

    upstream.reset_state()

    assert upstream.requests == []
    assert upstream.pending_replies == 0
    assert client.post("/chat/completions", json=CHAT).json()["id"] == "chatcmpl-fake1"


def test_reset_state_cuts_short_a_hang_from_before(upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply.hang())
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{upstream.base_url}/chat/completions", json=CHAT, timeout=5)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert upstream.wait_for_requests(1, timeout=2)
    upstream.reset_state()
    caller.join(timeout=2)

    assert not caller.is_alive()
    assert [type(error) for error in errors] == [httpx.RemoteProtocolError]
    assert upstream.disconnects == 0


def test_keep_alive_connections_are_reused(client: httpx.Client, upstream: FakeUpstream) -> None:
    client.post("/chat/completions", json=CHAT)
    client.post("/chat/completions", json={**CHAT, "stream": True})
    client.get("/models")

    assert upstream.open_connections == 1
    client.close()
    assert upstream.wait_for_open_connections(0, timeout=2)
    assert upstream.disconnects == 0


# --- scripted replies -----------------------------------------------------------


def test_scripted_429_comes_back_as_given(client: httpx.Client, upstream: FakeUpstream) -> None:
    error = {"error": {"message": "Slow down", "type": "requests", "param": None, "code": None}}
    reply = Reply.json(429, error, headers={"Retry-After": "7", "x-ratelimit-remaining": "0"})
    client_request = {**CHAT, "stream": True}

    with scripted(client, upstream, reply, client_request) as response:
        response.read()
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert response.headers["content-type"] == "application/json"
        assert response.json() == error


def test_scripted_raw_body_is_sent_verbatim(client: httpx.Client, upstream: FakeUpstream) -> None:
    html = b"<html><body><h1>502 Bad Gateway</h1>\nTraceback (most recent call last):</body></html>"
    reply = Reply.json(500, html, headers={"Content-Type": "text/html"})

    with scripted(client, upstream, reply, CHAT) as response:
        response.read()
        assert response.status_code == 500
        assert response.headers["content-type"] == "text/html"
        assert response.content == html


def test_scripted_error_without_body_is_openai_shaped(
    client: httpx.Client, upstream: FakeUpstream, schema: Validate
) -> None:
    with scripted(client, upstream, Reply.json(401), CHAT) as response:
        response.read()
        assert response.status_code == 401
        schema(response.json(), "ErrorResponse")


def test_replies_are_consumed_in_order_then_default(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply.json(503), Reply.json(200, {"id": "custom"}))

    statuses = [client.post("/chat/completions", json=CHAT) for _ in range(3)]

    assert [response.status_code for response in statuses] == [503, 200, 200]
    assert statuses[1].json() == {"id": "custom"}
    assert statuses[2].json()["object"] == "chat.completion"
    assert len(upstream.requests) == 3


def test_scripted_stream_sends_raw_strings_and_honours_delays(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    reply = Reply.stream(
        [": keep-alive\n\n", {"custom": 1}, "event: odd\ndata: x\n\n"],
        delay=0.05,
        first_delay=0.3,
        headers={"X-Scripted": "1"},
    )
    start = time.monotonic()

    with scripted(client, upstream, reply, CHAT) as response:
        lines = response.iter_lines()
        first_line = next(lines)
        first_after = time.monotonic() - start
        rest = list(lines)

    assert response.headers["x-scripted"] == "1"
    assert first_line == ": keep-alive"
    assert first_after >= 0.25
    assert 'data: {"custom": 1}' in rest
    assert rest[-2:] == ["data: [DONE]", ""]


def test_chunk_delay_slows_the_default_stream(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.chunk_delay = 0.05
    start = time.monotonic()

    _, data = stream_chunks(client, {**CHAT, "stream": True})

    # 8 events, 7 gaps between them.
    assert time.monotonic() - start >= 0.3
    assert data[-1] == "[DONE]"


def test_broken_stream_has_no_done(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply.stream_then_break([{"a": 1}, {"b": 2}]))
    received: list[str] = []

    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/chat/completions", json=CHAT) as response,
    ):
        received.extend(response.iter_lines())

    assert sse_data(iter(received)) == ['{"a": 1}', '{"b": 2}']


def test_stream_with_clean_eof_just_lacks_done(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply.stream([{"a": 1}], done=False, clean_eof=True))

    _, data = stream_chunks(client, CHAT)

    assert data == ['{"a": 1}']


def test_reset_is_a_connection_error(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply.reset())

    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post("/chat/completions", json=CHAT)
    assert client.post("/chat/completions", json=CHAT).status_code == 200


# --- clients that give up -------------------------------------------------------


def test_hang_notices_the_client_timing_out(client: httpx.Client, upstream: FakeUpstream) -> None:
    upstream.enqueue(Reply.hang())

    with pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json=CHAT, timeout=0.3)

    assert upstream.wait_for_disconnect(timeout=2)
    assert upstream.disconnects == 1
    assert upstream.wait_for_open_connections(0, timeout=2)


def test_slow_stream_notices_the_client_leaving(
    client: httpx.Client, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply.stream([{"n": n} for n in range(50)], delay=0.1))

    with client.stream("POST", "/chat/completions", json=CHAT) as response:
        assert next(response.iter_lines()) == 'data: {"n": 0}'
    # Leaving the block mid-body makes httpx close the connection.

    assert upstream.wait_for_disconnect(timeout=2)
    assert upstream.disconnects == 1


def test_stop_returns_promptly_while_a_handler_hangs() -> None:
    server = FakeUpstream()
    server.start()
    server.enqueue(Reply.hang())
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{server.base_url}/chat/completions", json=CHAT, timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert server.wait_for_requests(1, timeout=2)
    start = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - start
    caller.join(timeout=2)

    assert elapsed < 1
    assert not caller.is_alive()
    assert errors, "the hanging request should fail once the server stops"
    assert server.disconnects == 0


def test_a_tool_result_ends_the_round_trip_in_text(client: httpx.Client) -> None:
    first = client.post("/chat/completions", json={**CHAT, "tools": TOOLS}).json()
    call = first["choices"][0]["message"]
    messages = [
        *CHAT["messages"],
        call,
        {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "Sunny"},
    ]
    second = client.post(
        "/chat/completions", json={**CHAT, "messages": messages, "tools": TOOLS}
    ).json()
    assert second["choices"][0]["message"]["content"] == DEFAULT_CONTENT


RESPONSE_TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object"},
    "strict": False,
}


def test_native_responses_answer_and_tool_round_trip(
    client: httpx.Client, schema: Validate
) -> None:
    text = client.post("/responses", json={"model": "gpt-4o", "input": "Hi"})
    assert text.status_code == 200
    schema(text.json(), "Response")
    assert text.json()["output"][0]["content"][0]["text"] == DEFAULT_CONTENT
    call = client.post(
        "/responses", json={"model": "gpt-4o", "input": "Weather?", "tools": [RESPONSE_TOOL]}
    ).json()
    schema(call, "Response")
    [item] = call["output"]
    assert item["type"] == "function_call" and item["name"] == "get_weather"
    history = [
        {"role": "user", "content": "Weather?"},
        item,
        {"type": "function_call_output", "call_id": item["call_id"], "output": "Sunny"},
    ]
    done = client.post(
        "/responses", json={"model": "gpt-4o", "input": history, "tools": [RESPONSE_TOOL]}
    ).json()
    assert done["output"][0]["type"] == "message"


def test_native_responses_stream_is_typed_events(client: httpx.Client, schema: Validate) -> None:
    for body in (
        {"model": "gpt-4o", "input": "Hi", "stream": True},
        {"model": "gpt-4o", "input": "Hi", "stream": True, "tools": [RESPONSE_TOOL]},
    ):
        with client.stream("POST", "/responses", json=body) as response:
            lines = list(response.iter_lines())
        names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
        events = [json.loads(data) for data in sse_data(iter(lines))]
        assert names == [event["type"] for event in events]
        assert [event["sequence_number"] for event in events] == list(range(len(events)))
        assert names[0] == "response.created" and names[-1] == "response.completed"
        for event in events:
            if "response" in event:
                schema(event["response"], "Response")
        schema(events[-1], "ResponseCompletedEvent")


def test_openai_sdk_understands_the_native_responses(upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test", max_retries=0)
    assert client.responses.create(model="gpt-4o", input="Hi").output_text == DEFAULT_CONTENT
    with client.responses.stream(model="gpt-4o", input="Hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == DEFAULT_CONTENT
