"""Every request that was admitted is settled exactly once, whatever its answer looks like: on
a real `typegpt-gateway serve`, an upstream answer with usage or tool calls of an unexpected
shape still reaches a REST client as the upstream's bytes (the typed gRPC API, which cannot
carry it, answers 502), frees its `--max-concurrent` slot (in process and in Redis) and is
counted in the usage ledger."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import grpc
import httpx
import pytest
import redis
from fake_upstream import Reply, make_chunk, make_completion, make_usage_chunk
from gateway_process import Gateway
from google.protobuf import struct_pb2
from openai_shape import chat_body, sse_payloads

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc

CHAT = "/v1/chat/completions"
LEDGER_WAIT = 15.0

# The shapes an upstream was seen (or could be expected) to get wrong, each in a whole answer
# and in a stream.
_COMPLETION = make_completion(model="gpt-4o")
_MESSAGE = _COMPLETION["choices"][0]["message"]
MALFORMED_ANSWERS: dict[str, dict[str, Any]] = {
    "tool_calls a number": {
        **_COMPLETION,
        "choices": [{**_COMPLETION["choices"][0], "message": {**_MESSAGE, "tool_calls": 5}}],
    },
    "usage with a string": {**_COMPLETION, "usage": {"prompt_tokens": "x", "completion_tokens": 1}},
    "usage a list": {**_COMPLETION, "usage": [1, 2]},
    "choices an object": {**_COMPLETION, "choices": {"0": _COMPLETION["choices"][0]}},
    "usage past any count": {
        **_COMPLETION,
        "usage": {"prompt_tokens": 2**62, "completion_tokens": 2**62},
    },
}
MALFORMED_STREAMS: dict[str, list[Any]] = {
    "tool_calls a number": [make_chunk({"tool_calls": 5}), make_chunk({"tool_calls": 2.5})],
    "function a list": [make_chunk({"tool_calls": [{"index": 0, "function": [1]}]})],
    "delta a string": [make_chunk("oops")],  # type: ignore[arg-type]
    "choices an object": [{**make_chunk({"content": "hi"}), "choices": {"a": 1}}],
    "usage with a string": [
        make_chunk({"content": "hi"}),
        make_usage_chunk({"prompt_tokens": "x", "completion_tokens": []}),  # type: ignore[dict-item]
    ],
    "usage a list": [make_chunk({"content": "hi"}), {**make_usage_chunk({}), "usage": [1]}],
}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(params=["in-process", "redis"])
def limited_gateway(request: pytest.FixtureRequest, make_gateway) -> Gateway:
    env = {"GATEWAY_UPSTREAM_MAX_ATTEMPTS": "1"}
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        redis.Redis.from_url(server.url).flushall()
        env["REDIS_URL"] = server.url
    return make_gateway(extra_env=env).start()


def test_malformed_usage_reaches_the_client_frees_the_slot_and_is_counted(
    limited_gateway: Gateway, upstream
) -> None:
    gw = limited_gateway
    name = f"malformed-{uuid.uuid4().hex[:8]}"
    key = gw.wait_for_key(gw.create_key(name, "--max-concurrent", "1"))
    sent = 0

    def admitted_next() -> None:
        nonlocal sent
        # The slot of the request before is free again: one in flight at a time.
        response = httpx.post(f"{gw.url}{CHAT}", json=chat_body(), headers=auth(key), timeout=30)
        sent += 1
        assert response.status_code == 200, (response.status_code, response.text)

    # Whether each request's tokens were estimated, by request id.
    estimated: dict[str, bool] = {}
    for shape, document in MALFORMED_ANSWERS.items():
        body = json.dumps(document).encode()
        upstream.enqueue(Reply.json(200, body))
        headers = {**auth(key), "x-request-id": f"{name}-{sent}"}
        response = httpx.post(f"{gw.url}{CHAT}", json=chat_body(), headers=headers, timeout=30)
        estimated[f"{name}-{sent}"] = document["usage"] != _COMPLETION["usage"]
        sent += 1
        assert response.status_code == 200, (shape, response.text)
        assert response.content == body, shape
        admitted_next()

    for shape, events in MALFORMED_STREAMS.items():
        for ask_usage in (True, False):
            upstream.enqueue(Reply.stream(events))
            extra = {"stream_options": {"include_usage": True}} if ask_usage else {}
            response = httpx.post(
                f"{gw.url}{CHAT}",
                json=chat_body(stream=True, **extra),
                headers={**auth(key), "x-request-id": f"{name}-{sent}"},
                timeout=30,
            )
            # None of these streams reports a usage the gateway can count.
            estimated[f"{name}-{sent}"] = True
            sent += 1
            assert response.status_code == 200, (shape, response.text)
            payloads = sse_payloads(response.text)
            assert payloads[-1] == "[DONE]", (shape, payloads)
            delivered = [json.loads(p) for p in payloads[:-1]]
            if ask_usage:
                assert delivered == events, shape
            else:
                # What the gateway asked for on the client's behalf stays with the gateway.
                assert delivered == [e for e in events if e.get("choices") != []], shape
            admitted_next()

    # The typed gRPC API cannot carry these answers (502), and settles them all the same.
    question = chat_pb2.ChatMessage(role="user", content=struct_pb2.Value(string_value="Hi"))
    params = chat_pb2.ChatCompletionParams(model="gpt-4o", messages=[question])
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        upstream.enqueue(Reply.json(200, MALFORMED_ANSWERS["tool_calls a number"]))
        with pytest.raises(grpc.RpcError) as unary:
            stub.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(params=params), metadata=metadata, timeout=30
            )
        upstream.enqueue(Reply.stream(MALFORMED_STREAMS["tool_calls a number"]))
        with pytest.raises(grpc.RpcError) as streamed:
            list(
                stub.StreamChatCompletion(
                    chat_pb2.StreamChatCompletionRequest(params=params),
                    metadata=metadata,
                    timeout=30,
                )
            )
    sent += 2
    for error in (unary.value, streamed.value):
        assert dict(error.trailing_metadata())["x-http-status"] == "502", error
    admitted_next()

    assert gw.wait_for_ledger({name: sent}, LEDGER_WAIT) == {name: sent}
    log = gw.flushed_log()
    assert "Traceback" not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL") or "exc_info" in r]
    # An unusable usage is told once per request, not once per chunk.
    warned = Counter(
        r.get("request_id")
        for r in records
        if r["level"] == "WARNING" and r["logger"] == "typegpt_gateway.pipeline.usage_meter"
    )
    assert warned and max(warned.values()) == 1, warned
    lines = {r["request_id"]: r for r in records if r["logger"] == "typegpt_gateway.requests"}
    assert {rid: lines[rid]["tokens_estimated"] for rid in estimated} == estimated
    assert all(lines[rid]["prompt_tokens"] > 0 for rid in estimated)
