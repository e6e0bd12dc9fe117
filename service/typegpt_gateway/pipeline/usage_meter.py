"""Token usage of a chat completion, as the upstream reports it or, failing that, estimated.
Pure rules.

The upstream's usage includes `prompt_tokens_details.cached_tokens` when it read part of the
prompt from its cache (priced apart, see upstream/prices.py): kept when it is a count no larger
than the prompt, else taken as 0.

Streams: the gateway always asks the upstream for the final usage chunk
(`stream_options.include_usage`), so that no client can choose a cheaper count: it splices
`"stream_options":{"include_usage":true},` into a body without `stream_options` (nothing else
changes), or replaces the value of the client's own `stream_options` object with the same
object plus `"include_usage":true` (or null with `{"include_usage":true}`). A client that did
not ask for the usage chunk never sees it. When the usage cannot be had (the client's
`stream_options` is neither an object nor null, the upstream refused the option, or the stream
ended early, e.g. because the client went away), the tokens are estimated at one per 4
characters: for the prompt, of every string in the request body, keys included, with each
image part at a fixed IMAGE_TOKENS instead of its URL; for the completion, of every string
delivered in the choices' deltas or messages (text, refusal, tool calls, reasoning) but their
`role`, `type` and `id` (a Responses answer's are its output items' and its stream's deltas,
pipeline/responses_request.py). So are they when the upstream reports a usage the gateway cannot use
(not two counts from 0 to MAX_REPORTED_TOKENS): whatever the shape of an answer, reading it
never fails the request, and the client gets the upstream's bytes as they came.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from ..errors import GatewayError
from ..usage import Usage

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
# Beyond any context window: a larger count is garbage, and counts this size summed over many
# requests stay far from the 64-bit integers of the key store and Redis.
MAX_REPORTED_TOKENS = 10**9
# A year of audio: beyond any upload a transcription route takes (OpenAI's is 25 MB).
MAX_REPORTED_SECONDS = 366 * 24 * 3600
# OpenAI's count for one high-detail image of up to 2048 x 768 pixels is 1,105; the URL or data
# of an image says little about its count and base64 would be counted many times over.
IMAGE_TOKENS = 1_000
# The stream chunks kept unread at most (see UsageMeter), a few hundred of a usual size.
UNREAD_BYTES = 64 * 1024
INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'
_OPENING_BRACE = re.compile(rb"^\s*\{")
_SPACE = re.compile(r"[ \t\n\r]*")
# Members of a delta that name or label output rather than carry it.
_NOT_OUTPUT = frozenset(("role", "type", "id"))


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def string_chars(document: Any, *, keys: bool, skip: frozenset[str] = frozenset()) -> int:
    """Characters in the strings of `document` (and its keys if `keys`), members named in
    `skip` aside, with IMAGE_TOKENS' worth for each image part. A loop, not recursion: a body
    may nest as deep as the JSON parser allows."""
    chars = 0
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict):
            if value.get("type") == "image_url":
                chars += IMAGE_TOKENS * CHARS_PER_TOKEN
                continue
            for key, member in value.items():
                if key in skip:
                    continue
                if keys:
                    chars += len(key)
                pending.append(member)
    return chars


def estimate_prompt_tokens(document: Any) -> int:
    """The prompt's estimate: the whole request body counts, since the upstream reads all of
    it (tools, response formats, images), not only the messages' text."""
    return estimate_tokens(string_chars(document, keys=True))


def _member_spans(text: str, name: str) -> list[tuple[int, int, Any]]:
    """(start, end, value) of each top-level member `name` of the JSON object `text`;
    ValueError for any other text, so that nothing is edited at a guessed place."""
    decoder = json.JSONDecoder()

    def skip_space(at: int) -> int:
        space = _SPACE.match(text, at)
        assert space is not None  # a `*` pattern matches the empty string too
        return space.end()

    def past(at: int, token: str) -> int:
        at = skip_space(at)
        if text[at] != token:
            raise ValueError(f"expected {token!r} at {at}")
        return at + 1

    spans = []
    at = skip_space(past(0, "{"))
    while text[at] != "}":
        # The member's name, decoded as JSON decodes it (escapes included).
        key, at = decoder.raw_decode(text, past(at, '"') - 1)
        at = skip_space(past(at, ":"))
        value, end = decoder.raw_decode(text, at)
        if key == name:
            spans.append((at, end, value))
        at = skip_space(end)
        if text[at] == ",":
            at += 1
    return spans


def with_include_usage(body: bytes) -> bytes:
    """The body with `"stream_options":{"include_usage":true}` as its first member.

    Only for a body without `stream_options`; every other byte stays as the client sent it."""
    match = _OPENING_BRACE.match(body)
    if match is None:  # parse_chat_request has already checked it is an object
        raise ValueError("not a JSON object")
    return body[: match.end()] + INCLUDE_USAGE + body[match.end() :]


