"""How the gateway reads a Responses request and the usage its answers report."""

from __future__ import annotations

import pytest

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.pipeline.catalog import Catalog
from typegpt_gateway.pipeline.responses_request import (
    parse_responses_request,
    responses_output_chars,
    responses_usage,
)
from typegpt_gateway.pipeline.routes import RESPONSES
from typegpt_gateway.pipeline.usage_meter import UnusableUsageError
from typegpt_gateway.usage import Usage

USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 19,
}


def test_a_request_names_its_model_and_stream_and_never_asks_for_usage() -> None:
    request = parse_responses_request(b'{"model": "gpt-4o", "input": "Hi", "stream": true}')
    assert (request.model, request.stream, request.include_usage) == ("gpt-4o", True, True)
    assert request.prompt_tokens > 0
    with pytest.raises(GatewayError) as refused:
        parse_responses_request(b'{"input": "Hi"}')
    assert refused.value.param == "model"


def test_usage_of_a_response_and_of_a_streams_final_event() -> None:
    expected = Usage(12, 7, cached_tokens=4)
    assert responses_usage({"object": "response", "usage": USAGE}) == expected
    final = {"type": "response.completed", "response": {"object": "response", "usage": USAGE}}
    assert responses_usage(final) == expected
    delta = {"type": "response.output_text.delta", "delta": "Hi"}
    assert responses_usage(delta) is None
    created = {"type": "response.created", "response": {"object": "response", "usage": None}}
    assert responses_usage(created) is None
    with pytest.raises(UnusableUsageError):
        responses_usage({"object": "response", "usage": {"input_tokens": -1, "output_tokens": 1}})


def test_a_streams_deltas_and_a_responses_output_are_its_output_characters() -> None:
    assert responses_output_chars({"type": "response.output_text.delta", "delta": "Hello"}) == 5
    arguments = {"type": "response.function_call_arguments.delta", "delta": '{"a":1}'}
    assert responses_output_chars(arguments) == 7
    # A `.done` event repeats its deltas; audio is base64; labels are no output.
    for event in (
        {"type": "response.output_text.done", "text": "Hello"},
        {"type": "response.audio.delta", "delta": "UklGRg=="},
        {"type": "response.created", "response": {"object": "response", "output": []}},
        {"type": "response.output_text.delta", "delta": 5},
        ["Hello"],
    ):
        assert responses_output_chars(event) == 0, event
    whole = {
        "object": "response",
        "instructions": "not output",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello", "annotations": ["x"]}],
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "f",
                "arguments": "{}",
            },
        ],
    }
    assert responses_output_chars(whole) == len("Hello") + len("f") + len("{}")


def test_a_stream_cut_before_its_last_event_is_estimated_from_its_deltas() -> None:
    request = parse_responses_request(b'{"model": "gpt-4o", "input": "Hi", "stream": true}')
    meter = RESPONSES.meter(request, strip_usage_chunk=False)
    for text in ("x" * 40, "y" * 40):
        assert meter.see_chunk(f'{{"type":"response.output_text.delta","delta":"{text}"}}'.encode())
    usage = meter.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (
        request.prompt_tokens,
        20,
        True,
    )


def test_a_model_can_be_limited_to_the_responses_route_or_kept_off_it() -> None:
    catalog = Catalog(("gpt-4o", "o3"), owned_by="x", created=0, routes={"o3": frozenset({"chat"})})
    key = type("Key", (), {"allows_model": staticmethod(lambda model: True)})()
    assert catalog.resolve("gpt-4o", key, RESPONSES).id == "gpt-4o"  # type: ignore[arg-type]
    with pytest.raises(GatewayError) as refused:
        catalog.resolve("o3", key, RESPONSES)  # type: ignore[arg-type]
    assert refused.value.status == 400 and "/v1/responses" in refused.value.message
    Catalog(("o3",), owned_by="x", created=0, routes={"o3": frozenset({"responses"})})
