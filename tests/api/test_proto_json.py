"""Conversions between the typed gRPC messages and OpenAI's JSON."""

from __future__ import annotations

import json

import pytest

from typegpt.gateway.v1 import chat_pb2
from typegpt_gateway.api.proto_json import parse_answer, request_body
from typegpt_gateway.errors import GatewayError


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


@pytest.mark.parametrize("data", [b"5", b'"text"', b"[1]", b'{"choices": [5]}', b"null"])
def test_parse_answer_refuses_any_shape_it_cannot_take_as_a_502(data):
    with pytest.raises(GatewayError) as refused:
        parse_answer(data, chat_pb2.CreateChatCompletionResponse())
    assert refused.value.status == 502
