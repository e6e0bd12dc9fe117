"""The bridge's stream half: chat chunks become the Responses API's typed events, in order,
each valid against OpenAI's description, ending with the whole Response and its usage."""

from __future__ import annotations

import json
from typing import Any

import openapi_schema

from typegpt_gateway.responses.bridge_stream import EventStream, event_frame
from typegpt_gateway.responses.response_object import ResponseShape

REQUEST = {"model": "gpt-4o", "input": "Hi", "stream": True}
USAGE = {
    "prompt_tokens": 7,
    "completion_tokens": 3,
    "total_tokens": 10,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 1},
}


def validate(event: dict[str, Any]) -> None:
    """Against the event's own schema: the union names none of them when it fails."""
    if not openapi_schema.spec_available():
        return
    schemas = openapi_schema.components()
    for branch in schemas["ResponseStreamEvent"]["anyOf"]:
        name = branch["$ref"].rsplit("/", 1)[-1]
        if schemas[name]["properties"]["type"]["enum"] == [event["type"]]:
            openapi_schema.validate(event, name)
            return
    raise AssertionError(f"no event type {event['type']!r} in OpenAI's description")


def chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": choices,
        "usage": usage,
    }


def run(chunks: list[dict[str, Any]], request: dict[str, Any] = REQUEST) -> list[dict[str, Any]]:
    stream = EventStream(ResponseShape.of(request))
    events = stream.start()
    for item in chunks:
        events += stream.feed(item)
    events += stream.finish()
    for number, event in enumerate(events):
        assert event["sequence_number"] == number
        validate(event)
    return events


def test_text_deltas_make_one_message_and_the_last_event_has_the_usage() -> None:
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, finish="stop"),
            chunk(usage=USAGE),
        ]
    )
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert (
        "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Hello"
    )
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["input_tokens"] == 7 and final["usage"]["output_tokens"] == 3
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 1}
    assert events[0]["response"]["id"] == final["id"]


def test_tool_call_deltas_make_function_call_items_with_argument_events() -> None:
    events = run(
        [
            chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ],
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, finish="tool_calls"),
            chunk(usage=USAGE),
        ]
    )
    kinds = [event["type"] for event in events]
    assert kinds.count("response.function_call_arguments.delta") == 3
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"], e["output_index"]) for e in done] == [
        ("get_weather", '{"city":"Paris"}', 0),
        ("get_time", "{}", 1),
    ]
    output = events[-1]["response"]["output"]
    assert [(item["type"], item["call_id"]) for item in output] == [
        ("function_call", "call_1"),
        ("function_call", "call_2"),
    ]


def test_a_stream_stopped_at_the_token_limit_ends_incomplete() -> None:
    events = run([chunk({"content": "Hel"}, finish="length"), chunk(usage=USAGE)])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_broken_stream_ends_with_an_error_event_and_a_failed_response() -> None:
    stream = EventStream(ResponseShape.of(REQUEST))
    events = [*stream.start(), *stream.feed(chunk({"content": "Hel"}))]
    events += stream.fail(
        {"error": {"message": "upstream broke", "type": "api_error", "code": 502}}
    )
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["error"]["message"] == "upstream broke"
    for event in events:
        validate(event)


def test_each_event_is_an_sse_event_named_like_its_type() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 4, "delta": "é"}
    frame = event_frame(event)
    name, data, end = frame.split(b"\n", 2)
    assert name == b"event: response.output_text.delta"
    assert json.loads(data.removeprefix(b"data: ")) == event
    assert end == b"\n"


def test_a_streamed_call_of_a_namespaces_function_names_its_namespace() -> None:
    tool = {"type": "function", "name": "close", "parameters": {"type": "object"}}
    crm = {"type": "namespace", "name": "crm", "description": "", "tools": [tool]}
    call = {"index": 0, "id": "call_1", "type": "function"}
    events = run(
        [
            chunk({"tool_calls": [{**call, "function": {"name": "crm__close", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            chunk({}, finish="tool_calls"),
        ],
        {**REQUEST, "tools": [crm]},
    )
    items = [e["item"] for e in events if e["type"].startswith("response.output_item.")]
    assert [(item["namespace"], item["name"]) for item in items] == [("crm", "close")] * 2
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["name"] == "close"
    assert events[-1]["response"]["output"][0]["namespace"] == "crm"
