"""The bridge's answer half: a chat completion becomes a Response that validates against
OpenAI's description, usage included."""

from __future__ import annotations

from typing import Any

import openapi_schema
import pytest

from typegpt_gateway.responses.response_object import ResponseShape, from_completion

REQUEST = {"model": "gpt-4o", "input": "Hi", "metadata": {"team": "a"}}


def completion(
    message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": usage
        or {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }


def answer(request: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    response = from_completion(ResponseShape.of(request), chat)
    if openapi_schema.spec_available():
        openapi_schema.validate(response, "Response")
    return response


def test_text_is_one_message_with_output_text_and_the_usage_in_responses_terms() -> None:
    response = answer(REQUEST, completion({"content": "Hello!"}))
    assert response["object"] == "response"
    assert response["id"].startswith("resp_")
    assert response["status"] == "completed"
    assert response["model"] == "gpt-4o"
    assert response["metadata"] == {"team": "a"}
    assert response["store"] is False
    [message] = response["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [
        {"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}
    ]
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    }


def test_tool_calls_are_function_call_items_with_the_upstreams_call_ids() -> None:
    request = {
        **REQUEST,
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "parameters": {"type": "object"},
                "strict": False,
            }
        ],
    }
    chat = completion(
        {
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        finish="tool_calls",
    )
    response = answer(request, chat)
    [call] = response["output"]
    assert call["type"] == "function_call"
    assert call["call_id"] == "call_9"
    assert call["name"] == "get_weather"
    assert call["arguments"] == '{"city":"Paris"}'
    assert call["id"].startswith("fc_")
    assert response["tools"][0]["name"] == "get_weather"


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_a_cut_answer_is_incomplete_with_the_reason(finish: str, reason: str) -> None:
    response = answer(REQUEST, completion({"content": "Hel"}, finish=finish))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": reason}


def test_a_refusal_is_a_refusal_part() -> None:
    response = answer(REQUEST, completion({"content": None, "refusal": "I can't."}))
    assert response["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't."}]


def test_a_call_of_a_namespaces_function_names_its_namespace() -> None:
    tool = {"type": "function", "name": "close", "parameters": {"type": "object"}}
    crm = {"type": "namespace", "name": "crm", "description": "", "tools": [tool]}
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": name, "arguments": "{}"}}
        for name in ("crm__close", "close", "other__close")
    ]
    response = answer(
        {**REQUEST, "tools": [crm, tool], "reasoning": {"summary": "auto"}},
        completion({"content": None, "tool_calls": calls}, finish="tool_calls"),
    )
    named = [(item.get("namespace"), item["name"]) for item in response["output"]]
    assert named == [("crm", "close"), (None, "close"), (None, "other__close")]
    assert response["reasoning"] == {"effort": None, "summary": "auto"}
