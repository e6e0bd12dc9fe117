"""Unit tests of the gRPC servicers, in process.

grpc_testing (grpcio-testing) cannot drive these servicers: it calls every handler
synchronously on a thread, so an `async def` handler hands it a coroutine instead of a
response and an async generator is not an iterator at all (the first test below pins that
down, so this choice is revisited if grpc_testing ever learns grpc.aio). Instead each test
starts the real backend, `start_backend(Settings(...))`, on a grpc.aio server bound to
127.0.0.1:0 with a temporary key store and the fake upstream, and talks to it with a
grpc.aio channel. There is no pytest-asyncio: every test body is a coroutine run by
`asyncio.run`, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest
from fake_upstream import (
    DEFAULT_CONTENT,
    DEFAULT_STREAM_PIECES,
    FakeUpstream,
    Reply,
    make_completion,
    make_stream_chunks,
)
from google.api import httpbody_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc, status_pb2, status_pb2_grpc
from typegpt_gateway.api import proto_json
from typegpt_gateway.api.status_service import StatusServicer
from typegpt_gateway.keystore.ledger import UsageLedger
from typegpt_gateway.keystore.sqlite import KeyStore
from typegpt_gateway.ops import observe
from typegpt_gateway.pipeline.pipeline import Pipeline
from typegpt_gateway.pipeline.sse import DONE_FRAME, KEEPALIVE_FRAME
from typegpt_gateway.pipeline.usage_meter import UsageMeter
from typegpt_gateway.process.backend import Backend, start_backend
from typegpt_gateway.process.readiness import ReadinessProbe
from typegpt_gateway.settings import Settings
from typegpt_gateway.upstream.failover import Failover

UPSTREAM_SECRET = "sk-upstream-UNIT-SECRET-9876543210"
TEST_TIMEOUT = 12.0


# -- harness --------------------------------------------------------------------------------


@dataclass
class Keys:
    full: str
    limited: str
    db: Path


@dataclass
class Harness:
    backend: Backend
    channel: grpc.aio.Channel
    chat: chat_pb2_grpc.ChatServiceStub
    status: status_pb2_grpc.StatusServiceStub
    health: health_pb2_grpc.HealthStub


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    db = tmp_path / "keys.db"
    store = KeyStore(db)
    try:
        _, full = store.create("unit-full")
        _, limited = store.create("unit-limited", models=["gpt-4o", "o3"])
    finally:
        store.close()
    return Keys(full, limited, db)


def make_settings(upstream: FakeUpstream, keys: Keys, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "TYPEGPT_API_KEY": UPSTREAM_SECRET,
        "TYPEGPT_BASE_URL": upstream.base_url,
        "db": keys.db,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "sse_keepalive_interval": 15.0,
        "key_refresh_interval": 0.1,
        "upstream_connect_timeout": 2.0,
        "upstream_first_byte_timeout": 10.0,
        "upstream_idle_timeout": 10.0,
        "upstream_max_attempts": 1,
        "upstream_cooldown_after": 0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Harness]:
    backend = await start_backend(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
            yield Harness(
                backend,
                channel,
                chat_pb2_grpc.ChatServiceStub(channel),
                status_pb2_grpc.StatusServiceStub(channel),
                health_pb2_grpc.HealthStub(channel),
            )
    finally:
        await backend.stop(0)


def drive(settings: Settings, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    """Runs `scenario` against a freshly started backend, in a new event loop."""

    async def main() -> None:
        async with serving(settings) as harness:
            await scenario(harness)

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def params(model: str = "gpt-4o", **fields: Any) -> chat_pb2.ChatCompletionParams:
    fields.setdefault(
        "messages",
        [chat_pb2.ChatMessage(role="user", content=struct_pb2.Value(string_value="Hi"))],
    )
    return chat_pb2.ChatCompletionParams(model=model, **fields)


def http_request(body: bytes) -> chat_pb2.CreateChatCompletionHttpRequest:
    return chat_pb2.CreateChatCompletionHttpRequest(
        http_body=httpbody_pb2.HttpBody(content_type="application/json", data=body)
    )


async def rpc_error(call: Awaitable[Any] | AsyncIterable[Any]) -> grpc.aio.AioRpcError:
    """The error a unary call or a whole stream ends with (fails if it ends cleanly)."""
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        if isinstance(call, AsyncIterable):
            async for _ in call:
                pass
        else:
            await call
    return excinfo.value


def openai_error(error: grpc.aio.AioRpcError, code: grpc.StatusCode, status: int) -> dict[str, Any]:
    assert error.code() == code, (error.code(), error.details())
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["x-http-status"] == str(status)
    body = json.loads(trailers["x-openai-error"])
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status
    assert body["error"]["message"] == error.details()
    return body["error"]


# -- why not grpc_testing -------------------------------------------------------------------


def test_grpc_testing_cannot_drive_async_servicers() -> None:
    """grpc_testing runs handlers synchronously: an async servicer 'answers' a coroutine."""
    service = status_pb2.DESCRIPTOR.services_by_name["StatusService"]
    server = grpc_testing.server_from_dictionary(
        {service: StatusServicer(ReadinessProbe().problem)}, grpc_testing.strict_real_time()
    )
    rpc = server.invoke_unary_unary(
        service.methods_by_name["GetHealth"], (), status_pb2.GetHealthRequest(), None
    )
    response, _, code, _ = rpc.termination()
    try:
        assert asyncio.iscoroutine(response)
        assert code == grpc.StatusCode.OK  # "OK" without the handler ever having run
    finally:
        if asyncio.iscoroutine(response):
            response.close()


# -- CreateChatCompletion -------------------------------------------------------------------


def test_create_chat_completion(upstream: FakeUpstream, keys: Keys) -> None:
    async def scenario(h: Harness) -> None:
        request_params = params(temperature=1.0, top_p=0.5, n=1, seed=2**63 - 1)
        request_params.extra_body.update({"reasoning": {"effort": "low", "budget": 2048}})
        reply = await h.chat.CreateChatCompletion(
            chat_pb2.CreateChatCompletionRequest(params=request_params),
            metadata=auth(keys.full),
        )
        assert reply.choices[0].message.content.string_value == DEFAULT_CONTENT
        assert reply.system_fingerprint == "fp_fake"
        assert reply.usage.total_tokens == 12

    drive(make_settings(upstream, keys), scenario)
    sent = upstream.last_request()
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    body = json.loads(sent.body)
    assert body["stream"] is False
    assert body["seed"] == 2**63 - 1
    assert body["top_p"] == 0.5
    assert body["n"] == 1
    # Nested extra_body values keep their shape, integral numbers as integers.
    assert body["reasoning"] == {"effort": "low", "budget": 2048}
    assert type(body["reasoning"]["budget"]) is int


def test_create_chat_completion_tool_call(upstream: FakeUpstream, keys: Keys) -> None:
    async def scenario(h: Harness) -> None:
        tool = chat_pb2.Tool(
            type="function", function=chat_pb2.FunctionDefinition(name="get_weather")
        )
        tool.function.parameters.update({"type": "object", "properties": {}})
        reply = await h.chat.CreateChatCompletion(
            chat_pb2.CreateChatCompletionRequest(params=params(tools=[tool])),
            metadata=auth(keys.full),
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content.WhichOneof("kind") == "null_value"
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"location": "Paris"}

    drive(make_settings(upstream, keys), scenario)
    body = json.loads(upstream.last_request().body)
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_answer_that_does_not_fit_the_typed_api(upstream: FakeUpstream, keys: Keys) -> None:
    upstream.enqueue(Reply.json(200, {**make_completion(), "choices": "not a list"}))

    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        )
        body = openai_error(error, grpc.StatusCode.UNAVAILABLE, 502)
        assert "typed API" in body["message"]

    drive(make_settings(upstream, keys), scenario)


def test_answer_that_is_not_json(upstream: FakeUpstream, keys: Keys) -> None:
    upstream.enqueue(Reply.json(200, b"<html>gateway timeout</html>"))

    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        )
        openai_error(error, grpc.StatusCode.UNAVAILABLE, 502)

    drive(make_settings(upstream, keys), scenario)


def test_upstream_400_passes_through_scrubbed(upstream: FakeUpstream, keys: Keys) -> None:
    message = f"Bad 'temperature'; your key {UPSTREAM_SECRET} was used"
    upstream.enqueue(
        Reply.json(400, {"error": {"message": message, "type": "invalid_request_error",
                                   "param": "temperature", "code": None}})
    )  # fmt: skip

    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        )
        body = openai_error(error, grpc.StatusCode.INVALID_ARGUMENT, 400)
        assert body["param"] == "temperature"
        assert body["message"].startswith("Bad 'temperature'")
        assert UPSTREAM_SECRET not in json.dumps(body)
        assert UPSTREAM_SECRET not in str(error.trailing_metadata())

    drive(make_settings(upstream, keys), scenario)


def test_upstream_refusing_the_gateway_key(upstream: FakeUpstream, keys: Keys) -> None:
    upstream.enqueue(Reply.json(401))

    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        )
        # Not the client's fault: not UNAUTHENTICATED, and the operator is told what to check.
        body = openai_error(error, grpc.StatusCode.UNAVAILABLE, 502)
        assert "TYPEGPT_API_KEY" in body["message"]
        assert UPSTREAM_SECRET not in body["message"]

    drive(make_settings(upstream, keys), scenario)


def test_upstream_timeout_is_deadline_exceeded(upstream: FakeUpstream, keys: Keys) -> None:
    upstream.enqueue(Reply.hang(5))

    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        )
        openai_error(error, grpc.StatusCode.DEADLINE_EXCEEDED, 504)

    drive(make_settings(upstream, keys, upstream_first_byte_timeout=0.5), scenario)


def test_missing_upstream_key(
    upstream: FakeUpstream, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TYPEGPT_API_KEY", raising=False)

    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        )
        body = openai_error(error, grpc.StatusCode.UNAVAILABLE, 503)
        assert "not configured" in body["message"]
        assert "TYPEGPT_API_KEY" in body["message"]
        # Models need no upstream: they still work.
        reply = await h.chat.ListModels(chat_pb2.ListModelsRequest(), metadata=auth(keys.full))
        assert len(reply.data) == 8

    drive(make_settings(upstream, keys, TYPEGPT_API_KEY=None), scenario)
    assert upstream.requests == []


def test_unexpected_failure_is_internal_and_says_little(
    upstream: FakeUpstream, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_start(self: Pipeline, body: bytes, authorization: str | None) -> bytes:
        raise RuntimeError(f"boom with {UPSTREAM_SECRET}")

    monkeypatch.setattr(Pipeline, "start", broken_start)

    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        )
        body = openai_error(error, grpc.StatusCode.INTERNAL, 500)
        assert "boom" not in body["message"]
        assert UPSTREAM_SECRET not in str(error.trailing_metadata())

    drive(make_settings(upstream, keys), scenario)


@pytest.mark.parametrize("rpc", ["CreateChatCompletion", "StreamChatCompletion"])
def test_unexpected_failure_reading_the_answer_is_internal(
    upstream: FakeUpstream, keys: Keys, monkeypatch: pytest.MonkeyPatch, rpc: str
) -> None:
    """Every error leaves as a status plus x-openai-error, including a bug of our own while
    the typed answer is built, not as UNKNOWN with a Python exception for details."""

    def broken_parse(data: bytes, message: object) -> object:
        raise RuntimeError(f"boom with {UPSTREAM_SECRET}")

    monkeypatch.setattr(proto_json, "parse_answer", broken_parse)

    async def scenario(h: Harness) -> None:
        if rpc == "CreateChatCompletion":
            call: Any = h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        else:
            call = h.chat.StreamChatCompletion(
                chat_pb2.StreamChatCompletionRequest(params=params()), metadata=auth(keys.full)
            )
        error = await rpc_error(call)
        body = openai_error(error, grpc.StatusCode.INTERNAL, 500)
        assert "boom" not in body["message"]
        assert UPSTREAM_SECRET not in (error.details() or "")

    drive(make_settings(upstream, keys), scenario)


# -- keys -----------------------------------------------------------------------------------


def test_revoked_key_is_refused_after_refresh(upstream: FakeUpstream, keys: Keys) -> None:
    async def scenario(h: Harness) -> None:
        await h.chat.ListModels(chat_pb2.ListModelsRequest(), metadata=auth(keys.full))
        store = KeyStore(keys.db)
        try:
            store.revoke("unit-full")
        finally:
            store.close()
        assert h.backend.keys.refresh_if_changed()
        error = await rpc_error(
            h.chat.ListModels(chat_pb2.ListModelsRequest(), metadata=auth(keys.full))
        )
        body = openai_error(error, grpc.StatusCode.PERMISSION_DENIED, 403)
        assert "revoked" in body["message"]

    drive(make_settings(upstream, keys), scenario)


def test_expired_key_is_refused(upstream: FakeUpstream, keys: Keys) -> None:
    store = KeyStore(keys.db)
    try:
        _, expired = store.create("unit-expired", expires_in=-1)
    finally:
        store.close()

    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params()), metadata=auth(expired)
            )
        )
        body = openai_error(error, grpc.StatusCode.PERMISSION_DENIED, 403)
        assert "expired" in body["message"]

    drive(make_settings(upstream, keys), scenario)
    assert upstream.requests == []


@pytest.mark.parametrize(
    "authorization",
    ["", "sk-no-bearer-word", "Basic dXNlcjpwYXNz", "Bearer"],
)
def test_malformed_authorization_is_unauthenticated(
    upstream: FakeUpstream, keys: Keys, authorization: str
) -> None:
    async def scenario(h: Harness) -> None:
        error = await rpc_error(
            h.chat.ListModels(
                chat_pb2.ListModelsRequest(), metadata=(("authorization", authorization),)
            )
        )
        openai_error(error, grpc.StatusCode.UNAUTHENTICATED, 401)

    drive(make_settings(upstream, keys), scenario)


def test_models_for_a_limited_key(upstream: FakeUpstream, keys: Keys) -> None:
    async def scenario(h: Harness) -> None:
        reply = await h.chat.ListModels(chat_pb2.ListModelsRequest(), metadata=auth(keys.limited))
        assert [model.id for model in reply.data] == ["gpt-4o", "o3"]
        model = await h.chat.GetModel(
            chat_pb2.GetModelRequest(model="o3"), metadata=auth(keys.limited)
        )
        assert (model.id, model.object, model.owned_by) == ("o3", "model", "typegpt")
        assert model.created == 1_715_558_400
        error = await rpc_error(
            h.chat.GetModel(chat_pb2.GetModelRequest(model="gpt-5"), metadata=auth(keys.limited))
        )
        openai_error(error, grpc.StatusCode.PERMISSION_DENIED, 403)

    drive(make_settings(upstream, keys, models_owned_by="typegpt"), scenario)


# -- StreamChatCompletion -------------------------------------------------------------------


def test_stream_chunks_and_usage(upstream: FakeUpstream, keys: Keys) -> None:
    async def scenario(h: Harness) -> None:
        call = h.chat.StreamChatCompletion(
            chat_pb2.StreamChatCompletionRequest(params=params(), include_usage=True),
            metadata=auth(keys.full),
        )
        chunks = [chunk async for chunk in call]
        assert await call.code() == grpc.StatusCode.OK
        pieces = [c.choices[0].delta.content.string_value for c in chunks if c.choices]
        assert "".join(pieces) == DEFAULT_CONTENT
        assert list(chunks[-1].choices) == []
        assert chunks[-1].usage.total_tokens == 12

    drive(make_settings(upstream, keys), scenario)


def test_stream_keepalives_are_not_sent_as_chunks(upstream: FakeUpstream, keys: Keys) -> None:
    chunks = make_stream_chunks(model="gpt-4o")
    upstream.enqueue(Reply.stream(chunks, delay=0.25))

    async def scenario(h: Harness) -> None:
        call = h.chat.StreamChatCompletion(
            chat_pb2.StreamChatCompletionRequest(params=params()), metadata=auth(keys.full)
        )
        received = [chunk async for chunk in call]
        assert len(received) == len(chunks)
        assert all(chunk.id == "chatcmpl-fake" for chunk in received)

    drive(make_settings(upstream, keys, sse_keepalive_interval=0.05), scenario)


def test_stream_in_band_error_is_scrubbed(upstream: FakeUpstream, keys: Keys) -> None:
    leak = {"error": {"message": f"overloaded (key {UPSTREAM_SECRET})", "type": "server_error"}}
    upstream.enqueue(Reply.stream([*make_stream_chunks(model="gpt-4o")[:2], leak]))

    async def scenario(h: Harness) -> None:
        call = h.chat.StreamChatCompletion(
            chat_pb2.StreamChatCompletionRequest(params=params()), metadata=auth(keys.full)
        )
        error = await rpc_error(call)
        body = openai_error(error, grpc.StatusCode.UNAVAILABLE, 502)
        assert "overloaded" in body["message"]
        assert UPSTREAM_SECRET not in str(error.trailing_metadata())

    drive(make_settings(upstream, keys), scenario)


def test_stream_upstream_stall_is_deadline_exceeded(upstream: FakeUpstream, keys: Keys) -> None:
    chunks = make_stream_chunks(model="gpt-4o")
    upstream.enqueue(Reply.stream(chunks, delay=3))

    async def scenario(h: Harness) -> None:
        call = h.chat.StreamChatCompletion(
            chat_pb2.StreamChatCompletionRequest(params=params()), metadata=auth(keys.full)
        )
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            async for chunk in call:
                received.append(chunk)
        assert len(received) == 1
        openai_error(excinfo.value, grpc.StatusCode.DEADLINE_EXCEEDED, 504)

    drive(
        make_settings(upstream, keys, upstream_idle_timeout=0.5, sse_keepalive_interval=0.1),
        scenario,
    )


def test_stream_cancelled_by_client_closes_upstream(upstream: FakeUpstream, keys: Keys) -> None:
    upstream.enqueue(Reply.stream(make_stream_chunks(model="gpt-4o"), delay=0.5))

    async def scenario(h: Harness) -> None:
        call = h.chat.StreamChatCompletion(
            chat_pb2.StreamChatCompletionRequest(params=params()), metadata=auth(keys.full)
        )
        first = await call.read()
        assert first.choices[0].delta.role == "assistant"
        call.cancel()
        # The gateway must hang up on the upstream instead of reading the rest for nobody.
        assert await asyncio.to_thread(upstream.wait_for_disconnect, 5)

    drive(make_settings(upstream, keys), scenario)


# -- CreateChatCompletionHttp ---------------------------------------------------------------


def test_http_rpc_is_byte_for_byte(upstream: FakeUpstream, keys: Keys) -> None:
    # Integers above 2**53 and fields no proto knows survive both ways.
    answer = json.dumps({**make_completion(), "x_vendor": {"big": 2**70}}).encode()
    upstream.enqueue(Reply.json(200, answer))
    request = (
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],'
        b'"seed":1180591620717411303424,"x_new_param":[1,2.50,"three"]}'
    )

    async def scenario(h: Harness) -> None:
        call = h.chat.CreateChatCompletionHttp(http_request(request), metadata=auth(keys.full))
        replies = [reply async for reply in call]
        assert len(replies) == 1
        assert replies[0].http_body.content_type == "application/json"
        assert replies[0].http_body.data == answer

    drive(make_settings(upstream, keys), scenario)
    assert upstream.last_request().body == request


def test_http_rpc_request_id_goes_in_trailers_unless_there_are_headers(
    upstream: FakeUpstream, keys: Keys
) -> None:
    # Behind Envoy the REST client gets x-request-id from Envoy; a gRPC caller of this RPC
    # finds it in the trailers, or with the rate-limit headers when there are some.
    store = KeyStore(keys.db)
    try:
        _, rpm_key = store.create("unit-rpm", rpm=5)
    finally:
        store.close()
    request = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}'
    for _ in range(2):
        upstream.enqueue(Reply.json(200, json.dumps(make_completion()).encode()))

    async def scenario(h: Harness) -> None:
        plain = h.chat.CreateChatCompletionHttp(
            http_request(request), metadata=(*auth(keys.full), ("x-request-id", "id-plain"))
        )
        assert len([reply async for reply in plain]) == 1
        assert "x-request-id" not in dict(await plain.initial_metadata())
        assert dict(await plain.trailing_metadata())["x-request-id"] == "id-plain"

        limited = h.chat.CreateChatCompletionHttp(
            http_request(request), metadata=(*auth(rpm_key), ("x-request-id", "id-rpm"))
        )
        assert len([reply async for reply in limited]) == 1
        initial = dict(await limited.initial_metadata())
        assert initial["x-request-id"] == "id-rpm"
        assert initial["x-ratelimit-limit-requests"] == "5"

    drive(make_settings(upstream, keys), scenario)


def test_cookies_an_upstream_sets_never_reach_another_request(
    upstream: FakeUpstream, keys: Keys
) -> None:
    completion = json.dumps(make_completion()).encode()
    upstream.enqueue(Reply.json(200, completion, headers={"Set-Cookie": "session=s1; Path=/"}))
    upstream.enqueue(Reply.json(200, completion))
    request = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}'

    async def scenario(h: Harness) -> None:
        for key in (keys.full, keys.limited):
            call = h.chat.CreateChatCompletionHttp(http_request(request), metadata=auth(key))
            assert len([reply async for reply in call]) == 1

    # A host name: a cookie jar would ignore cookies from an IP address anyway.
    by_name = upstream.base_url.replace("127.0.0.1", "localhost")
    drive(make_settings(upstream, keys, TYPEGPT_BASE_URL=by_name), scenario)
    assert "cookie" not in upstream.last_request().headers


def test_http_rpc_stream_frames(upstream: FakeUpstream, keys: Keys) -> None:
    chunks = make_stream_chunks(model="gpt-4o")
    upstream.enqueue(Reply.stream(chunks, first_delay=0.35))
    request = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hi"}]}'

    async def scenario(h: Harness) -> None:
        call = h.chat.CreateChatCompletionHttp(http_request(request), metadata=auth(keys.full))
        replies = [reply async for reply in call]
        assert await call.code() == grpc.StatusCode.OK
        # The first message's content type becomes the HTTP Content-Type; later ones add none.
        assert replies[0].http_body.content_type == "text/event-stream"
        assert all(reply.http_body.content_type == "" for reply in replies[1:])
        # The upstream's silence was filled with keepalive comments, each its own message.
        assert replies[0].http_body.data == KEEPALIVE_FRAME
        # [DONE] goes with the events read with it, if any: no message of its own.
        assert replies[-1].http_body.data.endswith(DONE_FRAME)
        stream = b"".join(reply.http_body.data for reply in replies)
        events = [e for e in stream.split(b"\n\n") if e.startswith(b"data: ")]
        assert [json.loads(e[6:]) for e in events[:-1]] == chunks

    drive(make_settings(upstream, keys, sse_keepalive_interval=0.1), scenario)


def test_http_rpc_stream_break_ends_with_error_frame(upstream: FakeUpstream, keys: Keys) -> None:
    upstream.enqueue(Reply.stream_then_break(make_stream_chunks(model="gpt-4o")[:3]))
    request = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hi"}]}'

    async def scenario(h: Harness) -> None:
        call = h.chat.CreateChatCompletionHttp(http_request(request), metadata=auth(keys.full))
        replies = [reply async for reply in call]
        # HTTP headers are long gone: the failure can only be told in band, never as [DONE].
        assert await call.code() == grpc.StatusCode.OK
        last = replies[-1].http_body.data
        assert last.startswith(b"data: ")
        assert last.endswith(b"\n\n")
        error = json.loads(last[6:])["error"]
        assert error["code"] == 502
        stream = b"".join(reply.http_body.data for reply in replies)
        assert DONE_FRAME not in stream
        assert stream.count(b"data: ") == 4

    drive(make_settings(upstream, keys), scenario)


def test_http_rpc_errors_before_the_answer_are_statuses(upstream: FakeUpstream, keys: Keys) -> None:
    upstream.enqueue(Reply.json(429, headers={"retry-after-ms": "2500"}))

    async def scenario(h: Harness) -> None:
        error = await rpc_error(h.chat.CreateChatCompletionHttp(http_request(b"{not json")))
        openai_error(error, grpc.StatusCode.UNAUTHENTICATED, 401)
        error = await rpc_error(
            h.chat.CreateChatCompletionHttp(http_request(b"{not json"), metadata=auth(keys.full))
        )
        openai_error(error, grpc.StatusCode.INVALID_ARGUMENT, 400)
        error = await rpc_error(
            h.chat.CreateChatCompletionHttp(
                http_request(b'{"model":"gpt-4o","messages":[{"role":"user"}],"stream":"yes"}'),
                metadata=auth(keys.full),
            )
        )
        body = openai_error(error, grpc.StatusCode.INVALID_ARGUMENT, 400)
        assert body["param"] == "stream"
        error = await rpc_error(
            h.chat.CreateChatCompletionHttp(
                http_request(b'{"model":"gpt-4o","messages":[{"role":"user"}]}'),
                metadata=auth(keys.full),
            )
        )
        openai_error(error, grpc.StatusCode.RESOURCE_EXHAUSTED, 429)
        assert dict(error.trailing_metadata())["retry-after"] == "3"

    drive(make_settings(upstream, keys), scenario)


# -- accounting: every way out of a request settles it exactly once -------------------------

ONE_AT_A_TIME = "unit-one"
WHOLE = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}'
STREAMED = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
RPCS = {
    "http": lambda h, md: h.chat.CreateChatCompletionHttp(http_request(WHOLE), metadata=md),
    "http-stream": lambda h, md: h.chat.CreateChatCompletionHttp(
        http_request(STREAMED), metadata=md
    ),
    "typed": lambda h, md: h.chat.CreateChatCompletion(
        chat_pb2.CreateChatCompletionRequest(params=params()), metadata=md
    ),
    "typed-stream": lambda h, md: h.chat.StreamChatCompletion(
        chat_pb2.StreamChatCompletionRequest(params=params()), metadata=md
    ),
}
WHOLE_RPCS, STREAM_RPCS = ("http", "typed"), ("http-stream", "typed-stream")


def _raise() -> None:
    raise RuntimeError("boom")


# Where a request can fail after it was admitted: (what fails, the RPCs it is on).
FAULTS = {
    "after admit, before the upstream call": ((Failover, "deadlines"), (*WHOLE_RPCS, *STREAM_RPCS)),
    "reading the whole answer's usage": ((UsageMeter, "see_answer"), WHOLE_RPCS),
    "reading a chunk's usage": ((UsageMeter, "see_chunk"), STREAM_RPCS),
    "sending the headers": ((observe, "send_headers"), (*WHOLE_RPCS, *STREAM_RPCS)),
    "before the stream is read": ((observe, "streaming"), STREAM_RPCS),
    "shaping the typed answer": ((proto_json, "parse_answer"), ("typed", "typed-stream")),
}


def fail_once(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, fault: Callable) -> None:
    """The first call of `owner.name` does `fault` (awaited if it is a coroutine function);
    later calls are the real thing."""
    real = getattr(owner, name)
    calls = itertools.count()
    if inspect.iscoroutinefunction(real):

        async def patched(*args: Any, **kwargs: Any) -> Any:
            if next(calls) == 0:
                result = fault()
                if inspect.isawaitable(result):
                    await result
            return await real(*args, **kwargs)
    else:

        def patched(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            if next(calls) == 0:
                fault()
            return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


@pytest.fixture
def one_at_a_time(keys: Keys) -> str:
    """A key with --max-concurrent 1: a request never settled keeps every later one out."""
    store = KeyStore(keys.db)
    try:
        _, key = store.create(ONE_AT_A_TIME, max_concurrent=1)
    finally:
        store.close()
    return key


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each request of that key the ledger counts, as its error flag."""
    counted: list[bool] = []
    record = UsageLedger.record

    def counting(
        self: UsageLedger, name: str, model: str, usage: Any, *, error: bool, **cost: Any
    ) -> None:
        if name == ONE_AT_A_TIME:
            counted.append(error)
        record(self, name, model, usage, error=error, **cost)

    monkeypatch.setattr(UsageLedger, "record", counting)
    return counted


