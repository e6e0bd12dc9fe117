"""Native gRPC against the running gateway, straight to the backend and through Envoy's port.

Envoy's HTTP port speaks HTTP/1.1 and HTTP/2 (codec AUTO), so a native gRPC client must get
exactly what it gets from the backend itself: the same messages, the same status codes and
the same trailing metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fake_upstream import DEFAULT_CONTENT, DEFAULT_STREAM_PIECES, Reply, make_stream_chunks
from gateway_process import Gateway, free_port
from google.api import httpbody_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from openai_shape import GUIDE_MODELS

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "grpc_client.py"
RPC_TIMEOUT = 10.0
SEED = 2**60

# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(params=["grpc", "envoy"])
def target(request: pytest.FixtureRequest, gateway: Gateway) -> str:
    """The backend's own gRPC port, or Envoy's HTTP port carrying native gRPC."""
    return gateway.grpc_target if request.param == "grpc" else gateway.http_target


@pytest.fixture
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as chan:
        grpc.channel_ready_future(chan).result(timeout=RPC_TIMEOUT)
        yield chan


@pytest.fixture
def stub(channel: grpc.Channel) -> chat_pb2_grpc.ChatServiceStub:
    return chat_pb2_grpc.ChatServiceStub(channel)


def _wait_until_usable(gateway: Gateway, key: str) -> str:
    """Keys made by the CLI reach the running server on its next key-store refresh."""
    with grpc.insecure_channel(gateway.grpc_target) as chan:
        stub = chat_pb2_grpc.ChatServiceStub(chan)
        deadline = time.monotonic() + 5
        while True:
            try:
                stub.ListModels(chat_pb2.ListModelsRequest(), metadata=_auth(key), timeout=5)
                return key
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.PERMISSION_DENIED or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def key(gateway: Gateway, api_key: str) -> str:
    return _wait_until_usable(gateway, api_key)


@pytest.fixture(scope="module")
def limited_key(gateway: Gateway) -> str:
    return _wait_until_usable(gateway, gateway.create_key("grpc-limited", "--models", "gpt-4o,o3"))


@pytest.fixture(scope="module")
def dead_upstream_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose upstream URL points at a port nobody listens on."""
    gw = Gateway(
        tmp_path_factory.mktemp("dead-upstream"),
        f"http://127.0.0.1:{free_port()}/v1",
        extra_env={"GATEWAY_UPSTREAM_COOLDOWN_AFTER": "0"},
    ).start()
    yield gw
    gw.stop()


# -- helpers --------------------------------------------------------------------------------


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _message(role: str, text: str) -> chat_pb2.ChatMessage:
    return chat_pb2.ChatMessage(role=role, content=struct_pb2.Value(string_value=text))


def _params(model: str = "gpt-4o", **fields: object) -> chat_pb2.ChatCompletionParams:
    fields.setdefault("messages", [_message("user", "Hi")])
    return chat_pb2.ChatCompletionParams(model=model, **fields)  # type: ignore[arg-type]


def _trailers(error: grpc.RpcError) -> dict[str, str]:
    return {key: value for key, value in error.trailing_metadata() or ()}  # type: ignore[attr-defined]


def _check_error(error: grpc.RpcError, code: grpc.StatusCode, http_status: int) -> dict:
    """The error's status code and its OpenAI-shaped `x-openai-error` trailer."""
    assert error.code() == code, (error.code(), error.details())
    trailers = _trailers(error)
    assert trailers.get("x-http-status") == str(http_status)
    body = json.loads(trailers["x-openai-error"])
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == http_status
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert error.details() == body["error"]["message"]
    return body["error"]


def _create_error(stub: chat_pb2_grpc.ChatServiceStub, params: object, **kwargs: object) -> object:
    request = chat_pb2.CreateChatCompletionRequest(params=params)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.CreateChatCompletion(request, timeout=RPC_TIMEOUT, **kwargs)
    return excinfo.value


# -- CreateChatCompletion -------------------------------------------------------------------