def with_usage_option(body: bytes) -> bytes | None:
    """The body whose `stream_options` also says `"include_usage":true`: the client's options
    plus that one (null becomes `{"include_usage":true}`); every byte outside that value stays
    as the client sent it. None when its `stream_options` is neither an object nor null (the
    upstream refuses it anyway) or the body cannot be edited in place."""
    try:
        # Members as JSON reads them: "stream\u005foptions" is found too.
        text = body.decode()
        spans = _member_spans(text, "stream_options")
    except (UnicodeDecodeError, ValueError, IndexError, RecursionError):
        return None
    if not spans:
        return None
    for start, end, value in reversed(spans):
        if value is not None and not isinstance(value, dict):
            return None
        options = json.dumps({**(value or {}), "include_usage": True}, separators=(",", ":"))
        text = text[:start] + options + text[end:]
    return text.encode()


def rejects_stream_options(error: GatewayError) -> bool:
    """Whether an upstream refusal is about the `stream_options` the gateway added."""
    return error.status in (400, 422) and "stream_options" in error.message + (error.param or "")


class UnusableUsageError(ValueError):
    """The upstream reported a usage the gateway cannot count."""


def _read_count(value: Any) -> int | None:
    # bool is an int to Python, not a count to anyone.
    if type(value) is int and 0 <= value <= MAX_REPORTED_TOKENS:
        return value
    return None


# Reads the usage an answer (or a stream chunk) reports: None when it reports none, and
# UnusableUsageError when it reports one of no use. One per route (routes.py).
UsageReader = Callable[[Any], Usage | None]
# The output characters an answer (or a stream chunk) delivers, for the estimate when no usage
# is reported. One per route whose answers are not chat's shape (routes.py).
OutputCounter = Callable[[Any], int]


def usage_object(document: Any) -> dict[str, Any] | None:
    """`document`'s `usage`: None when it has none (OpenAI's regular chunks say `"usage":
    null`), UnusableUsageError when it is not an object."""
    usage = document.get("usage") if isinstance(document, dict) else None
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise UnusableUsageError(f"usage is a {type(usage).__name__}, not an object")
    return usage


def token_counts(usage: dict[str, Any], given: str, made: str) -> tuple[int, int]:
    """The counts `usage` gives under the names `given` and `made` (input and output), or
    UnusableUsageError."""
    given_count, made_count = _read_count(usage.get(given)), _read_count(usage.get(made))
    if given_count is None or made_count is None:
        raise UnusableUsageError(
            f"{given} and {made} are not counts from 0 to {MAX_REPORTED_TOKENS}"
        )
    return given_count, made_count


def chat_usage(document: Any) -> Usage | None:
    """The usage of a chat (or legacy) completion, or a chunk of one."""
    usage = usage_object(document)
    if usage is None:
        return None
    prompt, completion = token_counts(usage, "prompt_tokens", "completion_tokens")
    cached = cached_tokens(usage, prompt, "prompt_tokens_details")
    return Usage(prompt, completion, cached_tokens=cached)


def embeddings_usage(document: Any) -> Usage | None:
    """An embeddings answer's usage: its input tokens (`prompt_tokens`), no output."""
    usage = document.get("usage") if isinstance(document, dict) else None
    if usage is None:
        return None
    prompt = _read_count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
    if prompt is None:
        raise UnusableUsageError(f"prompt_tokens is not a count from 0 to {MAX_REPORTED_TOKENS}")
    return Usage(prompt, 0)


def images_usage(document: Any) -> Usage | None:
    """An images answer's usage: the images in its `data`, and the tokens of a model that
    reports them (`usage.input_tokens`, `output_tokens`), else none."""
    if not isinstance(document, dict):
        return None
    data = document.get("data")
    usage = document.get("usage")
    tokens = usage if isinstance(usage, dict) else {}
    return Usage(
        _read_count(tokens.get("input_tokens")) or 0,
        _read_count(tokens.get("output_tokens")) or 0,
        images=len(data) if isinstance(data, list) else 0,
    )


def no_usage(document: Any) -> Usage | None:
    """None: an answer that reports no usage of its own (speech's is audio; its usage is its
    request's characters, see `speech_characters`)."""
    return None


def speech_characters(document: dict[str, Any]) -> Usage:
    """A speech request's usage, known before the call: the characters of its `input` (none
    when it is not a string, which the upstream refuses)."""
    text = document.get("input")
    return Usage(characters=len(text) if isinstance(text, str) else 0)


def transcription_usage(document: Any) -> Usage | None:
    """A transcription's usage where its JSON answer reports one: `{"type": "duration",
    "seconds": N}` (whisper-1) is the seconds of audio, `{"type": "tokens", "input_tokens",
    "output_tokens", ...}` (gpt-4o-transcribe) the tokens (audio and text input alike)."""
    usage = usage_object(document)
    if usage is None:
        return None
    kind = usage.get("type")
    if kind == "duration":
        seconds = usage.get("seconds")
        # bool is an int to Python; orjson gives no NaN or infinity.
        if (
            isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and 0 <= seconds <= MAX_REPORTED_SECONDS
        ):
            # As the JSON wrote it (a float's repr is its shortest spelling), not the binary
            # float's own expansion: 2.3 seconds cost 2.3 seconds' price.
            return Usage(seconds=Decimal(repr(seconds)))
        raise UnusableUsageError(f"seconds is not a number from 0 to {MAX_REPORTED_SECONDS}")
    if kind == "tokens":
        return Usage(*token_counts(usage, "input_tokens", "output_tokens"))
    raise UnusableUsageError("usage is neither of type duration nor of type tokens")


