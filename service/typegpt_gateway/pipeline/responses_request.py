"""A Responses API request (`POST /v1/responses`) as the gateway reads it, and the usage its
answer reports (a Response, or a stream's final event). Pure rules; the route itself is
pipeline/routes.py's RESPONSES, and the bridge to chat completions is in responses/."""

from __future__ import annotations

from typing import Any

from ..usage import Usage
from .request import JSON_TYPE, ApiRequest, read_json_object, read_model, read_stream
from .usage_meter import (
    cached_tokens,
    estimate_prompt_tokens,
    string_chars,
    token_counts,
    usage_object,
)

WHAT = "a Responses request"
# The events whose response carries the usage: the stream's last.
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Members of an output item that label it rather than carry its output.
_NOT_OUTPUT = frozenset(("type", "id", "status", "role", "call_id", "annotations", "logprobs"))


def read_responses_request(body: bytes, content_type: str = JSON_TYPE) -> dict[str, Any]:
    """The request as a JSON object with a model, or the 400."""
    document = read_json_object(body, content_type, WHAT)
    read_model(document.get("model"))
    read_stream(document)
    return document


def parse_responses_request(body: bytes, content_type: str = JSON_TYPE) -> ApiRequest:
    document = read_responses_request(body, content_type)
    return ApiRequest(
        model=read_model(document.get("model")),
        stream=read_stream(document),
        # The Responses API always reports the usage (in the last event of a stream):
        # there is nothing to ask for, and nothing to strip.
        include_usage=True,
        prompt_tokens=estimate_prompt_tokens(document),
    )


def responses_usage(document: Any) -> Usage | None:
    """The usage of a Response, or of a stream event that carries the final Response."""
    if not isinstance(document, dict):
        return None
    if document.get("object") != "response":
        if document.get("type") not in FINAL_EVENTS:
            return None
        document = document.get("response")
        if not isinstance(document, dict):
            return None
    usage = usage_object(document)
    if usage is None:
        return None
    given, made = token_counts(usage, "input_tokens", "output_tokens")
    return Usage(given, made, cached_tokens=cached_tokens(usage, given, "input_tokens_details"))


def responses_output_chars(document: Any) -> int:
    """Output characters of a Response or a stream event, for the estimate when no usage comes
    (a stream cut before its last event): a stream's text, refusal, reasoning and tool-call
    argument deltas (`response.*.delta`; its `.done` events repeat them and are not counted,
    nor is audio's base64); a Response's output items, their labels aside."""
    if not isinstance(document, dict):
        return 0
    if document.get("object") == "response":
        return string_chars(document.get("output"), keys=False, skip=_NOT_OUTPUT)
    kind, delta = document.get("type"), document.get("delta")
    if (
        isinstance(kind, str)
        and kind.endswith(".delta")
        and "audio" not in kind
        and isinstance(delta, str)
    ):
        return len(delta)
    return 0
