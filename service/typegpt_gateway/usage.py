"""Token usage of a chat completion, as the upstream reports it or, failing that, estimated.
Pure rules.

Streams: the gateway asks the upstream for a final usage chunk (`stream_options.include_usage`)
even when the client did not, by splicing it into the client's bytes (nothing else changes),
and drops that chunk from what such a client sees. When the usage cannot be had (the client
sent other `stream_options`, the upstream refused the option, or the stream ended early, e.g.
because the client went away), the tokens are estimated: one per 4 characters of the
messages' text for the prompt, and of the text and tool-call arguments delivered so far for
the completion.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import GatewayError

CHARS_PER_TOKEN = 4
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


def _usage_of(document: Any) -> Usage | None:
    usage = document.get("usage") if isinstance(document, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(max(prompt, 0), max(completion, 0))


def _delta_chars(document: Any) -> int:
    choices = document.get("choices") if isinstance(document, dict) else None
    chars = 0
    for choice in choices if isinstance(choices, list) else ():
        delta = (choice.get("delta") or choice.get("message")) if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        chars += _text_chars(delta.get("content")) + _text_chars(delta.get("refusal"))
        for call in delta.get("tool_calls") or ():
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
        self.reported: Usage | None = None

    def stop_stripping(self) -> None:
        """The upstream will send no usage chunk after all."""
        self._strip = False

    def see_answer(self, answer: bytes) -> None:
        document = _loads(answer)
        self.reported = _usage_of(document)
        self._completion_chars += _delta_chars(document)

    def see_chunk(self, data: bytes) -> bool:
        """Notes a stream chunk; False when the client must not see it (the usage chunk
        only the gateway asked for)."""
        document = _loads(data)
        usage = _usage_of(document)
        if usage is not None:
            self.reported = usage
            if self._strip and document.get("choices") == []:
                return False
        self._completion_chars += _delta_chars(document)
        return True

    def usage(self) -> Usage:
        if self.reported is not None:
            return self.reported
        return Usage(
            estimate_tokens(self._prompt_chars),
            estimate_tokens(self._completion_chars),
            estimated=True,
        )