def test_create_chat_completion_returns_typed_answer(stub, key, upstream) -> None:
    params = _params(
        messages=[_message("system", "Be brief."), _message("user", "Hi")],
        temperature=0.25,
        max_tokens=64,
        seed=SEED,
        user="grpc-test",
    )
    params.extra_body.update({"custom_flag": True, "top_k": 3, "labels": ["a", "b"]})
    reply = stub.CreateChatCompletion(
        chat_pb2.CreateChatCompletionRequest(params=params),
        metadata=_auth(key),
        timeout=RPC_TIMEOUT,
    )

    assert reply.id.startswith("chatcmpl-fake")
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-4o"
    assert reply.created > 0
    assert len(reply.choices) == 1
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content.string_value == DEFAULT_CONTENT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == 10
    assert reply.usage.completion_tokens == 7
    assert reply.usage.total_tokens == 17

    sent = upstream.last_request()
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["content-type"].startswith("application/json")
    body = json.loads(sent.body)
    assert body["stream"] is False
    assert body["model"] == "gpt-4o"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert body["temperature"] == 0.25
    assert body["max_tokens"] == 64
    assert type(body["max_tokens"]) is int
    # An exact JSON integer: not the string MessageToDict writes for int64, not a float.
    assert body["seed"] == SEED
    assert type(body["seed"]) is int
    assert f'"seed":{SEED}'.encode() in sent.body.replace(b" ", b"")
    assert body["user"] == "grpc-test"
    # extra_body is merged into the top level, integral numbers as JSON integers.
    assert "extra_body" not in body
    assert body["custom_flag"] is True
    assert body["top_k"] == 3
    assert type(body["top_k"]) is int
    assert body["labels"] == ["a", "b"]
    # Unset optional fields are not sent.
    assert "top_p" not in body
    assert "n" not in body
    assert "stream_options" not in body


def test_create_chat_completion_sends_no_unset_fields(stub, key, upstream) -> None:
    stub.CreateChatCompletion(
        chat_pb2.CreateChatCompletionRequest(params=_params()),
        metadata=_auth(key),
        timeout=RPC_TIMEOUT,
    )
    body = json.loads(upstream.last_request().body)
    assert body == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": False,
    }
    # The client's key never travels upstream: the gateway uses its own.
    assert key not in upstream.last_request().headers.get("authorization", "")


# -- StreamChatCompletion -------------------------------------------------------------------