async def ended(call: Any) -> None:
    """Waits for a call to end, whatever it ends with."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        if isinstance(call, AsyncIterable):
            async for _ in call:
                pass
        else:
            await call


async def counted(settled: list[bool], count: int) -> list[bool]:
    """`settled` once it holds `count` requests (a request is settled as its RPC ends, which
    may be after its client has the answer), or after a generous bound."""
    for _ in range(250):
        if len(settled) >= count:
            break
        await asyncio.sleep(0.02)
    return settled


async def settled_once_and_released(
    h: Harness, settled: list[bool], key: str, *, error: bool
) -> None:
    assert await counted(settled, 1) == [error]
    # Its slot is free (the limiter settles off the request path): the next one is admitted.
    await h.backend.accounting.limiter.settled(5)
    replies = [reply async for reply in RPCS["http"](h, auth(key))]
    assert len(replies) == 1
    assert await counted(settled, 2) == [error, False]


@pytest.mark.parametrize(
    ("fault", "rpc"),
    [(fault, rpc) for fault, (_, rpcs) in FAULTS.items() for rpc in rpcs],
)
def test_a_request_that_fails_after_admission_is_settled_once(
    upstream: FakeUpstream,
    keys: Keys,
    one_at_a_time: str,
    settled: list[bool],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    rpc: str,
) -> None:
    (owner, name), _ = FAULTS[fault]
    fail_once(monkeypatch, owner, name, _raise)

    async def scenario(h: Harness) -> None:
        await ended(RPCS[rpc](h, auth(one_at_a_time)))
        await settled_once_and_released(h, settled, one_at_a_time, error=True)

    drive(make_settings(upstream, keys), scenario)


@pytest.mark.parametrize("rpc", RPCS)
def test_a_client_gone_before_its_answer_is_read_is_settled_once(
    upstream: FakeUpstream,
    keys: Keys,
    one_at_a_time: str,
    settled: list[bool],
    monkeypatch: pytest.MonkeyPatch,
    rpc: str,
) -> None:
    """Cancelled after the pipeline answered, before a byte of it was sent or read."""
    reached = asyncio.Event()

    async def hang() -> None:
        reached.set()
        await asyncio.Event().wait()

    fail_once(monkeypatch, observe, "send_headers", hang)

    async def scenario(h: Harness) -> None:
        call = RPCS[rpc](h, auth(one_at_a_time))
        waiting = asyncio.ensure_future(ended(call))
        await reached.wait()
        call.cancel()
        # The cancelled call ends with CancelledError on this side.
        await asyncio.wait((waiting,), timeout=5)
        await settled_once_and_released(h, settled, one_at_a_time, error=False)

    drive(make_settings(upstream, keys), scenario)


# -- status, health, shutdown ---------------------------------------------------------------


def test_status_service_and_draining(upstream: FakeUpstream, keys: Keys) -> None:
    async def scenario(h: Harness) -> None:
        health = await h.status.GetHealth(status_pb2.GetHealthRequest())
        assert health.status == "ok"
        ready = await h.status.GetReadiness(status_pb2.GetReadinessRequest())
        assert ready.status == "ready"
        for service in ("", *(f"typegpt.gateway.v1.{s}" for s in ("ChatService", "StatusService"))):
            reply = await h.health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service

        h.backend.readiness.draining = True
        error = await rpc_error(h.status.GetReadiness(status_pb2.GetReadinessRequest()))
        body = openai_error(error, grpc.StatusCode.UNAVAILABLE, 503)
        assert "draining" in body["message"]
        # Liveness is unaffected by draining.
        assert (await h.status.GetHealth(status_pb2.GetHealthRequest())).status == "ok"

    drive(make_settings(upstream, keys), scenario)


def test_stop_lets_a_running_stream_finish_within_grace(upstream: FakeUpstream, keys: Keys) -> None:
    chunks = make_stream_chunks(model="gpt-4o")
    upstream.enqueue(Reply.stream(chunks, delay=0.1))

    async def main() -> None:
        backend = await start_backend(make_settings(upstream, keys))
        stopping: asyncio.Future[None] | None = None
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
                call = chat_pb2_grpc.ChatServiceStub(channel).StreamChatCompletion(
                    chat_pb2.StreamChatCompletionRequest(params=params()),
                    metadata=auth(keys.full),
                )
                first = await call.read()
                assert first.choices[0].delta.role == "assistant"
                stopping = asyncio.ensure_future(backend.stop(5))
                rest = []
                while (chunk := await call.read()) is not grpc.aio.EOF:
                    rest.append(chunk)
                await stopping
                assert await call.code() == grpc.StatusCode.OK
                assert len(rest) == len(chunks) - 1
                text = "".join(c.choices[0].delta.content.string_value for c in rest)
                assert text == "".join(DEFAULT_STREAM_PIECES)
        finally:
            if stopping is None:
                await backend.stop(0)

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))
