"""Token usage of a chat completion, as the upstream reports it or, failing that, estimated.
Pure rules.

Streams: the gateway asks the upstream for a final usage chunk (`stream_options.include_usage`)
even when the client did not, by splicing it into the client's bytes (nothing else changes),
and drops that chunk from what such a client sees. When the usage cannot be had (the client
sent other `stream_options`, the upstream refused the option, or the stream ended early, e.g.
because the client went away), the tokens are estimated: one per 4 characters of the
messages' text for the prompt, and of the text and tool-call arguments delivered so far for
the completion. So are they when the upstream reports a usage the gateway cannot use (not two
counts from 0 to MAX_REPORTED_TOKENS): whatever the shape of an answer, reading it never fails
the request, and the client gets the upstream's bytes as they came.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import GatewayError

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
# Beyond any context window: a larger count is garbage, and counts this size summed over many
# requests stay far from the 64-bit integers of the key store and Redis.
MAX_REPORTED_TOKENS = 10**9
INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
_OPENING_BRACE = re.compile(rb"^\s*\{")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _text_chars(value: Any) -> int:
    """Characters of text in a message content: a string or a list of text parts."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(
            len(part["text"])
            for part in value
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


def prompt_chars(messages: list[Any]) -> int:
    return sum(_text_chars(m.get("content")) for m in messages if isinstance(m, dict))


def with_include_usage(body: bytes) -> bytes:
    """The body with `"stream_options":{"include_usage":true}` as its first member.

    Only for a body without `stream_options`; every other byte stays as the client sent it."""
    match = _OPENING_BRACE.match(body)
    if match is None:  # parse_chat_request has already checked it is an object
        raise ValueError("not a JSON object")
    return body[: match.end()] + INCLUDE_USAGE + body[match.end() :]


def rejects_stream_options(error: GatewayError) -> bool:
    """Whether an upstream refusal is about the `stream_options` the gateway added."""
    return error.status in (400, 422) and "stream_options" in error.message + (error.param or "")


class UnusableUsageError(ValueError):
    """The upstream reported a usage the gateway cannot count."""


def _count(value: Any) -> int | None:
    # bool is an int to Python, not a count to anyone.
    if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


def _usage_of(document: Any) -> Usage | None:
    """The usage `document` reports, or None when it reports none (OpenAI's regular chunks
    say `"usage": null`); UnusableUsageError when it reports one of no use."""
    usage = document.get("usage") if isinstance(document, dict) else None
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise UnusableUsageError(f"usage is a {type(usage).__name__}, not an object")
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        raise UnusableUsageError(
            f"prompt_tokens and completion_tokens are not counts from 0 to {MAX_REPORTED_TOKENS}"
        )
    return Usage(prompt, completion)


def _is_usage_chunk(document: Any) -> bool:
    """The chunk `include_usage` adds at the end of a stream: no choices, only the usage."""
    return (
        isinstance(document, dict)
        and document.get("usage") is not None
        and document.get("choices") == []
    )


def _delta_chars(document: Any) -> int:
    choices = document.get("choices") if isinstance(document, dict) else None
    chars = 0
    for choice in choices if isinstance(choices, list) else ():
        delta = (choice.get("delta") or choice.get("message")) if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        chars += _text_chars(delta.get("content")) + _text_chars(delta.get("refusal"))
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                chars += _text_chars(function.get("arguments"))
    return chars


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None  # counted as nothing; the bytes still reach the client


class UsageMeter:
    """Follows one answer: its reported usage, or what is needed to estimate it."""

    def __init__(self, prompt_chars: int, *, strip_usage_chunk: bool) -> None:
        self._prompt_chars = prompt_chars
        self._strip = strip_usage_chunk
        self._completion_chars = 0
        self._told_unusable = False
        self.reported: Usage | None = None

    def stop_stripping(self) -> None:
        """The upstream will send no usage chunk after all."""
        self._strip = False

    def see_answer(self, answer: bytes) -> None:
        self._see(_loads(answer))

    def see_chunk(self, data: bytes) -> bool:
        """Notes a stream chunk; False when the client must not see it (the usage chunk
        only the gateway asked for, even one of no use)."""
        document = _loads(data)
        self._see(document)
        return not (self._strip and _is_usage_chunk(document))

    def _see(self, document: Any) -> None:
        try:
            usage = _usage_of(document)
        except UnusableUsageError as exc:
            # Once per request: an upstream that sends it on every chunk floods no log.
            if not self._told_unusable:
                self._told_unusable = True
                logger.warning("the upstream's usage is of no use (%s); tokens are estimated", exc)
        else:
            if usage is not None:
                self.reported = usage
        self._completion_chars += _delta_chars(document)

    def usage(self) -> Usage:
        if self.reported is not None:
            return self.reported
        return Usage(
            estimate_tokens(self._prompt_chars),
            estimate_tokens(self._completion_chars),
            estimated=True,
        )
