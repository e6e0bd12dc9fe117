"""The OpenAI routes the gateway serves, each described once: where it goes upstream, how its
request names the model, how its answer reports usage, and how its answer comes back. The
pipeline (pipeline.py) serves them all alike; an RPC only names its route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..upstream.client import CHAT_CALL, UpstreamCall
from .request import ApiRequest, parse_chat_request
from .responses_request import parse_responses_request, responses_usage
from .usage_meter import UsageMeter, UsageReader, chat_usage


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
    # Whether tokens are counted: a route that counts none (images, audio) counts requests,
    # and nothing is estimated for it.
    counts_tokens: bool = True
    # The answer goes to the client as the upstream sends it, bytes as they come, with the
    # upstream's Content-Type (audio): neither read whole as JSON nor as SSE events.
    passthrough: bool = False

    def meter(self, request: ApiRequest, *, strip_usage_chunk: bool) -> UsageMeter:
        return UsageMeter(
            request.prompt_tokens if self.counts_tokens else 0,
            strip_usage_chunk=strip_usage_chunk,
            read_usage=self.read_usage,
            estimates=self.counts_tokens,
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
)

# Every route, in the order the README and Envoy's 404 list them.
ROUTES: tuple[OpenAIRoute, ...] = (CHAT, RESPONSES)
