"""The OpenAI routes the gateway serves, each described once: where it goes upstream, how its
request names the model, how its answer reports usage, and how its answer comes back. The
pipeline (pipeline.py) serves them all alike; an RPC only names its route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..upstream.client import CHAT_CALL, UpstreamCall
from . import multipart
from .request import ApiRequest, form_request_parser, json_request_parser, parse_chat_request
from .responses_request import parse_responses_request, responses_output_chars, responses_usage
from .usage_meter import (
    OutputCounter,
    UsageMeter,
    UsageReader,
    chat_output_chars,
    chat_usage,
    embeddings_usage,
    images_usage,
    no_usage,
    speech_characters,
    transcription_usage,
)

# Audio, or text in the format the request asks for: whatever the upstream makes of it.
ANY = "*/*"


@dataclass(frozen=True, slots=True)
class OpenAIRoute:
    # As the config file's model rules and the error messages name it: `chat`, `embeddings`.
    name: str
    # The client's path on the gateway, for messages; the upstream's is call.path.
    path: str
    call: UpstreamCall
    # Reads the request's body and Content-Type: its model, whether it streams (only on a
    # route whose answer can stream as SSE), and its prompt's estimate; or the 400.
    parse: Callable[[bytes, str], ApiRequest]
    read_usage: UsageReader = chat_usage
    # What an answer delivers, counted when its usage never comes (a stream cut short).
    count_output: OutputCounter = chat_output_chars
    # Whether tokens are counted: a route that counts none (images, audio) counts requests,
    # and nothing is estimated for it: its usage is what the answer reports, or the request
    # tells (speech's characters), else unmeasured (its cost unknown).
    counts_tokens: bool = True
    # Whether the usage chunk the gateway asked for is kept from the client: not by a route
    # that turns the chunks into something else and needs it (the Responses bridge).
    strips_usage_chunk: bool = True
    # The answer goes to the client as the upstream sends it, bytes as they come, with the
    # upstream's Content-Type (audio): neither read whole as JSON nor as SSE events (a JSON
    # one is also read for its usage once it is all through).
    passthrough: bool = False

    def meter(self, request: ApiRequest, *, strip_usage_chunk: bool) -> UsageMeter:
        return UsageMeter(
            request.prompt_tokens if self.counts_tokens else 0,
            strip_usage_chunk=strip_usage_chunk and self.strips_usage_chunk,
            read_usage=self.read_usage,
            count_output=self.count_output,
            estimates=self.counts_tokens,
            known=request.known_usage,
        )


CHAT = OpenAIRoute("chat", "/v1/chat/completions", CHAT_CALL, parse_chat_request)
# As an upstream with the Responses API gets it; for one without, responses/ bridges it to a
# chat completion under the same name (responses/bridge_route.py).
RESPONSES = OpenAIRoute(
    "responses",
    "/v1/responses",
    UpstreamCall("/responses"),
    parse_responses_request,
    read_usage=responses_usage,
    count_output=responses_output_chars,
)

# Usage: the input tokens (`prompt_tokens`).
EMBEDDINGS = OpenAIRoute(
    "embeddings",
    "/v1/embeddings",
    UpstreamCall("/embeddings"),
    json_request_parser("an embeddings request", streams=False),
    read_usage=embeddings_usage,
)
# Legacy completions: usage as chat's, streamed or not (stream_options as chat's).
COMPLETIONS = OpenAIRoute(
    "completions",
    "/v1/completions",
    UpstreamCall("/completions"),
    json_request_parser("a completion request", streams=True),
)
# Counted as requests, and as images (priced per image where the price table says so); the
# tokens of a model that reports them.
IMAGES = OpenAIRoute(
    "images",
    "/v1/images/generations",
    UpstreamCall("/images/generations"),
    json_request_parser("an image generation request", streams=False),
    read_usage=images_usage,
    counts_tokens=False,
)
# Counted as requests, and as the characters of the request's `input` (priced per character
# where the price table says so): the audio goes to the client as it comes.
SPEECH = OpenAIRoute(
    "speech",
    "/v1/audio/speech",
    UpstreamCall("/audio/speech", accept=ANY, stream_accept=ANY),
    json_request_parser("a speech request", streams=False, measure=speech_characters),
    read_usage=no_usage,
    counts_tokens=False,
    passthrough=True,
)
# Counted as requests: the upload goes upstream byte for byte, the model a form field of it;
# the answer in whatever format it asked for (json, text, srt, vtt, or events). A JSON answer's
# usage counts: seconds of audio (priced per minute) or tokens; any other is unmeasured.
TRANSCRIPTIONS = OpenAIRoute(
    "transcriptions",
    "/v1/audio/transcriptions",
    UpstreamCall(
        "/audio/transcriptions", accept=ANY, stream_accept=ANY, rename=multipart.replace_model
    ),
    form_request_parser("a transcription request"),
    read_usage=transcription_usage,
    counts_tokens=False,
    passthrough=True,
)

# Every route, in the order the README and Envoy's 404 list them.
ROUTES: tuple[OpenAIRoute, ...] = (
    CHAT,
    RESPONSES,
    COMPLETIONS,
    EMBEDDINGS,
    IMAGES,
    SPEECH,
    TRANSCRIPTIONS,
)
