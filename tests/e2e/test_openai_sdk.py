"""The official `openai` SDKs (Python, and Node through tests/js/sdk_check.mjs) against the gateway.

The clients are used as their users would: `base_url` pointing at the gateway's /v1, nothing
else changed, so any mismatch with OpenAI's wire format shows up as a parse error, a wrong
exception class or a stream that ends without raising.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import node_sdk
import openai
import openapi_schema
import pytest
from fake_upstream import (
    COMPLETION_TOKENS,
    DEFAULT_CONTENT,
    DEFAULT_TOOL_ARGUMENTS,
    DEFAULT_TOOL_CALL_ID,
    PROMPT_TOKENS_PER_MESSAGE,
    WEATHER_TOOL,
    FakeUpstream,
    Reply,
    make_completion,
    make_error,
    make_stream_chunks,
)
from gateway_process import UPSTREAM_KEY, Gateway
from openai import OpenAI
from openai_shape import GUIDE_MODELS

MODEL = "gpt-4o"
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello, how are you?"},
]
TOOLS: list[dict[str, Any]] = [WEATHER_TOOL]
# A 1x1 transparent PNG.
PNG_DATA_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk"
    "YAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
INVALID_KEY = "sk-this-key-was-never-issued-0000000000000000"
TIMEOUT = 10.0


def make_client(gateway: Gateway, key: str) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


@pytest.fixture
def client(gateway: Gateway, api_key: str) -> Iterator[OpenAI]:
    with make_client(gateway, api_key) as sdk:
        yield sdk


@pytest.fixture
def schema() -> Any:
    if not openapi_schema.spec_available():
        pytest.skip(f"OpenAI OpenAPI description not found at {openapi_schema.SPEC_PATH}")
    return openapi_schema.validate


def media_type(headers: Any) -> str:
    return headers["content-type"].split(";")[0].strip()


# --------------------------------------------------------------------------
# Chat completions
# --------------------------------------------------------------------------


def test_completion(client: OpenAI, upstream: FakeUpstream) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.id.startswith("chatcmpl-")
    assert isinstance(completion.created, int)
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == DEFAULT_CONTENT
    assert choice.message.tool_calls is None
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS_PER_MESSAGE * len(MESSAGES)
    assert completion.usage.completion_tokens == COMPLETION_TOKENS
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    sent = upstream.last_request()
    assert sent.json() == {"model": MODEL, "messages": MESSAGES}
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_stream(client: OpenAI, upstream: FakeUpstream) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert chunks, "the stream had no chunks"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    # Without stream_options the client gets no usage chunk: every chunk has its choice.
    assert all(len(chunk.choices) == 1 for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == DEFAULT_CONTENT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [chunk.choices[0].finish_reason for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert upstream.last_request().json()["stream"] is True


def test_stream_include_usage_ends_with_a_usage_chunk(
    client: OpenAI, upstream: FakeUpstream
) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    *content_chunks, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == PROMPT_TOKENS_PER_MESSAGE * len(MESSAGES)
    assert last.usage.completion_tokens == COMPLETION_TOKENS
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(chunk.usage is None and len(chunk.choices) == 1 for chunk in content_chunks)
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == DEFAULT_CONTENT
    assert content_chunks[-1].choices[0].finish_reason == "stop"
    assert upstream.last_request().json()["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("tool_name", [None, "get_weather"])
def test_an_upstream_that_ignores_stream_still_gives_a_stream(
    client: OpenAI, upstream: FakeUpstream, tool_name: str | None
) -> None:
    # Some OpenAI-compatible upstreams answer `stream: true` with their whole completion.
    whole = make_completion(tool_name=tool_name)
    upstream.enqueue(Reply.json(200, whole))
    with client.chat.completions.stream(
        model=MODEL, messages=MESSAGES, tools=TOOLS, stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    [choice] = final.choices
    assert choice.message.content == whole["choices"][0]["message"]["content"]
    assert choice.finish_reason == whole["choices"][0]["finish_reason"]
    if tool_name is not None:
        [call] = choice.message.tool_calls or []
        assert (call.id, call.function.name) == (DEFAULT_TOOL_CALL_ID, tool_name)
        assert call.function.arguments == DEFAULT_TOOL_ARGUMENTS
    assert final.usage is not None and final.usage.completion_tokens == COMPLETION_TOKENS


def test_tool_call(client: OpenAI, upstream: FakeUpstream) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id == DEFAULT_TOOL_CALL_ID
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(DEFAULT_TOOL_ARGUMENTS)
    assert upstream.last_request().json()["tools"] == TOOLS


def test_streamed_tool_call_deltas_assemble(client: OpenAI, upstream: FakeUpstream) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto", stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish_reasons = []
    for chunk in stream:
        [choice] = chunk.choices
        finish_reasons.append(choice.finish_reason)
        for delta in choice.delta.tool_calls or ():
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    assert calls == {
        0: {"id": DEFAULT_TOOL_CALL_ID, "name": "get_weather", "arguments": DEFAULT_TOOL_ARGUMENTS}
    }
    assert finish_reasons[-1] == "tool_calls"
    assert set(finish_reasons[:-1]) == {None}
    sent = upstream.last_request().json()
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"


def test_content_parts_reach_the_upstream_unchanged(client: OpenAI, upstream: FakeUpstream) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": [{"type": "text", "text": "Describe images tersely."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image? Ünïcödé ✓"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}},
            ],
        },
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == DEFAULT_CONTENT
    assert upstream.last_request().json()["messages"] == messages


def test_raw_response_content_types(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.status_code == 200
    assert media_type(raw.headers) == "application/json"
    assert raw.parse().choices[0].message.content == DEFAULT_CONTENT

    raw_stream = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    assert raw_stream.status_code == 200
    assert media_type(raw_stream.headers) == "text/event-stream"
    chunks = list(raw_stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_CONTENT


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def test_models_list_is_the_guides_catalog(client: OpenAI) -> None:
    models = list(client.models.list())
    assert [model.id for model in models] == GUIDE_MODELS
    for model in models:
        assert model.object == "model"
        assert isinstance(model.created, int)
        assert model.owned_by


def test_models_retrieve(client: OpenAI) -> None:
    model = client.models.retrieve("gpt-5")
    assert model.id == "gpt-5"
    assert model.object == "model"
    assert isinstance(model.created, int)
    assert model.owned_by
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-does-not-exist")
    assert caught.value.status_code == 404


# --------------------------------------------------------------------------
# Errors map onto the SDK's exception classes
# --------------------------------------------------------------------------


def test_missing_key_is_authentication_error(client: OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers={"Authorization": openai.Omit()}
        )
    error = caught.value
    assert error.status_code == 401
    assert error.type == "authentication_error"
    # The SDK types `code` as a string; the raw body has the guide's number.
    assert error.body["code"] == 401  # type: ignore[index]
    assert upstream.requests == []


def test_invalid_key_is_permission_denied(gateway: Gateway, upstream: FakeUpstream) -> None:
    with (
        make_client(gateway, INVALID_KEY) as sdk,
        pytest.raises(openai.PermissionDeniedError) as caught,
    ):
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = caught.value
    assert error.status_code == 403
    # The guide's example error response.
    assert error.body == {
        "message": "Invalid API key",
        "type": "authentication_error",
        "param": None,
        "code": 403,
    }
    assert upstream.requests == []


def test_invalid_key_on_models_is_permission_denied(gateway: Gateway) -> None:
    with make_client(gateway, INVALID_KEY) as sdk, pytest.raises(openai.PermissionDeniedError):
        sdk.models.list()


def test_unknown_model_is_not_found(client: OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-does-not-exist", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert caught.value.param == "model"
    assert upstream.requests == []


def test_upstream_rate_limit_is_rate_limit_error_with_retry_after(
    client: OpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(Reply.json(429, headers={"Retry-After": "2"}))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "2"
    assert error.type == "rate_limit_error"
    assert len(upstream.requests) == 1


def test_upstream_server_error_is_internal_server_error_502(
    client: OpenAI, upstream: FakeUpstream
) -> None:
    upstream.enqueue(
        Reply.json(500, make_error(f"backend exploded near {UPSTREAM_KEY}", "server_error"))
    )
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = caught.value
    assert error.status_code == 502
    assert error.body["code"] == 502  # type: ignore[index]
    assert "backend exploded" in error.message
    # The upstream's words are passed on, its credentials never.
    assert UPSTREAM_KEY not in error.response.text


def test_upstream_bad_request_is_bad_request_error(client: OpenAI, upstream: FakeUpstream) -> None:
    message = "Invalid value for 'temperature': must be between 0 and 2."
    upstream.enqueue(Reply.json(400, make_error(message, param="temperature")))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=3)
    error = caught.value
    assert error.status_code == 400
    assert error.body is not None and error.body["message"] == message  # type: ignore[index]
    assert message in error.message
    assert error.type == "invalid_request_error"
    assert error.param == "temperature"


@pytest.mark.parametrize(
    ("reply", "error_class", "status"),
    [
        (Reply.json(429, headers={"Retry-After": "3"}), openai.RateLimitError, 429),
        (Reply.json(500), openai.InternalServerError, 502),
        (Reply.json(400, make_error("Bad 'n'.", param="n")), openai.BadRequestError, 400),
    ],
    ids=["429", "500", "400"],
)
def test_stream_request_refused_upstream_raises_before_the_stream(
    client: OpenAI,
    upstream: FakeUpstream,
    reply: Reply,
    error_class: type[openai.APIStatusError],
    status: int,
) -> None:
    # An upstream that refuses before the first byte gives a real HTTP error status, not a
    # 200 event stream, so the SDK raises from create() as for a non-streamed request.
    upstream.enqueue(reply)
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert caught.value.status_code == status
    assert media_type(caught.value.response.headers) == "application/json"
    assert caught.value.body["code"] == status  # type: ignore[index]


def test_stream_request_with_invalid_key_is_permission_denied(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    with make_client(gateway, INVALID_KEY) as sdk, pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert upstream.requests == []


@pytest.mark.parametrize("clean_eof", [False, True], ids=["connection-dropped", "no-done"])
def test_upstream_stream_breaking_makes_the_sdk_raise(
    client: OpenAI, upstream: FakeUpstream, clean_eof: bool
) -> None:
    events = make_stream_chunks(model=MODEL)[:3]  # role, "Hello", " from"
    upstream.enqueue(Reply.stream(events, done=False, clean_eof=clean_eof))
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:  # iterating is what must raise
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == 502


# --------------------------------------------------------------------------
# Responses match the official OpenAPI schemas
# --------------------------------------------------------------------------


def test_completion_matches_openapi_schema(client: OpenAI, schema: Any) -> None:
    for extra in ({}, {"tools": TOOLS}):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=MESSAGES,
            **extra,  # type: ignore[arg-type]
        )
        schema(raw.http_response.json(), "CreateChatCompletionResponse")


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
def test_stream_chunks_match_openapi_schema(client: OpenAI, schema: Any, tools: bool) -> None:
    extra: dict[str, Any] = {"tools": TOOLS} if tools else {}
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    ) as response:
        assert media_type(response.headers) == "text/event-stream"
        payloads = [
            line.removeprefix("data: ")
            for line in response.iter_lines()
            if line.startswith("data:")
        ]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert chunks
    for chunk in chunks:
        schema(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_models_match_openapi_schema(client: OpenAI, schema: Any) -> None:
    schema(client.models.with_raw_response.list().http_response.json(), "ListModelsResponse")
    schema(client.models.with_raw_response.retrieve("gpt-5").http_response.json(), "Model")


# --------------------------------------------------------------------------
# The official Node SDK
# --------------------------------------------------------------------------


def test_node_sdk(gateway: Gateway, api_key: str, upstream: FakeUpstream) -> None:
    summary = node_sdk.run_check(
        "sdk_check.mjs", gateway.url + "/v1", api_key, GATEWAY_INVALID_KEY=INVALID_KEY
    )

    assert summary["completion"] == {
        "object": "chat.completion",
        "model": MODEL,
        "content": DEFAULT_CONTENT,
        "finishReason": "stop",
    }
    stream = summary["stream"]
    assert stream["content"] == DEFAULT_CONTENT
    assert stream["finishReason"] == "stop"
    assert stream["lastChoices"] == 0
    assert stream["usage"] == {
        "prompt_tokens": PROMPT_TOKENS_PER_MESSAGE * len(MESSAGES),
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS_PER_MESSAGE * len(MESSAGES) + COMPLETION_TOKENS,
    }
    expected_call = {
        "id": DEFAULT_TOOL_CALL_ID,
        "name": "get_weather",
        "arguments": DEFAULT_TOOL_ARGUMENTS,
    }
    assert summary["tools"] == {"finishReason": "tool_calls", "calls": [expected_call]}
    assert summary["toolsStream"] == {"finishReason": "tool_calls", "calls": [expected_call]}
    assert summary["error"] == {
        "class": "PermissionDeniedError",
        "status": 403,
        "type": "authentication_error",
        "code": 403,
        "message": "Invalid API key",
    }
    # Everything but the invalid-key call reached the upstream.
    assert len(upstream.requests) == 4