def test_stream_chat_completion_yields_typed_chunks(stub, key, upstream) -> None:
    chunks = list(
        stub.StreamChatCompletion(
            chat_pb2.StreamChatCompletionRequest(params=_params(temperature=0.5)),
            metadata=_auth(key),
            timeout=RPC_TIMEOUT,
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.model == "gpt-4o" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(
        chunk.choices[0].delta.content.string_value
        for chunk in chunks
        if chunk.choices and chunk.choices[0].delta.HasField("content")
    )
    assert text == DEFAULT_CONTENT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert not any(chunk.HasField("usage") for chunk in chunks)

    body = json.loads(upstream.last_request().body)
    assert body["stream"] is True
    assert body["temperature"] == 0.5
    # The gateway asks for usage itself (for limits and the ledger) and keeps that chunk back.
    assert body["stream_options"] == {"include_usage": True}


def test_stream_chat_completion_include_usage(stub, key, upstream) -> None:
    chunks = list(
        stub.StreamChatCompletion(
            chat_pb2.StreamChatCompletionRequest(params=_params(), include_usage=True),
            metadata=_auth(key),
            timeout=RPC_TIMEOUT,
        )
    )
    # role chunk + one per piece + finish chunk + usage chunk
    assert len(chunks) == len(DEFAULT_STREAM_PIECES) + 3
    last = chunks[-1]
    assert list(last.choices) == []
    assert last.HasField("usage")
    assert last.usage.prompt_tokens == 5
    assert last.usage.completion_tokens == 7
    assert last.usage.total_tokens == 12
    assert not any(chunk.HasField("usage") for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"

    body = json.loads(upstream.last_request().body)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


# -- models ---------------------------------------------------------------------------------


def test_list_models_returns_the_catalog(stub, key) -> None:
    reply = stub.ListModels(chat_pb2.ListModelsRequest(), metadata=_auth(key), timeout=RPC_TIMEOUT)
    assert reply.object == "list"
    assert [model.id for model in reply.data] == GUIDE_MODELS
    for model in reply.data:
        assert model.object == "model"
        assert model.owned_by
        assert model.created > 0


def test_list_models_respects_key_restrictions(stub, limited_key) -> None:
    reply = stub.ListModels(
        chat_pb2.ListModelsRequest(), metadata=_auth(limited_key), timeout=RPC_TIMEOUT
    )
    assert sorted(model.id for model in reply.data) == ["gpt-4o", "o3"]


def test_get_model(stub, key) -> None:
    model = stub.GetModel(
        chat_pb2.GetModelRequest(model="o3-mini"), metadata=_auth(key), timeout=RPC_TIMEOUT
    )
    assert model.id == "o3-mini"
    assert model.object == "model"


def test_get_model_unknown_is_not_found(stub, key) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.GetModel(
            chat_pb2.GetModelRequest(model="no-such-model"), metadata=_auth(key), timeout=10
        )
    error = _check_error(excinfo.value, grpc.StatusCode.NOT_FOUND, 404)
    assert "no-such-model" in error["message"]


def test_get_model_not_allowed_is_permission_denied(stub, limited_key) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.GetModel(
            chat_pb2.GetModelRequest(model="gpt-5"), metadata=_auth(limited_key), timeout=10
        )
    _check_error(excinfo.value, grpc.StatusCode.PERMISSION_DENIED, 403)


# -- status codes ---------------------------------------------------------------------------


def test_no_metadata_is_unauthenticated(stub, upstream) -> None:
    error = _create_error(stub, _params())
    _check_error(error, grpc.StatusCode.UNAUTHENTICATED, 401)
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.ListModels(chat_pb2.ListModelsRequest(), timeout=RPC_TIMEOUT)
    _check_error(excinfo.value, grpc.StatusCode.UNAUTHENTICATED, 401)
    assert upstream.requests == []


def test_bad_key_is_permission_denied(stub, upstream) -> None:
    bad = "sk-not-a-real-key-0123456789"
    error = _create_error(stub, _params(), metadata=_auth(bad))
    body = _check_error(error, grpc.StatusCode.PERMISSION_DENIED, 403)
    assert bad not in json.dumps(body)
    assert upstream.requests == []


def test_unknown_model_is_not_found(stub, key, upstream) -> None:
    error = _create_error(stub, _params("gpt-unknown"), metadata=_auth(key))
    body = _check_error(error, grpc.StatusCode.NOT_FOUND, 404)
    assert body["param"] == "model"
    assert upstream.requests == []


def test_disallowed_model_is_permission_denied(stub, limited_key, upstream) -> None:
    error = _create_error(stub, _params("gpt-5"), metadata=_auth(limited_key))
    body = _check_error(error, grpc.StatusCode.PERMISSION_DENIED, 403)
    assert body["param"] == "model"
    assert upstream.requests == []


def test_empty_messages_is_invalid_argument(stub, key, upstream) -> None:
    error = _create_error(stub, _params(messages=[]), metadata=_auth(key))
    body = _check_error(error, grpc.StatusCode.INVALID_ARGUMENT, 400)
    assert body["param"] == "messages"
    assert upstream.requests == []


def test_message_without_role_is_invalid_argument(stub, key, upstream) -> None:
    params = _params(messages=[chat_pb2.ChatMessage(content=struct_pb2.Value(string_value="x"))])
    error = _create_error(stub, params, metadata=_auth(key))
    _check_error(error, grpc.StatusCode.INVALID_ARGUMENT, 400)
    assert upstream.requests == []


@pytest.mark.parametrize("rpc", ["CreateChatCompletion", "StreamChatCompletion"])
def test_params_not_expressible_in_json_are_invalid_argument(stub, key, upstream, rpc) -> None:
    """JSON has no Infinity: the typed request cannot be sent, and the client must be told
    so as an OpenAI 400, not get an UNKNOWN status without the x-openai-error trailer."""
    params = _params()
    params.extra_body["budget"] = float("inf")
    if rpc == "CreateChatCompletion":
        error = _create_error(stub, params, metadata=_auth(key))
    else:
        with pytest.raises(grpc.RpcError) as excinfo:
            list(
                stub.StreamChatCompletion(
                    chat_pb2.StreamChatCompletionRequest(params=params),
                    metadata=_auth(key),
                    timeout=RPC_TIMEOUT,
                )
            )
        error = excinfo.value
    _check_error(error, grpc.StatusCode.INVALID_ARGUMENT, 400)
    assert upstream.requests == []


def test_upstream_429_is_resource_exhausted_with_retry_after(stub, key, upstream) -> None:
    upstream.enqueue(Reply.json(429, headers={"Retry-After": "7"}))
    error = _create_error(stub, _params(), metadata=_auth(key))
    body = _check_error(error, grpc.StatusCode.RESOURCE_EXHAUSTED, 429)
    assert body["type"] == "rate_limit_error"
    assert _trailers(error)["retry-after"] == "7"


def test_upstream_500_is_unavailable(stub, key, upstream) -> None:
    upstream.enqueue(Reply.json(500))
    error = _create_error(stub, _params(), metadata=_auth(key))
    body = _check_error(error, grpc.StatusCode.UNAVAILABLE, 502)
    assert "500" in body["message"]


def test_upstream_connection_reset_is_unavailable(stub, key, upstream) -> None:
    upstream.enqueue(Reply.reset())
    error = _create_error(stub, _params(), metadata=_auth(key))
    _check_error(error, grpc.StatusCode.UNAVAILABLE, 502)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("x" * 5000, id="ascii"),
        pytest.param("模型暂时不可用请稍后再试" * 180, id="cjk"),
        pytest.param("\U0001f6ab" * 1000, id="emoji"),
    ],
)
def test_long_upstream_error_message_fits_in_metadata(stub, key, upstream, message) -> None:
    """gRPC clients refuse trailers above 8 KiB (at random) and 16 KiB (always); however long
    or non-ASCII the upstream's message, the status must stay the upstream's 400."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None}}
    upstream.enqueue(Reply.json(400, body))
    error = _create_error(stub, _params(), metadata=_auth(key))
    shown = _check_error(error, grpc.StatusCode.INVALID_ARGUMENT, 400)["message"]
    assert shown.rstrip("…")
    assert message.startswith(shown.rstrip("…"))
    size = sum(len(k) + len(v) for k, v in error.trailing_metadata())  # type: ignore[attr-defined]
    size += len(error.details().encode())
    assert size < 8192


def test_long_upstream_error_fields_fit_in_metadata(stub, key, upstream) -> None:
    body = {"error": {"message": "Bad request.", "type": "t" * 20000, "param": "p" * 20000}}
    upstream.enqueue(Reply.json(400, body))
    error = _create_error(stub, _params(), metadata=_auth(key))
    shown = _check_error(error, grpc.StatusCode.INVALID_ARGUMENT, 400)
    assert shown["message"] == "Bad request."
    assert len(_trailers(error)["x-openai-error"]) < 8192


def test_non_ascii_model_name_round_trips(stub, key, upstream) -> None:
    error = _create_error(stub, _params("modèle-ü"), metadata=_auth(key))
    body = _check_error(error, grpc.StatusCode.NOT_FOUND, 404)
    assert "modèle-ü" in body["message"]


def test_client_deadline_cancels_upstream_request(stub, key, upstream) -> None:
    upstream.enqueue(Reply.hang(30))
    request = chat_pb2.CreateChatCompletionRequest(params=_params())
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.CreateChatCompletion(request, metadata=_auth(key), timeout=1)
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The gateway stops waiting for the upstream too, instead of holding the request.
    assert upstream.wait_for_disconnect(5)


def test_client_cancel_closes_upstream_stream(stub, key, upstream) -> None:
    upstream.enqueue(Reply.stream(make_stream_chunks(model="gpt-4o"), delay=0.5))
    responses = stub.StreamChatCompletion(
        chat_pb2.StreamChatCompletionRequest(params=_params()),
        metadata=_auth(key),
        timeout=RPC_TIMEOUT,
    )
    first = next(responses)
    assert first.choices[0].delta.role == "assistant"
    responses.cancel()  # type: ignore[attr-defined]
    assert upstream.wait_for_disconnect(5)


@pytest.mark.parametrize("via", ["grpc", "envoy"])
def test_upstream_unreachable_is_unavailable(dead_upstream_gateway, via) -> None:
    gw = dead_upstream_gateway
    key = _wait_until_usable(gw, gw.create_key(f"dead-{via}"))
    target = gw.grpc_target if via == "grpc" else gw.http_target
    with grpc.insecure_channel(target) as chan:
        stub = chat_pb2_grpc.ChatServiceStub(chan)
        error = _create_error(stub, _params(), metadata=_auth(key))
        body = _check_error(error, grpc.StatusCode.UNAVAILABLE, 502)
        assert "reach" in body["message"]
        with pytest.raises(grpc.RpcError) as excinfo:
            list(
                stub.StreamChatCompletion(
                    chat_pb2.StreamChatCompletionRequest(params=_params()),
                    metadata=_auth(key),
                    timeout=RPC_TIMEOUT,
                )
            )
        _check_error(excinfo.value, grpc.StatusCode.UNAVAILABLE, 502)


def test_upstream_error_before_stream_is_status(stub, key, upstream) -> None:
    upstream.enqueue(Reply.json(429, headers={"Retry-After": "3"}))
    responses = stub.StreamChatCompletion(
        chat_pb2.StreamChatCompletionRequest(params=_params()),
        metadata=_auth(key),
        timeout=RPC_TIMEOUT,
    )
    with pytest.raises(grpc.RpcError) as excinfo:
        list(responses)
    _check_error(excinfo.value, grpc.StatusCode.RESOURCE_EXHAUSTED, 429)
    assert _trailers(excinfo.value)["retry-after"] == "3"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(
            Reply.stream_then_break(make_stream_chunks(model="gpt-4o")[:3]), id="connection-drop"
        ),
        pytest.param(
            Reply.stream(make_stream_chunks(model="gpt-4o")[:3], done=False, clean_eof=True),
            id="no-done",
        ),
    ],
)
def test_stream_broken_midway_is_unavailable(stub, key, upstream, reply) -> None:
    upstream.enqueue(reply)
    received: list[chat_pb2.StreamChatCompletionResponse] = []
    responses = stub.StreamChatCompletion(
        chat_pb2.StreamChatCompletionRequest(params=_params()),
        metadata=_auth(key),
        timeout=RPC_TIMEOUT,
    )
    with pytest.raises(grpc.RpcError) as excinfo:
        for chunk in responses:
            received.append(chunk)
    # What arrived before the break was delivered; then an error, never a clean end.
    assert len(received) == 3
    assert received[1].choices[0].delta.content.string_value == DEFAULT_STREAM_PIECES[0]
    _check_error(excinfo.value, grpc.StatusCode.UNAVAILABLE, 502)


def test_stream_in_band_error_is_unavailable(stub, key, upstream) -> None:
    secret_free = {"error": {"message": "model overloaded", "type": "server_error"}}
    upstream.enqueue(Reply.stream([*make_stream_chunks(model="gpt-4o")[:2], secret_free]))
    responses = stub.StreamChatCompletion(
        chat_pb2.StreamChatCompletionRequest(params=_params()),
        metadata=_auth(key),
        timeout=RPC_TIMEOUT,
    )
    with pytest.raises(grpc.RpcError) as excinfo:
        list(responses)
    body = _check_error(excinfo.value, grpc.StatusCode.UNAVAILABLE, 502)
    assert "model overloaded" in body["message"]


# -- the REST-facing RPC, called natively --------------------------------------------------


def test_http_rpc_over_native_grpc_returns_raw_json(stub, key, upstream) -> None:
    raw = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]})
    replies = list(
        stub.CreateChatCompletionHttp(
            chat_pb2.CreateChatCompletionHttpRequest(
                http_body=httpbody_pb2.HttpBody(content_type="application/json", data=raw.encode())
            ),
            metadata=_auth(key),
            timeout=RPC_TIMEOUT,
        )
    )
    assert len(replies) == 1
    assert replies[0].http_body.content_type == "application/json"
    completion = json.loads(replies[0].http_body.data)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == DEFAULT_CONTENT
    # The client's bytes went upstream unchanged.
    assert upstream.last_request().body == raw.encode()


def test_http_rpc_over_native_grpc_streams_sse(stub, key, upstream) -> None:
    raw = b'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
    replies = list(
        stub.CreateChatCompletionHttp(
            chat_pb2.CreateChatCompletionHttpRequest(
                http_body=httpbody_pb2.HttpBody(content_type="application/json", data=raw)
            ),
            metadata=_auth(key),
            timeout=RPC_TIMEOUT,
        )
    )
    assert replies[0].http_body.content_type == "text/event-stream"
    sse = b"".join(reply.http_body.data for reply in replies).decode()
    events = [frame.removeprefix("data: ") for frame in sse.split("\n\n") if frame]
    assert events[-1] == "[DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-1]
        for choice in json.loads(event)["choices"]
    )
    assert text == DEFAULT_CONTENT


# -- reflection and health ------------------------------------------------------------------


def test_server_reflection_lists_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT))
    assert len(replies) == 1
    names = {service.name for service in replies[0].list_services_response.service}
    assert {
        "typegpt.gateway.v1.ChatService",
        "typegpt.gateway.v1.StatusService",
        "grpc.health.v1.Health",
    } <= names


def test_server_reflection_describes_chat_service(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="typegpt.gateway.v1.ChatService"
    )
    (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=RPC_TIMEOUT)
    assert reply.WhichOneof("message_response") == "file_descriptor_response"
    assert reply.file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize("service", ["", "typegpt.gateway.v1.ChatService"])
def test_health_check_serving(channel, service) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_unknown_service_is_not_found(channel) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=RPC_TIMEOUT
        )
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND


# -- the README's example client ------------------------------------------------------------


def test_example_client(target, key, upstream) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "TYPEGPT_"))}
    env.update(GATEWAY_GRPC_TARGET=target, GATEWAY_API_KEY=key)
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=12,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == DEFAULT_CONTENT + "\n"
    assert json.loads(upstream.last_request().body)["model"] == "gpt-4o"
    assert len(EXAMPLE.read_text().splitlines()) <= 15