def cached_tokens(usage: dict[str, Any], prompt: int, details: str) -> int:
    """The prompt tokens the upstream read from its cache (`usage[details].cached_tokens`); 0
    (the whole prompt at the input price) when it says nothing of use: no upstream is billed
    less on a guess."""
    found = usage.get(details)
    cached = _read_count(found.get("cached_tokens")) if isinstance(found, dict) else None
    return cached if cached is not None and cached <= prompt else 0


def _is_usage_chunk(document: Any) -> bool:
    """The chunk `include_usage` adds at the end of a stream: no choices, only the usage."""
    return (
        isinstance(document, dict)
        and document.get("usage") is not None
        and document.get("choices") == []
    )


def chat_output_chars(document: Any) -> int:
    """Output characters of a chunk or answer: every string its choices deliver (text,
    refusal, tool names and arguments, `reasoning_content`/`reasoning`, ...), labels aside;
    a legacy completion's choices deliver their `text`."""
    choices = document.get("choices") if isinstance(document, dict) else None
    chars = 0
    for choice in choices if isinstance(choices, list) else ():
        delta = (choice.get("delta") or choice.get("message")) if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            chars += string_chars(delta, keys=False, skip=_NOT_OUTPUT)
        elif isinstance(choice, dict) and isinstance(text := choice.get("text"), str):
            chars += len(text)
    return chars


def _may_report_usage(data: bytes) -> bool:
    """Whether a chunk may report a usage: JSON spells the name `usage` as is or with an
    escape (`\\u0075sage`), and a chunk with neither, or with only `"usage":null` (OpenAI's
    chunks before the last, when asked for the usage), reports none."""
    if b"\\u" in data:
        return True
    named = data.count(b'"usage"')
    return named > 0 and named != data.count(b'"usage":null')


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None  # counted as nothing; the bytes still reach the client


class UsageMeter:
    """Follows one answer: its reported usage, or what is needed to estimate it."""

    def __init__(
        self,
        prompt_tokens: int,
        *,
        strip_usage_chunk: bool,
        read_usage: UsageReader = chat_usage,
        count_output: OutputCounter = chat_output_chars,
        estimates: bool = True,
        known: Usage | None = None,
    ) -> None:
        self._prompt_tokens = prompt_tokens
        # False for a route that counts no tokens: without a report, its usage is `known`
        # (what the request itself told: speech's characters), else unmeasured.
        self._estimates = estimates
        self._known = known
        self._strip = strip_usage_chunk
        self._read_usage = read_usage
        self._count_output = count_output
        self._completion_chars = 0
        # Chunks not read yet for their characters, which only count if no usage is reported
        # (the gateway always asks for it): read when the usage is wanted without one, or
        # when they grow past UNREAD_BYTES.
        self._unread: list[bytes] = []
        self._unread_bytes = 0
        self._told_unusable = False
        self.reported: Usage | None = None

    def stop_stripping(self) -> None:
        """The upstream will send no usage chunk after all."""
        self._strip = False

    def see_answer(self, answer: bytes) -> Any:
        """Notes a whole answer; returns it as JSON (None when it is none)."""
        document = _loads(answer)
        self._see(document)
        return document

    def see_chunk(self, data: bytes) -> bool:
        """Notes a stream chunk; False when the client must not see it (the usage chunk
        only the gateway asked for, even one of no use)."""
        if not _may_report_usage(data):
            if self.reported is None:  # once reported, characters no longer count
                self._unread.append(data)
                self._unread_bytes += len(data)
                if self._unread_bytes > UNREAD_BYTES:
                    self._read_unread()
            return True
        document = _loads(data)
        self._see(document)
        if self.reported is not None:
            self._unread.clear()
            self._unread_bytes = 0
        return not (self._strip and _is_usage_chunk(document))

    def _read_unread(self) -> None:
        for data in self._unread:
            self._completion_chars += self._count_output(_loads(data))
        self._unread.clear()
        self._unread_bytes = 0

    def _see(self, document: Any) -> None:
        try:
            usage = self._read_usage(document)
        except UnusableUsageError as exc:
            # Once per request: an upstream that sends it on every chunk floods no log.
            if not self._told_unusable:
                self._told_unusable = True
                logger.warning("the upstream's usage is of no use (%s); tokens are estimated", exc)
        else:
            if usage is not None:
                self.reported = usage
        self._completion_chars += self._count_output(document)

    def usage(self) -> Usage:
        if self.reported is not None:
            return self.reported
        if not self._estimates:
            return self._known if self._known is not None else Usage(measured=False)
        self._read_unread()
        return Usage(
            self._prompt_tokens,
            estimate_tokens(self._completion_chars),
            estimated=True,
        )
