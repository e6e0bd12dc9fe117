"""The bridge's request half: a Responses request becomes the chat request that means the
same, and what it cannot mean is a 400 naming the parameter."""

from __future__ import annotations

from typing import Any

import openapi_schema
import pytest

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.responses.bridge_request import to_chat_request

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}

ITEM_SCHEMAS = {
    "message": "EasyInputMessage",
    "output": "OutputMessage",  # an earlier answer's message, sent back as it came
    "function_call": "FunctionToolCall",
    "function_call_output": "FunctionCallOutputItemParam",
}


def bridged(request: dict[str, Any]) -> dict[str, Any]:
    if openapi_schema.spec_available():
        # Input items are checked one by one: the description's item oneOf relies on its
        # discriminator, which JSON Schema ignores, so a message matches two branches.
        openapi_schema.validate({**request, "input": "x"}, "CreateResponse")
        for item in request["input"] if isinstance(request["input"], list) else ():
            kind = "output" if "id" in item else item.get("type", "message")
            openapi_schema.validate(item, ITEM_SCHEMAS[kind])
    chat = to_chat_request(request)
    if openapi_schema.spec_available():
        openapi_schema.validate(chat, "CreateChatCompletionRequest")
    return chat


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    chat = bridged({"model": "gpt-4o", "instructions": "Be brief.", "input": "Hi"})
    assert chat == {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }


def test_input_items_text_and_images_become_chat_parts() -> None:
    chat = bridged(
        {
            "model": "gpt-4o",
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {
                            "type": "input_image",
                            "image_url": "https://example.com/cat.png",
                            "detail": "low",
                        },
                    ],
                },
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {
                            "type": "output_text",
                            "text": "Un chat.",
                            "annotations": [],
                            "logprobs": [],
                        }
                    ],
                },
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                },
            ],
        },
        {"role": "assistant", "content": "Un chat."},
    ]


def test_a_function_tool_round_trip_becomes_tool_calls_and_a_tool_message() -> None:
    chat = bridged(
        {
            "model": "gpt-4o",
            "input": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "get_weather",
                    "arguments": '{"city":"Rome"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "Rain"}],
                },
            ],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": True,
        }
    )
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Rain"},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["parameters"],
                "strict": False,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is True


def test_settings_map_to_their_chat_names() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    chat = bridged(
        {
            "model": "o3",
            "input": "Hi",
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "thing",
                    "schema": schema,
                    "strict": True,
                },
                "verbosity": "low",
            },
            "reasoning": {"effort": "high"},
            "max_output_tokens": 500,
            "temperature": 0.5,
            "top_p": 0.9,
            "user": "u-1",
            "safety_identifier": "s-1",
            "prompt_cache_key": "k-1",
            "metadata": {"team": "a"},
            "store": False,
            "stream": True,
            "include": ["reasoning.encrypted_content"],
            "truncation": "disabled",
        }
    )
    assert chat == {
        "model": "o3",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u-1",
        "safety_identifier": "s-1",
        "prompt_cache_key": "k-1",
        "verbosity": "low",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "thing", "schema": schema, "strict": True},
        },
        "reasoning_effort": "high",
        "max_completion_tokens": 500,
        "stream": True,
    }
    json_mode = bridged(
        {"model": "gpt-4o", "input": "Hi", "text": {"format": {"type": "json_object"}}}
    )
    assert json_mode["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True}, "background"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs_1"]}]},
            "tools[1].type",
        ),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"include": ["file_search_call.results"]}, "include[0]"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"truncation": "auto"}, "truncation"),
        ({"reasoning": {"effort": "low", "summary": "brief"}}, "reasoning.summary"),
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "namespace", "name": "crm", "description": "", "tools": []}]},
            "tools[0].tools",
        ),
        (
            {
                "tools": [
                    {"type": "namespace", "name": "crm", "description": "", "tools": [WEATHER]},
                    {**WEATHER, "name": "crm__get_weather"},
                ]
            },
            "tools",
        ),
        ({"tools": [{"type": "function", "parameters": {}}]}, "tools[0].name"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "file_id": "file_1", "detail": "auto"}],
                    }
                ]
            },
            "input[0].content[0].file_id",
        ),
        ({"frobnicate": 1}, "frobnicate"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
            "input[0].name",
        ),
    ],
)
def test_what_the_bridge_cannot_honour_is_a_400_naming_it(
    extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(GatewayError) as refused:
        to_chat_request({"model": "gpt-4o", "input": "Hi", **extra})
    assert refused.value.status == 400
    assert refused.value.param == param
    assert param.split("[")[0].split(".")[0] in refused.value.message


def test_a_namespaces_functions_are_chat_functions_under_joined_names() -> None:
    crm = {
        "type": "namespace",
        "name": "crm",
        "description": "Customer records.",
        "tools": [{**WEATHER, "name": "find"}, {**WEATHER, "name": "close"}],
    }
    chat = bridged(
        {
            "model": "gpt-4o",
            "tools": [WEATHER, crm],
            "input": [
                {"role": "user", "content": "Close the ticket."},
                {
                    "type": "function_call",
                    "namespace": "crm",
                    "name": "close",
                    "call_id": "call_1",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "closed"},
            ],
        }
    )
    assert [tool["function"]["name"] for tool in chat["tools"]] == [
        "get_weather",
        "crm__find",
        "crm__close",
    ]
    assert chat["messages"][1]["tool_calls"][0]["function"]["name"] == "crm__close"


def test_what_codex_cli_sends_beside_its_tools_is_accepted() -> None:
    # Its telemetry goes nowhere; a reasoning summary is asked for and none comes.
    chat = bridged(
        {
            "model": "gpt-5",
            "input": "Hi",
            "reasoning": {"effort": "medium", "summary": "auto"},
            "client_metadata": {"session_id": "s"},
            "include": ["reasoning.encrypted_content"],
            "store": False,
        }
    )
    assert "client_metadata" not in chat and chat["reasoning_effort"] == "medium"
